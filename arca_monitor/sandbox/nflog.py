"""NFLOG: how the sandbox's refused UDP datagrams become records the monitor can audit.

The ruleset logs every refused datagram (not DNS, not to the sandbox's own
loopback) to netfilter log group :data:`GROUP` of the sandbox's network
namespace, before its NAT rule refuses it. The init opens and binds the
netlink socket there (:func:`bind`) and hands it to the monitor, which reads
it from outside (a netlink socket stays in the namespace it was made in) and
decodes each batch with :func:`parse`.

The netlink layout (linux/netfilter/nfnetlink_log.h): a ``nlmsghdr``, a
``nfgenmsg`` (family, version, group), then attributes; NFULA_PAYLOAD holds the
datagram's first :data:`COPY_RANGE` bytes from its IP header on, NFULA_UID the
sending socket's owner.

Error handling: :func:`bind` raises OSError (with the kernel's errno from its
acknowledgements). :func:`parse` never raises: what it cannot read is counted
in :attr:`Batch.unreadable`. Resource handling: :func:`bind` closes its socket
if configuring it fails; otherwise the caller owns it.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

from arca_control.protocol.wire import Endpoint, ipv6_host

NETLINK_NETFILTER = 12
#: The log group of refused UDP in the sandbox's namespace (``log group`` in ruleset.nft).
GROUP = 1
#: Bytes of each datagram copied into its record: the largest IPv4 header (60) and the UDP header, and more.
COPY_RANGE = 128

_NLMSG = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_NFGEN = struct.Struct("=BBH")  # family, version, group (big-endian, read separately)
_ATTR = struct.Struct("=HH")  # length, type
_NLMSG_ERROR = 2
_NLM_F_REQUEST, _NLM_F_ACK = 1, 4
_SUBSYS_ULOG = 4
_MSG_PACKET, _MSG_CONFIG = (_SUBSYS_ULOG << 8) | 0, (_SUBSYS_ULOG << 8) | 1
_CFG_CMD, _CFG_MODE, _CFG_QTHRESH = 1, 2, 5
_CFG_CMD_BIND = 1
_COPY_PACKET = 2
_ATTR_PAYLOAD, _ATTR_UID = 9, 11
_ATTR_TYPE_MASK = 0x3FFF  # the top bits flag nesting and byte order
_UDP = 17


@dataclass(frozen=True)
class UdpRefusal:
    """One refused datagram: who sent it (in the sandbox), where to, and how much."""

    source: Endpoint
    destination: Endpoint
    #: The sending socket's owner as the sandbox sees it (0: root there), or None if the kernel did not say.
    uid: int | None
    #: The UDP payload's length.
    length: int


@dataclass(frozen=True)
class Batch:
    refusals: tuple[UdpRefusal, ...]
    #: Messages that were not a readable UDP record, or records the kernel dropped (ENOBUFS): at least this many.
    unreadable: int = 0


def _attribute(kind: int, payload: bytes) -> bytes:
    size = _ATTR.size + len(payload)
    return _ATTR.pack(size, kind) + payload + bytes(-size % 4)


def _configure(sock: socket.socket, sequence: int, group: int, attribute: bytes) -> None:
    body = _NFGEN.pack(socket.AF_UNSPEC, 0, socket.htons(group)) + attribute
    sock.send(_NLMSG.pack(_NLMSG.size + len(body), _MSG_CONFIG, _NLM_F_REQUEST | _NLM_F_ACK, sequence, 0) + body)
    reply = sock.recv(4096)
    if len(reply) < _NLMSG.size + 4:
        raise OSError(errno.EPROTO, "NFLOG: a short acknowledgement")
    _, kind, _, _, _ = _NLMSG.unpack_from(reply)
    code = -struct.unpack_from("=i", reply, _NLMSG.size)[0]
    if kind != _NLMSG_ERROR:
        raise OSError(errno.EPROTO, f"NFLOG: message type {kind} where an acknowledgement was due")
    if code:
        raise OSError(code, f"NFLOG configuration refused: {errno.errorcode.get(code, code)}")


def bind(group: int = GROUP) -> socket.socket:
    """A netlink socket receiving log group ``group`` of this namespace: one message per packet, at once."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    try:
        sock.bind((0, 0))
        _configure(sock, 1, group, _attribute(_CFG_CMD, struct.pack("B", _CFG_CMD_BIND)))
        _configure(sock, 2, group, _attribute(_CFG_MODE, struct.pack(">IBB", COPY_RANGE, _COPY_PACKET, 0)))
        # The kernel batches 100 packets or one second by default: a record should not wait.
        _configure(sock, 3, group, _attribute(_CFG_QTHRESH, struct.pack(">I", 1)))
    except OSError:
        sock.close()
        raise
    return sock


def parse(data: bytes) -> Batch:
    """The records in one netlink read (the kernel may put several messages in it)."""
    refusals: list[UdpRefusal] = []
    unreadable = 0
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _, _, _ = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size or offset + length > len(data):
            return Batch(tuple(refusals), unreadable + 1)
        if kind == _MSG_PACKET:
            record = _record(data[offset + _NLMSG.size : offset + length])
            if record is None:
                unreadable += 1
            else:
                refusals.append(record)
        offset += (length + 3) & ~3
    return Batch(tuple(refusals), unreadable)


def _record(message: bytes) -> UdpRefusal | None:
    if len(message) < _NFGEN.size:
        return None
    family = message[0]
    attributes: dict[int, bytes] = {}
    offset = _NFGEN.size
    while offset + _ATTR.size <= len(message):
        size, kind = _ATTR.unpack_from(message, offset)
        if size < _ATTR.size or offset + size > len(message):
            return None
        attributes[kind & _ATTR_TYPE_MASK] = message[offset + _ATTR.size : offset + size]
        offset += (size + 3) & ~3
    uid_bytes = attributes.get(_ATTR_UID, b"")
    uid = struct.unpack(">I", uid_bytes)[0] if len(uid_bytes) == 4 else None
    return _udp(family, attributes.get(_ATTR_PAYLOAD, b""), uid)


def _udp(family: int, packet: bytes, uid: int | None) -> UdpRefusal | None:
    """The record of one IP packet, if it is UDP (an IPv6 one without extension headers)."""
    if family == socket.AF_INET and len(packet) >= 20 and packet[0] >> 4 == 4:
        header = (packet[0] & 0xF) * 4
        if packet[9] != _UDP or header < 20 or len(packet) < header + 8:
            return None
        source = socket.inet_ntop(socket.AF_INET, packet[12:16])
        destination = socket.inet_ntop(socket.AF_INET, packet[16:20])
    elif family == socket.AF_INET6 and len(packet) >= 48 and packet[0] >> 4 == 6:
        header = 40
        if packet[6] != _UDP:
            return None
        source, destination = ipv6_host(packet[8:24], 0), ipv6_host(packet[24:40], 0)
    else:
        return None
    sport, dport, length = struct.unpack_from(">HHH", packet, header)
    return UdpRefusal(Endpoint(source, sport), Endpoint(destination, dport), uid, max(length - 8, 0))

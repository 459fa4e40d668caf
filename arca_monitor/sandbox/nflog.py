"""NFLOG, the netlink side: a socket that receives a netfilter log group, and the packets it reads.

The ruleset logs every refused UDP datagram (not DNS, not to the sandbox's
own loopback) to log group :data:`GROUP` of the sandbox's network namespace,
before its NAT rule refuses it. The init opens and binds the netlink socket
there (:func:`bind`) and hands it to the monitor, which reads it from outside
(a netlink socket stays in the namespace it was made in); :func:`packets`
splits what it reads into logged packets, and :mod:`.refusals` reads those.

The layout (linux/netfilter/nfnetlink_log.h): a ``nlmsghdr``, a ``nfgenmsg``
(family, version, group), then attributes; NFULA_PAYLOAD holds the packet's
first :data:`COPY_RANGE` bytes from its IP header on, NFULA_UID the sending
socket's owner. Only the standard library: the init imports this.

Error handling: :func:`bind` raises OSError (with the kernel's errno from its
acknowledgements). :func:`packets` never raises: it counts what it cannot
read. Resource handling: :func:`bind` closes its socket if configuring it
fails; otherwise the caller owns it.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

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


@dataclass(frozen=True)
class LoggedPacket:
    family: int
    #: The packet from its IP header on, at most COPY_RANGE bytes of it.
    payload: bytes
    #: The sending socket's owner as the logging namespace sees it, or None if the kernel did not say.
    uid: int | None


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


def packets(data: bytes) -> tuple[list[LoggedPacket], int]:
    """The packets in one netlink read (the kernel may put several messages in it), and how many were unreadable."""
    found: list[LoggedPacket] = []
    unreadable = 0
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _, _, _ = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size or offset + length > len(data):
            return found, unreadable + 1
        if kind == _MSG_PACKET:
            packet = _packet(data[offset + _NLMSG.size : offset + length])
            if packet is None:
                unreadable += 1
            else:
                found.append(packet)
        offset += (length + 3) & ~3
    return found, unreadable


def _packet(message: bytes) -> LoggedPacket | None:
    if len(message) < _NFGEN.size:
        return None
    attributes: dict[int, bytes] = {}
    offset = _NFGEN.size
    while offset + _ATTR.size <= len(message):
        size, kind = _ATTR.unpack_from(message, offset)
        if size < _ATTR.size or offset + size > len(message):
            return None
        attributes[kind & _ATTR_TYPE_MASK] = message[offset + _ATTR.size : offset + size]
        offset += (size + 3) & ~3
    uid = attributes.get(_ATTR_UID, b"")
    return LoggedPacket(message[0], attributes.get(_ATTR_PAYLOAD, b""), struct.unpack(">I", uid)[0] if len(uid) == 4 else None)

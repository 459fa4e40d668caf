"""The one layout of a UDP datagram record, shared by the guest's socket and the monitor's relay.

A UDP socket of the guest lives in the monitor; the guest reaches it through
its data channel, one end of an ``AF_UNIX`` ``SOCK_SEQPACKET`` socketpair (the
monitor passes it with UdpBindOk and holds the other end). One SEQPACKET
message is one datagram record:

    endpoint (the protocol's endpoint layout)   payload (0 to 65,527 bytes)
    family u8, address, port u16 LE              the UDP payload, as is

The endpoint is 7 bytes for IPv4 (family 1, 4 address bytes, port) and 23
for IPv6 (family 2, 16 address bytes, scope id u32, port). From the guest to
the monitor it is the destination; from the monitor to the guest, the source.
SEQPACKET keeps message boundaries, so a datagram is never split or merged
with another. A record always holds at least an endpoint, so it is never
empty: a read of 0 bytes means the other end closed its channel.

Limits: a payload is at most 65,507 bytes to an IPv4 destination and 65,527
to an IPv6 one (65,535 less the headers), so a record is at most 23 + 65,527
bytes. Linux refuses a SEQPACKET message longer than the sender's SO_SNDBUF
(as doubled by the kernel) less 32 bytes, so both ends are sized to
CHANNEL_BUFFER (``size_channel``).
"""

from __future__ import annotations

import socket

from .errors import InvalidField, LocalProtocolError
from .values import V4_MAPPED
from .wire import ENDPOINT, AddressFamily, Endpoint

#: The largest UDP payloads: 65,535 less the IPv4 and UDP headers; less the
#: UDP header only for IPv6, whose header is not counted in its payload length.
MAX_PAYLOAD_IPV4 = 65_507
MAX_PAYLOAD_IPV6 = 65_527
#: The longest endpoint in front of a payload (IPv6).
MAX_ENDPOINT = 23
#: A buffer that holds any record, with room to spare for anything the kernel might hand over.
MAX_RECORD = MAX_ENDPOINT + 65_535
#: SO_SNDBUF and SO_RCVBUF asked for on both ends of a channel. Linux doubles
#: it (to 512 KiB, or twice net.core.wmem_max if that is lower): room for
#: several of the largest records, and a bound on what waits in the channel.
CHANNEL_BUFFER = 4 * 65_536
#: What SO_SNDBUF must report (the doubled value) for the largest record to go through.
SNDBUF_NEEDED = MAX_RECORD + 32

# Bound once: every datagram record is read or written through these.
_read_endpoint = ENDPOINT.read
_write_endpoint = ENDPOINT.write
_IP_FAMILIES = frozenset({AddressFamily.IPV4, AddressFamily.IPV6})


def decode_record(record: bytes | bytearray | memoryview) -> tuple[Endpoint, int]:
    """The endpoint at the front of ``record`` and where its payload starts.

    ValueError if malformed, or if the endpoint is of a family other than
    IPv4 and IPv6 (the endpoint layout has others; UDP has no use for them).
    """
    if not record:
        raise ValueError("an empty record")
    if record[0] not in _IP_FAMILIES:
        raise ValueError(f"family {record[0]}: a datagram record's endpoint is IPv4 or IPv6")
    try:
        # Only the endpoint is copied, never the payload: the readers take bytes.
        return _read_endpoint(bytes(record[:MAX_ENDPOINT]), 0)
    except InvalidField as exc:
        raise ValueError(f"not a datagram record: {exc}") from None


def encode_endpoint(endpoint: Endpoint | tuple[str, int]) -> bytes:
    """The endpoint bytes that go in front of a payload; ValueError if not an IP literal and a port."""
    try:
        return _write_endpoint(endpoint)
    except LocalProtocolError as exc:
        raise ValueError(str(exc)) from None


def size_channel(sock: socket.socket, size: int = CHANNEL_BUFFER) -> None:
    """Give one end of a channel the buffers the largest record needs."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    # SEQPACKET charges queued messages to the sender's SO_SNDBUF; RCVBUF is set for symmetry only.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def max_payload(endpoint: Endpoint) -> int:
    """The largest payload the kernel sends to ``endpoint`` (an IPv4-mapped one travels as IPv4)."""
    if endpoint.family == AddressFamily.IPV4 or endpoint.packed.startswith(V4_MAPPED):
        return MAX_PAYLOAD_IPV4
    return MAX_PAYLOAD_IPV6

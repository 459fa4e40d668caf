"""Refused UDP, as the monitor records it: who in the sandbox sent a datagram, where to, how much.

Each record comes from one packet the sandbox's ruleset logged (:mod:`.nflog`):
its IPv4 or IPv6 header and UDP header give the addresses and the length.

Error handling: :func:`parse` never raises; what is not a readable UDP
packet (an IPv6 one with extension headers, say) is counted in
:attr:`Batch.unreadable`.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from arca_control.protocol.wire import Endpoint, ipv6_host

from .nflog import LoggedPacket, packets

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


def parse(data: bytes) -> Batch:
    """The records in one read of the NFLOG socket."""
    logged, unreadable = packets(data)
    refusals = []
    for packet in logged:
        refusal = _udp(packet)
        if refusal is None:
            unreadable += 1
        else:
            refusals.append(refusal)
    return Batch(tuple(refusals), unreadable)


def _udp(packet: LoggedPacket) -> UdpRefusal | None:
    """The record of one IP packet, if it is UDP (an IPv6 one without extension headers)."""
    data = packet.payload
    if packet.family == socket.AF_INET and len(data) >= 20 and data[0] >> 4 == 4:
        header = (data[0] & 0xF) * 4
        if data[9] != _UDP or header < 20 or len(data) < header + 8:
            return None
        source = socket.inet_ntop(socket.AF_INET, data[12:16])
        destination = socket.inet_ntop(socket.AF_INET, data[16:20])
    elif packet.family == socket.AF_INET6 and len(data) >= 48 and data[0] >> 4 == 6:
        header = 40
        if data[6] != _UDP:
            return None
        source, destination = ipv6_host(data[8:24], 0), ipv6_host(data[24:40], 0)
    else:
        return None
    sport, dport, length = struct.unpack_from(">HHH", data, header)
    return UdpRefusal(Endpoint(source, sport), Endpoint(destination, dport), packet.uid, max(length - 8, 0))

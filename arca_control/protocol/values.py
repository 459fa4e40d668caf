"""The Python values the wire carries: ``Endpoint`` (from ``endpoint.py``), the enums and flags.

Nothing here knows about bytes. ``layouts.py`` (construct) and ``fastfields.py``
(struct) lay these values out, and ``wire.py`` declares each field type from
the two; this module sits below all three so that each of them can name them.
"""

from __future__ import annotations

import enum
import socket

from .endpoint import (
    UNIX_PATH_MAX,
    V4_MAPPED,
    AddressFamily,
    Endpoint,
    IPSockAddr,
    ScopeError,
    SockAddr,
    ipv6_host,
    is_unix_path,
    parse_host,
    scope_index,
    valid_unix_path,
)


class ListenFlags(enum.IntFlag, boundary=enum.STRICT):
    """Options of a Listen. Unknown bits are an error."""

    #: IPV6_V6ONLY: an IPv6 listener that does not also take IPv4 connections.
    V6ONLY = 1
    #: SO_REUSEPORT: share the port with other listeners that ask for it too.
    REUSEPORT = 2
    #: SO_REUSEADDR for a UDP socket (TCP listeners always have it).
    REUSEADDR = 4


class FamilyFilter(enum.IntEnum):
    """Which addresses a Resolve asks for (getaddrinfo's family)."""

    ANY = 0
    IPV4 = 1
    IPV6 = 2

    @classmethod
    def of_socket_family(cls, family: int) -> FamilyFilter:
        """The filter for getaddrinfo's ``family`` (0, AF_INET or AF_INET6); ValueError for another."""
        for member, number in _FILTER_FAMILIES.items():
            if number == family:
                return member
        raise ValueError(f"address family {family} not supported")

    @property
    def socket_family(self) -> int:
        """getaddrinfo's ``family`` for it: 0 (AF_UNSPEC), AF_INET or AF_INET6."""
        return _FILTER_FAMILIES[self]


class SockType(enum.IntEnum):
    """Which socket type a Resolve entry is for (getaddrinfo's type; ANY only in a request)."""

    ANY = 0
    STREAM = 1
    DGRAM = 2

    @classmethod
    def of_socket_type(cls, kind: int) -> SockType:
        """The SockType of getaddrinfo's ``type`` (0, SOCK_STREAM or SOCK_DGRAM); ValueError for another."""
        for member, number in _SOCKET_TYPES.items():
            if number == kind:
                return member
        raise ValueError(f"socket type {kind} not supported")

    @property
    def socket_type(self) -> int:
        """getaddrinfo's ``type`` for it: 0, SOCK_STREAM or SOCK_DGRAM."""
        return _SOCKET_TYPES[self]


#: The one mapping of each to the socket module's numbers (the guest's requests, the monitor's resolver).
_FILTER_FAMILIES: dict[FamilyFilter, int] = {
    FamilyFilter.ANY: 0, FamilyFilter.IPV4: socket.AF_INET, FamilyFilter.IPV6: socket.AF_INET6
}
_SOCKET_TYPES: dict[SockType, int] = {SockType.ANY: 0, SockType.STREAM: socket.SOCK_STREAM, SockType.DGRAM: socket.SOCK_DGRAM}


class GaiError(enum.IntEnum):
    """getaddrinfo's EAI codes, negated (Linux's EAI_* values are negative)."""

    BADFLAGS = 1
    NONAME = 2
    AGAIN = 3
    FAIL = 4
    NODATA = 5
    FAMILY = 6
    SOCKTYPE = 7
    SERVICE = 8
    ADDRFAMILY = 9
    MEMORY = 10
    SYSTEM = 11
    OVERFLOW = 12


class OptionTarget(enum.IntEnum):
    """What a SetOption or GetOption names by id."""

    CONNECTION = 1
    LISTENER = 2
    DATAGRAM = 3


class Capability(enum.IntFlag, boundary=enum.KEEP):
    """Feature bits exchanged in Hello. Unknown bits are kept, and ignored."""

    TCP = 1
    UDP = 2
    #: Asked for in Hello: the session's connections come as one AF_UNIX stream
    #: socket each (a real ``socket.socket`` for the guest) instead of an rx pipe and a tx socket.
    SOCKET_CHANNEL = 4


#: What this version implements; HelloOk answers with the intersection.
SUPPORTED_CAPABILITIES = Capability.TCP | Capability.UDP | Capability.SOCKET_CHANNEL

#: What a guest asks for unless told otherwise: pipes, the fastest channel.
DEFAULT_CAPABILITIES = Capability.TCP | Capability.UDP


__all__ = [
    "DEFAULT_CAPABILITIES",
    "SUPPORTED_CAPABILITIES",
    "UNIX_PATH_MAX",
    "V4_MAPPED",
    "AddressFamily",
    "Capability",
    "Endpoint",
    "FamilyFilter",
    "GaiError",
    "IPSockAddr",
    "ListenFlags",
    "OptionTarget",
    "ScopeError",
    "SockAddr",
    "SockType",
    "ipv6_host",
    "is_unix_path",
    "parse_host",
    "scope_index",
    "valid_unix_path",
]

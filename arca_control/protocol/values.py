"""The Python values the wire carries: ``Endpoint``, the enums and flags, and the address checks.

Nothing here knows about bytes. ``layouts.py`` (construct) and ``fastfields.py``
(struct) lay these values out, and ``wire.py`` declares each field type from
the two; this module sits below all three so that each of them can name them.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import os
import socket
from typing import NamedTuple, TypeGuard

#: The longest AF_UNIX path: sun_path is 108 bytes, with a NUL at the end.
UNIX_PATH_MAX = 107

#: An address as Python's socket functions take and return it: an AF_UNIX path,
#: an IPv4 ``(host, port)``, an IPv6 ``(host, port, flowinfo, scope_id)``.
SockAddr = str | tuple[str, int] | tuple[str, int, int, int]


class Endpoint(NamedTuple):
    """An address and port. For IPv4 it equals Python's ``(host, port)`` tuple.

    An IPv6 host is in its compressed form, with ``%N`` for a nonzero scope id
    (``fe80::1%2``); :meth:`sockaddr` gives the 4-tuple Python's sockets use.
    An AF_UNIX endpoint is its absolute path with port 0 (``""`` for an unnamed
    socket, as a connecting client's own address is).
    """

    host: str
    port: int

    @property
    def is_unix(self) -> bool:
        return is_unix_path(self.host)

    def sockaddr(self) -> SockAddr:
        """The address as Python's socket functions take and return it."""
        if self.is_unix:
            return self.host
        address = ipaddress.ip_address(self.host)
        if isinstance(address, ipaddress.IPv4Address):
            return (self.host, self.port)
        return (str(address).split("%")[0], self.port, 0, int(address.scope_id or 0))

    @classmethod
    def from_sockaddr(cls, sockaddr: SockAddr | bytes) -> Endpoint:
        """The Endpoint of an address Python's sockets returned (IPv4, IPv6 or AF_UNIX)."""
        if isinstance(sockaddr, (str, bytes)):
            return cls(os.fsdecode(sockaddr), 0)
        host, port = sockaddr[0], sockaddr[1]
        if len(sockaddr) == 4 and sockaddr[3]:
            host = f"{host.split('%')[0]}%{sockaddr[3]}"
        return cls(host, port)


class AddressFamily(enum.IntEnum):
    """The tag in front of every endpoint. 3 is reserved; 5 and up are unknown."""

    IPV4 = 1
    IPV6 = 2
    # 3 is reserved for a later version, so the layout has room for it: a host name.
    UNIX = 4


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


class SockType(enum.IntEnum):
    """Which socket type a Resolve entry is for (getaddrinfo's type; ANY only in a request)."""

    ANY = 0
    STREAM = 1
    DGRAM = 2


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


def ipv6_host(packed: bytes, scope_id: int) -> str:
    """The Endpoint host for 16 address bytes and a scope id, written as the kernel writes it."""
    host = socket.inet_ntop(socket.AF_INET6, packed)
    return f"{host}%{scope_id}" if scope_id else host


def is_unix_path(host: object) -> TypeGuard[str]:
    """An AF_UNIX endpoint's host: an absolute path, or "" for an unnamed socket."""
    return isinstance(host, str) and (host == "" or host.startswith("/"))


def valid_unix_path(host: str) -> bool:
    """A path the kernel can take as sun_path: absolute (or ""), no NUL, at most 107 bytes."""
    return is_unix_path(host) and "\0" not in host and len(host.encode()) <= UNIX_PATH_MAX


@functools.lru_cache(maxsize=4096)
def parse_ip(host: str) -> tuple[AddressFamily, bytes, int]:
    """``(family, packed address, scope id)`` of an IP literal; ValueError for anything else.

    Strict: no names, no "127.1" shorthand, no leading zeros; a scope id must be a number.
    Cached: every connection's reply encodes two endpoints, mostly the same few
    addresses, and ``ipaddress`` parsing was most of the cost of building it.
    """
    address = ipaddress.ip_address(host)
    if isinstance(address, ipaddress.IPv4Address):
        return AddressFamily.IPV4, address.packed, 0
    scope = address.scope_id
    if scope is not None and not (scope.isdigit() and int(scope) <= 0xFFFFFFFF):
        raise ValueError(f"scope id {scope!r} is not a number (use socket.if_nametoindex)")
    return AddressFamily.IPV6, address.packed, int(scope or 0)

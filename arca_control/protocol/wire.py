"""The wire schema: the frame header and every field type, declared with construct.

This module only says how values are laid out in bytes. Which fields make up
which message lives beside each message class (``messages.py``), and
``codec.py`` assembles them into the one frame schema: this header, then a
Switch on the type byte to one payload Struct per message.

Everything is little-endian. Each field type is a construct Adapter that turns
bytes straight into the Python value the dataclasses hold (an ``Endpoint``, an
``IntEnum`` member), and rejects out-of-range values while parsing, so a
decoded message is always a valid one.
"""

from __future__ import annotations

import enum
import errno
import functools
import ipaddress
import os
import socket
from typing import NamedTuple

from construct import (
    Adapter,
    Bytes,
    Const,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    PascalString,
    PrefixedArray,
    Struct,
    Switch,
    ValidationError,
    this,
)
from construct import Error as ErrorField

PROTOCOL_VERSION = 1
HEADER_SIZE = 7
#: The largest payload the u16 length field can express.
LENGTH_FIELD_MAX = 0xFFFF
#: The default limit on a payload; no message of this version comes near it.
DEFAULT_MAX_PAYLOAD = 4096
#: Request id 0 is never allocated: frames carrying it are unsolicited events.
EVENT_REQUEST_ID = 0

HEADER = Struct(
    "type" / Int8ul,
    "length" / Int16ul,
    "request_id" / Int32ul,
)


#: The longest AF_UNIX path: sun_path is 108 bytes, with a NUL at the end.
UNIX_PATH_MAX = 107


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

    def sockaddr(self) -> tuple | str:
        """The address as Python's socket functions take and return it."""
        if self.is_unix:
            return self.host
        address = ipaddress.ip_address(self.host)
        if address.version == 4:
            return (self.host, self.port)
        return (str(address).split("%")[0], self.port, 0, int(address.scope_id or 0))

    @classmethod
    def from_sockaddr(cls, sockaddr: tuple) -> "Endpoint":
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


class _EnumAdapter(Adapter):
    """An integer field that must be a member of ``enum_type``."""

    def __init__(self, subcon, enum_type: type[enum.IntEnum]) -> None:
        super().__init__(subcon)
        self.enum_type = enum_type

    def _decode(self, obj, context, path):
        try:
            return self.enum_type(obj)
        except ValueError:
            raise ValidationError(f"{obj} is not a valid {self.enum_type.__name__}", path=path)

    def _encode(self, obj, context, path):
        return int(self.enum_type(obj))


class _FlagAdapter(Adapter):
    def _decode(self, obj, context, path):
        return Capability(obj)

    def _encode(self, obj, context, path):
        return int(obj)


class _ErrnoAdapter(Adapter):
    """A nonzero errno this platform knows (the monitor and guest share a kernel)."""

    def _decode(self, obj, context, path):
        if obj not in errno.errorcode:
            raise ValidationError(f"unknown errno {obj}", path=path)
        return obj

    def _encode(self, obj, context, path):
        if obj not in errno.errorcode:
            raise ValidationError(f"unknown errno {obj}", path=path)
        return obj


class _StatusAdapter(_ErrnoAdapter):
    """Like an errno, but 0 is allowed and means "ended cleanly"."""

    def _decode(self, obj, context, path):
        return 0 if obj == 0 else super()._decode(obj, context, path)

    def _encode(self, obj, context, path):
        return 0 if obj == 0 else super()._encode(obj, context, path)


def ipv6_host(packed: bytes, scope_id: int) -> str:
    """The Endpoint host for 16 address bytes and a scope id, written as the kernel writes it."""
    host = socket.inet_ntop(socket.AF_INET6, packed)
    return f"{host}%{scope_id}" if scope_id else host


def is_unix_path(host: object) -> bool:
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
    if address.version == 4:
        return AddressFamily.IPV4, address.packed, 0
    scope = address.scope_id
    if scope is not None and not (scope.isdigit() and int(scope) <= 0xFFFFFFFF):
        raise ValueError(f"scope id {scope!r} is not a number (use socket.if_nametoindex)")
    return AddressFamily.IPV6, address.packed, int(scope or 0)


class _EndpointAdapter(Adapter):
    def _decode(self, obj, context, path):
        if obj.family == AddressFamily.IPV4:
            return Endpoint(str(ipaddress.IPv4Address(obj.address)), obj.port)
        if obj.family == AddressFamily.UNIX:
            if not valid_unix_path(obj.address) or obj.port:
                raise ValidationError(f"not an AF_UNIX endpoint: {obj.address!r} port {obj.port}", path=path)
            return Endpoint(obj.address, 0)
        return Endpoint(ipv6_host(obj.address.packed, obj.address.scope_id), obj.port)

    def _encode(self, obj, context, path):
        host, port = obj
        if is_unix_path(host):
            if not valid_unix_path(host) or port != 0:
                raise ValidationError(f"not an AF_UNIX endpoint: {host!r} port {port}", path=path)
            return {"family": AddressFamily.UNIX, "address": host, "port": 0}
        try:
            family, packed, scope_id = parse_ip(host)
        except (ValueError, TypeError):
            raise ValidationError(f"not an IP address literal: {host!r}", path=path)
        address = packed if family == AddressFamily.IPV4 else {"packed": packed, "scope_id": scope_id}
        return {"family": family, "address": address, "port": port}


#: family u8; the address (4 bytes for IPv4; 16 bytes and a u32 scope id for IPv6;
#: a u8-length UTF-8 path for AF_UNIX); port u16 (0 for AF_UNIX).
ENDPOINT = _EndpointAdapter(
    Struct(
        "family" / _EnumAdapter(Int8ul, AddressFamily),
        "address" / Switch(
            this.family,
            {
                AddressFamily.IPV4: Bytes(4),
                AddressFamily.IPV6: Struct("packed" / Bytes(16), "scope_id" / Int32ul),
                AddressFamily.UNIX: PascalString(Int8ul, "utf8"),
            },
            default=ErrorField,
        ),
        "port" / Int16ul,
    )
)
U16 = Int16ul
U32 = Int32ul
VERSION = Const(PROTOCOL_VERSION, Int16ul)
CAPABILITIES = _FlagAdapter(Int32ul)
LISTEN_FLAGS = _EnumAdapter(Int8ul, ListenFlags)
OPTION_TARGET = _EnumAdapter(Int8ul, OptionTarget)

FAMILY_FILTER = _EnumAdapter(Int8ul, FamilyFilter)
SOCK_TYPE = _EnumAdapter(Int8ul, SockType)
GAI_ERROR = _EnumAdapter(Int8ul, GaiError)

#: The one-byte enum and flag fields, by field type: their values are exactly the enum's.
U8_ENUMS: dict[int, type[enum.IntEnum] | type[enum.IntFlag]] = {
    id(LISTEN_FLAGS): ListenFlags,
    id(OPTION_TARGET): OptionTarget,
    id(FAMILY_FILTER): FamilyFilter,
    id(SOCK_TYPE): SockType,
    id(GAI_ERROR): GaiError,
}


class _AddressListAdapter(Adapter):
    def _decode(self, obj, context, path):
        return tuple((entry.socktype, entry.endpoint) for entry in obj)

    def _encode(self, obj, context, path):
        return [{"socktype": socktype, "endpoint": endpoint} for socktype, endpoint in obj]


class _CountsAdapter(Adapter):
    def _decode(self, obj, context, path):
        return tuple((entry.key, entry.count) for entry in obj)

    def _encode(self, obj, context, path):
        return [{"key": key, "count": count} for key, count in obj]


#: Counters by key (a message type, an errno): a u8 count, then (key u16, count u32) pairs.
COUNTS = _CountsAdapter(PrefixedArray(Int8ul, Struct("key" / Int16ul, "count" / Int32ul)))
U64 = Int64ul

#: A Resolve answer: a u8 count, then (socket type u8, endpoint) per address, at most 255.
ADDRESS_LIST = _AddressListAdapter(
    PrefixedArray(Int8ul, Struct("socktype" / SOCK_TYPE, "endpoint" / ENDPOINT))
)
ERRNO = _ErrnoAdapter(Int16ul)
END_STATUS = _StatusAdapter(Int16ul)
#: UTF-8 text of at most 255 bytes, with a u8 length in front.
TEXT = PascalString(Int8ul, "utf8")

"""``Endpoint``: an address and port, parsed once into the form the wire and the kernel use.

An endpoint is its family, its address in packed form (4 or 16 bytes, or an
AF_UNIX path's UTF-8 bytes), its IPv6 scope id and its port. It is parsed once,
strictly, where it enters (text from a caller, a sockaddr from the kernel,
bytes from the wire), and every hop after that passes the value: the codec
writes the packed form as it is, the monitor hands ``sockaddr()`` to its
sockets, the policy compares the packed address, and nobody parses the text
again.

It is also the ``(host, port)`` tuple Python's socket functions take and
return, with ``host`` the canonical text (``inet_ntop``'s, with ``%N`` for a
nonzero scope id): an Endpoint equals, unpacks and passes as that tuple, so
``Endpoint("127.0.0.1", 80) == ("127.0.0.1", 80)`` and
``sock.connect(endpoint)`` works. The tuple holds only the text and the port
(a C function such as ``socket.connect`` reads the items); the parsed form is
kept beside it and cannot be changed.

This module knows nothing of the wire's bytes beyond the family numbers;
``values.py`` re-exports everything here.
"""

from __future__ import annotations

import enum
import os
import socket
from typing import TYPE_CHECKING, NoReturn, Self, TypeGuard

if TYPE_CHECKING:
    from collections.abc import Callable

#: The longest AF_UNIX path: sun_path is 108 bytes, with a NUL at the end.
UNIX_PATH_MAX = 107
#: The 12 bytes in front of an IPv4 address in its IPv4-mapped IPv6 form (::ffff:a.b.c.d).
V4_MAPPED = b"\0" * 10 + b"\xff\xff"
_SCOPE_MAX = 0xFFFFFFFF
# Bound once: every endpoint the codec reads or a socket reports is built through these.
_new_tuple = tuple.__new__
_ntoa = socket.inet_ntoa
_ntop = socket.inet_ntop
_pton = socket.inet_pton
_AF_INET = socket.AF_INET
_AF_INET6 = socket.AF_INET6

#: An IP address as Python's socket functions take and return it: IPv4 ``(host, port)``,
#: IPv6 ``(host, port, flowinfo, scope_id)``.
IPSockAddr = tuple[str, int] | tuple[str, int, int, int]
#: Any address as Python's socket functions take and return it: an AF_UNIX path, or an IP address.
SockAddr = str | IPSockAddr


class AddressFamily(enum.IntEnum):
    """The tag in front of every endpoint. 3 is reserved; 5 and up are unknown."""

    IPV4 = 1
    IPV6 = 2
    # 3 is reserved for a later version, so the layout has room for it: a host name.
    UNIX = 4

    @property
    def socket_family(self) -> socket.AddressFamily:
        """The ``socket.AF_*`` constant of this family."""
        return _SOCKET_FAMILIES[self]


_IPV4 = AddressFamily.IPV4
_IPV6 = AddressFamily.IPV6
_SOCKET_FAMILIES = {
    AddressFamily.IPV4: socket.AF_INET,
    AddressFamily.IPV6: socket.AF_INET6,
    AddressFamily.UNIX: socket.AF_UNIX,
}


class ScopeError(ValueError):
    """An IPv6 literal whose scope is no usable number (or, where names are allowed, names no interface).

    ``reason`` says why without the literal, for messages that show it their own way.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def scope_index(scope: str, host: str, *, interface_names: bool) -> int:
    """The scope id a literal's ``%scope`` stands for: a number, or with ``interface_names`` an interface's index.

    The one place a scope is read. The wire carries numbers only: an interface
    name is the guest's to turn into its index (``if_nametoindex``), never the encoder's.
    """
    if scope.isascii() and scope.isdigit():
        number = int(scope)
        if number > _SCOPE_MAX:
            raise ScopeError(f"the scope id of {host!r} does not fit in 32 bits", "scope id out of range")
        return number
    if not interface_names:
        raise ScopeError(f"scope id {scope!r} of {host!r} is not a number (use socket.if_nametoindex)",
                         f"scope id {scope!a} is not a number")
    try:
        return socket.if_nametoindex(scope)
    except (OSError, ValueError):
        raise ScopeError(f"no interface {scope!r} for the scope of {host!r}", f"no interface {scope!a}") from None


def is_unix_path(host: object) -> TypeGuard[str]:
    """Whether ``host`` is written as an AF_UNIX endpoint's: an absolute path, or "" for an unnamed socket."""
    return isinstance(host, str) and (host == "" or host.startswith("/"))


def valid_unix_path(host: str) -> bool:
    """A path the kernel can take as sun_path: absolute (or ""), no NUL, at most 107 bytes of UTF-8."""
    if not is_unix_path(host) or "\0" in host:
        return False
    try:
        return len(host.encode()) <= UNIX_PATH_MAX
    except UnicodeEncodeError:  # a lone surrogate
        return False


def parse_host(host: str, *, interface_names: bool = False) -> tuple[AddressFamily, bytes, int]:
    """``(family, packed address, scope id)`` of an IP literal or an AF_UNIX path: the one parser of endpoint text.

    Strict, as ``ipaddress`` and ``inet_pton`` are: no names, no "127.1"
    shorthand, no leading zeros. A scope id is a number, or with
    ``interface_names`` the name of one of this host's interfaces. An AF_UNIX
    path is "" or absolute, without NUL, at most 107 bytes; its packed form is
    its UTF-8. Raises TypeError for a host that is not text, ValueError
    (:class:`ScopeError` for a bad scope) for anything else.
    """
    if not isinstance(host, str):
        raise TypeError(f"an endpoint's host is text, not {host!r}")
    if not host or host[0] == "/":
        if not valid_unix_path(host):
            raise ValueError(f"not a usable AF_UNIX path (NUL, not UTF-8, or over {UNIX_PATH_MAX} bytes): {host!r}")
        return AddressFamily.UNIX, host.encode(), 0
    try:
        return AddressFamily.IPV4, socket.inet_pton(socket.AF_INET, host), 0
    except (OSError, ValueError):  # ValueError: a NUL in the text
        pass
    address, sep, scope = host.partition("%")
    try:
        packed = socket.inet_pton(socket.AF_INET6, address)
    except (OSError, ValueError):
        raise ValueError(f"{host!r} is not an IP address literal (nor an AF_UNIX path)") from None
    if not sep:
        return AddressFamily.IPV6, packed, 0
    if not scope or "%" in scope:
        raise ScopeError(f"{host!r} has an empty or doubled scope", "an empty or doubled scope")
    return AddressFamily.IPV6, packed, scope_index(scope, host, interface_names=interface_names)


class Endpoint(tuple[str, int]):
    """An address and port, parsed once; also the ``(host, port)`` tuple Python's sockets use.

    ``Endpoint(host, port)`` parses ``host`` (:func:`parse_host`: an IP literal
    with a numeric scope, or an AF_UNIX path with port 0) and raises ValueError
    (TypeError for values that are not text and an int) if it is none of them.
    :meth:`from_packed` builds one from the wire's form and :meth:`from_sockaddr`
    from what a socket returned, neither through text. ``host`` is the
    canonical text: IPv4 dotted quad, IPv6 as ``inet_ntop`` writes it with
    ``%N`` for a nonzero scope id (``fe80::1%2``), the path for AF_UNIX (``""``
    for an unnamed socket, as a connecting client's own address is).

    Two endpoints are equal when their canonical texts and ports are: the same
    as having the same family, packed address, scope id and port.
    """

    # The parsed form, beside the tuple's items (a tuple subclass has no slots): set once, in _build.
    #: Which family: IPv4, IPv6 or AF_UNIX.
    family: AddressFamily
    #: The address as the wire and the kernel hold it: 4 or 16 bytes, or the AF_UNIX path's UTF-8.
    packed: bytes
    #: The IPv6 scope id (the interface index of a link-local address); 0 for none, and for other families.
    scope_id: int

    def __new__(cls, host: str, port: int) -> Self:
        family, packed, scope_id = parse_host(host)
        _check_port(port, family)
        if family is AddressFamily.IPV6:
            host = ipv6_host(packed, scope_id)
        # IPv4 text inet_pton takes is already canonical; a path is itself.
        return cls._build(host, port, family, packed, scope_id)

    @classmethod
    def _build(cls, host: str, port: int, family: AddressFamily, packed: bytes, scope_id: int) -> Self:
        """An Endpoint assembled from values already checked (``from_wire_ipv4``/``ipv6`` do the same inline, for speed)."""
        endpoint = tuple.__new__(cls, (host, port))
        fields = endpoint.__dict__
        fields["family"] = family
        fields["packed"] = packed
        fields["scope_id"] = scope_id
        return endpoint

    @classmethod
    def from_packed(cls, family: AddressFamily, packed: bytes, port: int = 0, scope_id: int = 0) -> Self:
        """The Endpoint of an address in packed form (as the wire carries it); ValueError if it is not one."""
        # The checks a wire reader's struct layout cannot give; the IP cases are then built by from_wire_ipv4/6.
        if isinstance(port, int) and 0 <= port <= 0xFFFF:
            if family == _IPV4 and len(packed) == 4 and not scope_id:
                return cls.from_wire_ipv4(packed, port)
            if family == _IPV6 and len(packed) == 16 and 0 <= scope_id <= _SCOPE_MAX:
                return cls.from_wire_ipv6(packed, port, scope_id)
        _check_port(port, family)
        if family == AddressFamily.UNIX and not scope_id:
            try:
                path = packed.decode()
            except UnicodeDecodeError:
                raise ValueError(f"an AF_UNIX path is UTF-8, not {packed!r}") from None
            if valid_unix_path(path):
                return cls._build(path, 0, AddressFamily.UNIX, packed, 0)
        raise ValueError(f"not a packed address of family {family}: {packed!r} scope {scope_id}")

    @classmethod
    def from_wire_ipv4(cls, packed: bytes, port: int) -> Self:
        """:meth:`from_packed` for an IPv4 address as a wire reader unpacked it: ``packed`` exactly 4
        bytes and ``port`` a u16, which ``struct`` guarantees, so nothing is checked again."""
        endpoint = _new_tuple(cls, (_ntoa(packed), port))
        fields = endpoint.__dict__
        fields["family"] = _IPV4
        fields["packed"] = packed
        fields["scope_id"] = 0
        return endpoint

    @classmethod
    def from_wire_ipv6(cls, packed: bytes, port: int, scope_id: int) -> Self:
        """:meth:`from_packed` for an IPv6 address as a wire reader unpacked it: ``packed`` exactly 16
        bytes, ``port`` a u16 and ``scope_id`` a u32, which ``struct`` guarantees."""
        host = _ntop(_AF_INET6, packed)
        endpoint = _new_tuple(cls, (f"{host}%{scope_id}" if scope_id else host, port))
        fields = endpoint.__dict__
        fields["family"] = _IPV6
        fields["packed"] = packed
        fields["scope_id"] = scope_id
        return endpoint

    @classmethod
    def from_sockaddr(cls, sockaddr: SockAddr | bytes) -> Self:
        """The Endpoint of an address Python's sockets returned (IPv4, IPv6 or AF_UNIX); ValueError if the
        wire could not carry it (an abstract-namespace name, a path over 107 bytes)."""
        if isinstance(sockaddr, (str, bytes)):
            path = os.fsdecode(sockaddr)
            if not valid_unix_path(path):
                raise ValueError(f"an AF_UNIX address the wire has no form for (abstract, or too long): {path!r}")
            return cls._build(path, 0, AddressFamily.UNIX, path.encode(), 0)
        if len(sockaddr) == 4:
            host, port, _, scope_id = sockaddr
            try:
                packed = _pton(_AF_INET6, host.partition("%")[0])
            except (OSError, ValueError):
                raise ValueError(f"not an IPv6 socket address: {sockaddr!r}") from None
            return cls.from_packed(AddressFamily.IPV6, packed, port, scope_id)
        host, port = sockaddr[0], sockaddr[1]
        try:
            # The monitor's every connection gives two of these: the text is parsed here, once.
            packed = _pton(_AF_INET, host)
        except (OSError, ValueError, TypeError):
            return cls(host, port)  # IPv6 text in a pair, or not an address: the general parse says which
        # IPv4 text that inet_pton takes is already canonical.
        return cls._build(host, port, AddressFamily.IPV4, packed, 0) if _port_ok(port) else cls(host, port)

    @property
    def host(self) -> str:
        """The canonical text of the address (see the class docstring)."""
        return self[0]

    @property
    def port(self) -> int:
        """The port; 0 for AF_UNIX."""
        return self[1]

    @property
    def is_unix(self) -> bool:
        return self.family is AddressFamily.UNIX

    @property
    def socket_family(self) -> socket.AddressFamily:
        """``socket.AF_INET``, ``AF_INET6`` or ``AF_UNIX``."""
        return _SOCKET_FAMILIES[self.family]

    def sockaddr(self) -> SockAddr:
        """The address as Python's socket functions take it: the path, ``(host, port)``, or ``(host, port, 0, scope)``."""
        return self[0] if self.family is AddressFamily.UNIX else self.ip_sockaddr()

    def ip_sockaddr(self) -> IPSockAddr:
        """:meth:`sockaddr` of an IP endpoint; ValueError for an AF_UNIX one."""
        if self.family is AddressFamily.IPV4:
            return (self[0], self[1])
        if self.family is AddressFamily.IPV6:
            host = self[0].partition("%")[0] if self.scope_id else self[0]
            return (host, self[1], 0, self.scope_id)
        raise ValueError(f"an AF_UNIX endpoint has no IP socket address: {self[0]!r}")

    def with_port(self, port: int) -> Self:
        """The same address with another port (no parsing: for the addresses a lookup found)."""
        _check_port(port, self.family)
        return self._build(self[0], port, self.family, self.packed, self.scope_id)

    def ipv4_mapped(self) -> Self:
        """The IPv4-mapped IPv6 form (``::ffff:a.b.c.d``) of an IPv4 endpoint; ValueError for any other."""
        if self.family is not AddressFamily.IPV4:
            raise ValueError(f"only an IPv4 endpoint has an IPv4-mapped form, not {self!r}")
        packed = V4_MAPPED + self.packed
        return self._build(ipv6_host(packed, 0), self[1], AddressFamily.IPV6, packed, 0)

    def embedded_ipv4(self) -> Self | None:
        """The IPv4 endpoint an IPv4-mapped IPv6 one (without a scope) stands for; None for any other."""
        if self.family is not AddressFamily.IPV6 or self.scope_id or not self.packed.startswith(V4_MAPPED):
            return None
        packed = self.packed[12:]
        return self._build(socket.inet_ntoa(packed), self[1], AddressFamily.IPV4, packed, 0)

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError(f"an Endpoint cannot be changed (setting {name!r})")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"an Endpoint cannot be changed (deleting {name!r})")

    def __reduce__(self) -> tuple[Callable[[str, int], Endpoint], tuple[str, int]]:
        # Pickled (and copied) as its text and port, parsed again when loaded.
        return (Endpoint, (self[0], self[1]))

    def __repr__(self) -> str:
        return f"Endpoint(host={self[0]!r}, port={self[1]!r})"


def _port_ok(port: object) -> bool:
    return isinstance(port, int) and 0 <= port <= 0xFFFF


def _check_port(port: int, family: AddressFamily) -> None:
    if not isinstance(port, int):
        raise TypeError(f"a port is an int, not {port!r}")
    if family == AddressFamily.UNIX:
        if port != 0:
            raise ValueError(f"an AF_UNIX endpoint has port 0, not {port}")
    elif not 0 <= port <= 0xFFFF:
        raise ValueError(f"port must be 0-65535, not {port}")


def ipv6_host(packed: bytes, scope_id: int) -> str:
    """The canonical text of 16 address bytes and a scope id, as the kernel writes it (an Endpoint's ``host``)."""
    host = socket.inet_ntop(socket.AF_INET6, packed)
    return f"{host}%{scope_id}" if scope_id else host

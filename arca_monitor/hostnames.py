"""Names as the host's own files and literals give them: IP literals, host-name checks, the hosts file, resolv.conf.

Also the lookup error every part of the resolver raises (:class:`ResolveError`,
with the ``socket.EAI_*`` code getaddrinfo would give), so that the DNS client
and the :class:`~arca_monitor.resolver.Resolver` share it without a cycle.

Decisions, and why:

* Names are checked before anything is looked up, and a bad one is EAI_NONAME.
  Underscores are allowed: DNS carries them (RFC 2181 section 11) and real
  names use them (container service names, ``_dmarc``-style labels). Names are
  ASCII only: an internationalized name must come in its IDNA A-label form
  (``xn--...``); converting it here would pick one of two incompatible IDNA
  standards for the guest. A name whose last label is all digits ("127.1",
  "1.2.3.04") is refused: no top-level domain is numeric, and such a name is
  almost surely a malformed address that DNS should never see.
* IP literals are strict forms only, as an ``Endpoint`` parses them (no
  "127.1"); an IPv6 scope may be a number or the name of one of the host's
  interfaces, and comes back as ``%N``.
* Error messages stay short (a name in them is cut, :func:`shown_name`)
  because they travel in a 255-byte text field.

Reading the hosts file and resolv.conf is synchronous: both are small local
files, stat()ed on each lookup and read only when they change (:class:`WatchedFile`).
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

import dns.exception
import dns.resolver

from arca_control.protocol.values import ScopeError, parse_host
from arca_control.protocol.wire import AddressFamily, Endpoint

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")

#: Linux has both; elsewhere the nearest code.
EAI_NODATA = getattr(socket, "EAI_NODATA", socket.EAI_NONAME)
EAI_ADDRFAMILY = getattr(socket, "EAI_ADDRFAMILY", socket.EAI_FAMILY)

#: A name's length without its trailing dot (255 bytes in wire form).
MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
DNS_PORT = 53
#: How much of a name an error message shows.
_SHOWN_NAME_LENGTH = 60

_LABEL_CHARACTERS = re.compile(r"[A-Za-z0-9_-]+\Z")


class ResolveError(Exception):
    """A lookup that failed; ``eai`` is the ``socket.EAI_*`` code getaddrinfo would give."""

    def __init__(self, eai: int, message: str) -> None:
        super().__init__(message)
        self.eai = eai
        self.message = message


@dataclass
class HostsTable:
    #: name → addresses (Endpoints of port 0) in file order, without duplicates.
    by_name: dict[str, list[Endpoint]] = field(default_factory=dict)
    #: address → names, for :meth:`Resolver.names_for`.
    by_address: dict[Endpoint, set[str]] = field(default_factory=dict)


class WatchedFile(Generic[T]):
    """A file's parsed contents, parsed again whenever the file changes or appears.

    The file is stat()ed on every :meth:`get`; inode and size are compared as
    well as mtime because a replacement written within the filesystem's
    timestamp granularity keeps the old mtime.
    """

    def __init__(self, path: str, parse: Callable[[str], T], empty: T) -> None:
        self.path = path
        self._parse = parse
        self._empty = empty
        self._key: tuple[int, int, int] | None = None
        self._value = empty

    def get(self) -> T:
        try:
            status = os.stat(self.path)
            key = (status.st_ino, status.st_mtime_ns, status.st_size)
        except OSError:
            key = None
        if key != self._key:
            self._key = key
            self._value = self._empty if key is None else self._parse(self.path)
        return self._value


def shown_name(name: str) -> str:
    """The name for an error message: ASCII and cut short, as messages travel in 255 bytes."""
    shown = ascii(name)
    if len(shown) > _SHOWN_NAME_LENGTH:
        shown = shown[:_SHOWN_NAME_LENGTH] + "..."
    return shown


def parse_literal(text: str) -> Endpoint | None:
    """The address (an Endpoint of port 0) an IP literal stands for; None if ``text`` is not one.

    Raises ResolveError(EAI_NONAME) for an IPv6 literal whose scope is out of
    range or names no interface of this host.
    """
    try:
        family, packed, scope_id = parse_host(text, interface_names=True)
    except ScopeError as exc:
        raise ResolveError(socket.EAI_NONAME, f"{shown_name(text)}: {exc.reason[:_SHOWN_NAME_LENGTH]}") from None
    except (ValueError, TypeError):
        return None
    if family == AddressFamily.UNIX:  # a path is no literal a name could stand for
        return None
    return Endpoint.from_packed(family, packed, 0, scope_id)


def literal_or_none(text: str) -> Endpoint | None:
    """:func:`parse_literal`, with a literal of a bad scope counted as no literal at all."""
    try:
        return parse_literal(text)
    except ResolveError:
        return None


def check_name(name: str) -> str:
    """The name in lower case without its trailing dot; ResolveError(EAI_NONAME) if it is no host name."""

    def bad(why: str) -> ResolveError:
        return ResolveError(socket.EAI_NONAME, f"{shown_name(name)}: {why}")

    if not name.isascii():
        raise bad("not ASCII; give an internationalized name in its IDNA form (xn--...)")
    text = name.removesuffix(".")
    if not text:
        raise bad("empty name")
    if len(text) > MAX_NAME_LENGTH:
        raise bad(f"longer than {MAX_NAME_LENGTH} bytes")
    labels = text.split(".")
    for label in labels:
        if not label:
            raise bad("empty label")
        if len(label) > MAX_LABEL_LENGTH:
            raise bad(f"a label longer than {MAX_LABEL_LENGTH} bytes")
        if not _LABEL_CHARACTERS.match(label):
            raise bad("a label may hold only letters, digits, '-' and '_'")
        if label.startswith("-") or label.endswith("-"):
            raise bad("a label may not begin or end with '-'")
    if labels[-1].isdigit():
        raise bad("not an IP address, and no host name ends in a number")
    return text.lower()


def parse_hosts(path: str) -> HostsTable:
    """The hosts file at ``path``: ``address name [alias...]`` lines, ``#`` comments.

    Lines whose address is not an IP literal are skipped, as glibc does; an
    unreadable file counts as empty.
    """
    table = HostsTable()
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            lines = file.readlines()
    except OSError:
        return table
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        literal = literal_or_none(fields[0])
        if literal is None:
            continue
        for alias in fields[1:]:
            name = alias.lower().removesuffix(".")
            entries = table.by_name.setdefault(name, [])
            if literal not in entries:
                entries.append(literal)
            table.by_address.setdefault(literal, set()).add(name)
    return table


def parse_resolv_conf(path: str) -> list[Endpoint]:
    """The nameservers of a resolv.conf file, each an IP literal at port 53 (a server that is none is skipped)."""
    try:
        config = dns.resolver.Resolver(filename=path, configure=True)
    except (dns.exception.DNSException, OSError, ValueError):
        return []
    servers = []
    for server in config.nameservers:
        address = literal_or_none(server) if isinstance(server, str) else None
        if address is not None:
            servers.append(address.with_port(DNS_PORT))
    return servers

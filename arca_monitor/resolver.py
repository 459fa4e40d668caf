"""Name resolution for the guest, done by the monitor: getaddrinfo without the system resolver.

The guest has no network of its own, so the monitor answers its "what is the
address of this name" questions. Nothing here calls ``socket.getaddrinfo`` or
``gethostbyname``: those would ask the system resolver (NSS, nscd, whatever
the host has configured) behind our back. Instead, in this order: IP
literals, answered from themselves; the hosts file, parsed again whenever it
changes (both ``hostnames``, which checks names before anything is looked
up); a cache shared by every session (one :class:`Resolver` per monitor);
DNS queries for A and/or AAAA (``dns_client``). Decisions, and why:

* Names are absolute: no search domains from resolv.conf are tried.
* Order: IPv6 addresses first, then IPv4 (the RFC 6724 default when both
  work), each family in the order of its source (the hosts file's line order,
  the nameserver's answer order), duplicates removed. For ``type`` 0 each
  address gives a SOCK_STREAM entry and then a SOCK_DGRAM one, as getaddrinfo.
* A hosts-file entry for the name answers alone when it has an address of a
  family asked for; otherwise DNS is asked, as glibc does.
* A name the hosts file lists, with addresses of another family only, is
  EAI_NODATA when DNS has no address for it either (or is off), not
  EAI_NONAME: the name is known. A DNS name is known when its server
  answers NODATA rather than NXDOMAIN.
* The cache holds one entry per (name, record type), at most ``cache_size``,
  least recently used evicted first, each for as long as ``dns_client`` says
  its answer may be kept (failures not at all).
* Concurrent lookups of the same (name, record type) share one query.
* :meth:`Resolver.names_for` says, for each name an address has, whether the
  hosts file or DNS gave it (:class:`Names`, :class:`Source`): the policy lets
  a DNS answer satisfy a name rule only outside loopback and private ranges.
* Error codes beyond those of ``hostnames`` and ``dns_client``: an IP literal
  of the other family is EAI_ADDRFAMILY, as glibc with AI_NUMERICHOST. A bad
  family, socket type or port is EAI_FAMILY, EAI_SOCKTYPE or EAI_SERVICE.
"""

from __future__ import annotations

import collections
import enum
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import dns.rdatatype
import trio

from arca_control.protocol.wire import AddressFamily, Endpoint

from .dns_client import DEFAULT_NEGATIVE_TTL, EDNS_PAYLOAD, MAX_TTL, DnsClient, Outcome
from .hostnames import (
    EAI_ADDRFAMILY,
    EAI_NODATA,
    HostsTable,
    ResolveError,
    WatchedFile,
    check_name,
    parse_hosts,
    parse_literal,
    shown_name,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

_RDTYPE_OF_FAMILY: dict[int, dns.rdatatype.RdataType] = {
    socket.AF_INET6: dns.rdatatype.AAAA,
    socket.AF_INET: dns.rdatatype.A,
}
#: The cache's and the flights' key: a name and one record type.
_Key = tuple[str, dns.rdatatype.RdataType]



class Source(enum.Enum):
    """Where an answer came from: the operator's own hosts file, or DNS (anyone's say)."""

    HOSTS_FILE = "the hosts file"
    DNS = "DNS"


class Names(set[str]):
    """The names that resolved to one address (:meth:`Resolver.names_for`), and where each answer came from.

    It is the set of names, as ``names_for`` always gave, so a caller that
    asks only "which names" needs nothing more; a policy asks :meth:`source`
    too, because a DNS answer may not lead a name rule everywhere a
    hosts-file line may (DNS rebinding, see ``policy``). A name added later
    counts as DNS's.
    """

    __slots__ = ("from_hosts_file",)

    def __init__(self, hosts_file: Iterable[str] = (), dns_answers: Iterable[str] = ()) -> None:
        listed = frozenset(hosts_file)
        super().__init__(listed.union(dns_answers))
        self.from_hosts_file = listed

    def source(self, name: str) -> Source:
        """The hosts file if it lists ``name`` for the address; DNS otherwise (also for a name not in the set)."""
        return Source.HOSTS_FILE if name in self.from_hosts_file else Source.DNS


@dataclass
class _CacheEntry:
    expires: float
    outcome: Outcome


@dataclass
class _Flight:
    """A query under way, for lookups of the same name and type that arrive meanwhile."""

    done: trio.Event = field(default_factory=trio.Event)
    #: None until answered, and still None if the query's owner was cancelled.
    outcome: Outcome | None = None


def _in_order(addresses: Iterable[Endpoint]) -> list[Endpoint]:
    """IPv6 first, then IPv4, each in the order given, without duplicates."""
    unique = list(dict.fromkeys(addresses))
    return [a for a in unique if a.family == AddressFamily.IPV6] + [a for a in unique if a.family == AddressFamily.IPV4]


class Resolver:
    """getaddrinfo for the guest's names. One object serves every session; see the module docstring.

    ``nameserver`` is an (IP literal, port) pair; None means those of
    /etc/resolv.conf. ``timeout`` is per query attempt, in seconds;
    ``attempts`` is how many times each nameserver is tried. With ``dns``
    false only literals and the hosts file answer.
    """

    def __init__(
        self,
        *,
        hosts_file: str | None = "/etc/hosts",
        nameserver: tuple[str, int] | None = None,
        dns: bool = True,
        cache_size: int = 4096,
        timeout: float = 2.0,
        attempts: int = 2,
    ) -> None:
        if cache_size < 0 or timeout <= 0 or attempts < 1:
            raise ValueError("cache_size must be >= 0, timeout > 0 and attempts >= 1")
        self.dns = dns
        self.cache_size = cache_size
        self._client = DnsClient(nameserver, timeout=timeout, attempts=attempts)
        self._hosts = WatchedFile(hosts_file, parse_hosts, HostsTable()) if hosts_file else None
        self._cache: collections.OrderedDict[_Key, _CacheEntry] = collections.OrderedDict()
        self._flights: dict[_Key, _Flight] = {}

    async def resolve(
        self, name: str, port: int | None = None, family: int = 0, type: int = 0
    ) -> list[tuple[int, int, Endpoint]]:
        """``[(family, socket type, Endpoint(host, port or 0)), ...]`` for ``name``; raises ResolveError.

        ``family`` 0 means IPv6 and IPv4, ``type`` 0 means SOCK_STREAM and SOCK_DGRAM.
        """
        families: tuple[int, ...]
        types: tuple[int, ...]
        if family == 0:
            families = (socket.AF_INET6, socket.AF_INET)
        elif family in (socket.AF_INET, socket.AF_INET6):
            families = (family,)
        else:
            raise ResolveError(socket.EAI_FAMILY, f"address family {family} not supported")
        if type == 0:
            types = (socket.SOCK_STREAM, socket.SOCK_DGRAM)
        elif type in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            types = (type,)
        else:
            raise ResolveError(socket.EAI_SOCKTYPE, f"socket type {type} not supported")
        port = 0 if port is None else port
        if not 0 <= port <= 0xFFFF:
            raise ResolveError(socket.EAI_SERVICE, f"port {port} out of range")

        literal = parse_literal(name)
        if literal is not None:
            if literal.socket_family not in families:
                raise ResolveError(EAI_ADDRFAMILY, f"{shown_name(name)}: address of another family")
            addresses = [literal]
        else:
            addresses = await self._addresses(check_name(name), families)
        return [
            (address.socket_family, kind, address.with_port(port)) for address in addresses for kind in types
        ]

    def names_for(self, address: Endpoint | str, *, fresh: bool = False) -> Names:
        """The names this monitor answered with ``address`` (an Endpoint, any port; or an IP literal's text),
        each with where the answer came from.

        Why it exists: a control-protocol Connect carries only a literal
        endpoint, never the name it was made for, so a policy's name rule can
        only ask which names the monitor itself gave out for that address:
        the hosts file's, and the answers in the cache. A connect made for a
        known name (the broker's ``connect(..., name=...)``) asks only where
        that name's answer came from.

        Cached answers count after their TTL too, while they stay in the cache
        (a guest may well connect long after looking an address up), unless
        ``fresh``: then only answers within their TTL, as a policy's name rules need.
        A name both sources give counts as the hosts file's.
        """
        if isinstance(address, str):
            try:
                parsed = parse_literal(address)
            except ResolveError:
                return Names()
            if parsed is None:
                return Names()
            key = parsed
        else:
            key = address if address.port == 0 else address.with_port(0)
        listed = self._hosts.get().by_address.get(key, set()) if self._hosts else set()
        now = trio.current_time()
        answered = (
            name
            for (name, _), entry in self._cache.items()
            if key in entry.outcome.addresses and not (fresh and entry.expires <= now)
        )
        return Names(listed, answered)

    async def _addresses(self, name: str, families: tuple[int, ...]) -> list[Endpoint]:
        entries = self._hosts.get().by_name.get(name, []) if self._hosts is not None else []
        found = [entry for entry in entries if entry.socket_family in families]
        if found:
            return _in_order(found)
        # The hosts file knows the name, with addresses of another family only:
        # whatever DNS says, the name exists, so the answer is at worst EAI_NODATA.
        known = bool(entries)
        if not self.dns:
            if known:
                raise ResolveError(EAI_NODATA, f"{shown_name(name)}: no address of the family asked for in the hosts file")
            raise ResolveError(socket.EAI_NONAME, f"{shown_name(name)}: not in the hosts file, and DNS is off")

        rdtypes = [_RDTYPE_OF_FAMILY[family] for family in families]
        outcomes: dict[dns.rdatatype.RdataType, Outcome] = {}

        async def look_up(rdtype: dns.rdatatype.RdataType) -> None:
            outcomes[rdtype] = await self._look_up(name, rdtype)

        if len(rdtypes) == 1:
            await look_up(rdtypes[0])
        else:
            async with trio.open_nursery() as nursery:
                for rdtype in rdtypes:
                    nursery.start_soon(look_up, rdtype)

        found = [address for rdtype in rdtypes for address in outcomes[rdtype].addresses]
        if found:
            # One family answering is enough, even if the other failed.
            return _in_order(found)
        # "No such name" settles it, unless the hosts file knows the name: then it
        # has no address of the family asked for. "No records of that type" only if
        # every type said so.
        failures = {outcomes[rdtype].eai: outcomes[rdtype] for rdtype in reversed(rdtypes)}
        if known and socket.EAI_NONAME in failures:
            raise ResolveError(EAI_NODATA, f"{shown_name(name)}: no address of the family asked for")
        for eai in (socket.EAI_NONAME, socket.EAI_FAIL, socket.EAI_AGAIN, EAI_NODATA):
            if eai in failures:
                raise ResolveError(eai, f"{shown_name(name)}: {failures[eai].message}")
        raise AssertionError(f"no outcome explains {failures!r}")

    async def _look_up(self, name: str, rdtype: dns.rdatatype.RdataType) -> Outcome:
        """The outcome for one record type: from the cache, a query under way, or a new query."""
        key = (name, rdtype)
        while True:
            entry = self._cache.get(key)
            if entry is not None and trio.current_time() < entry.expires:
                self._cache.move_to_end(key)
                return entry.outcome
            flight = self._flights.get(key)
            if flight is None:
                break
            await flight.done.wait()
            if flight.outcome is not None:
                return flight.outcome
            # That query's owner was cancelled before the answer came: ask again ourselves.
        flight = _Flight()
        self._flights[key] = flight
        try:
            outcome, ttl = await self._client.query(name, rdtype)
            flight.outcome = outcome
            if ttl is not None:
                self._remember(key, outcome, ttl)
            return outcome
        finally:
            del self._flights[key]
            flight.done.set()

    def _remember(self, key: _Key, outcome: Outcome, ttl: float) -> None:
        if self.cache_size == 0:
            return
        # A TTL of 0 is kept too (expired at once): names_for still learns the name.
        self._cache[key] = _CacheEntry(trio.current_time() + ttl, outcome)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)


__all__ = ["DEFAULT_NEGATIVE_TTL", "EAI_ADDRFAMILY", "EAI_NODATA", "EDNS_PAYLOAD", "MAX_TTL", "Names", "ResolveError",
           "Resolver", "Source", "check_name", "parse_literal"]

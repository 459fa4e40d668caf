"""Name resolution for the guest, done by the monitor: getaddrinfo without the system resolver.

The guest has no network of its own, so the monitor answers its "what is the
address of this name" questions. Nothing here calls ``socket.getaddrinfo`` or
``gethostbyname``: those would ask the system resolver (NSS, nscd, whatever
the host has configured) behind our back. Instead, in this order:

1. IP literals are answered from themselves. Strict forms only, as an
   ``Endpoint`` parses them (no "127.1"); an IPv6 scope may be a number or the
   name of one of the host's interfaces, and comes back as ``%N``.
2. The hosts file, parsed again whenever it changes (inode, mtime or size).
3. A cache shared by every session (one :class:`Resolver` per monitor).
4. DNS queries (A and/or AAAA) sent with dnspython's async API on trio, to the
   given nameserver or to those of /etc/resolv.conf (re-read when it changes).

Decisions, and why:

* Names are checked before anything is looked up, and a bad one is EAI_NONAME.
  Underscores are allowed: DNS carries them (RFC 2181 section 11) and real
  names use them (container service names, ``_dmarc``-style labels). Names are
  ASCII only: an internationalized name must come in its IDNA A-label form
  (``xn--...``); converting it here would pick one of two incompatible IDNA
  standards for the guest. A name whose last label is all digits ("127.1",
  "1.2.3.04") is refused: no top-level domain is numeric, and such a name is
  almost surely a malformed address that DNS should never see.
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
  least recently used evicted first. An answer is kept for the smallest TTL of
  its records (CNAMEs included), at most MAX_TTL. "No such name" (NXDOMAIN)
  and "no records of this type" (NODATA) are kept for the SOA's negative TTL
  (RFC 2308: the smaller of the SOA record's TTL and its MINIMUM field), at most
  MAX_NEGATIVE_TTL, or DEFAULT_NEGATIVE_TTL when the reply has no SOA. Failures
  (timeouts, SERVFAIL) are not kept: the next lookup asks again.
* Concurrent lookups of the same (name, record type) share one query.
* :meth:`Resolver.names_for` says, for each name an address has, whether the
  hosts file or DNS gave it (:class:`Names`, :class:`Source`): the policy lets
  a DNS answer satisfy a name rule only outside loopback and private ranges.
* Error codes: no such name, EAI_NONAME; the name exists but has no address of
  the family asked for, EAI_NODATA (what glibc returns); no reply after every
  attempt (timeouts, ICMP port unreachable), EAI_AGAIN; SERVFAIL, REFUSED, any
  other error rcode or a malformed reply, EAI_FAIL (glibc would say EAI_AGAIN
  for SERVFAIL). An IP literal of the other family is EAI_ADDRFAMILY, as glibc
  with AI_NUMERICHOST. A bad family, socket type or port is EAI_FAMILY,
  EAI_SOCKTYPE or EAI_SERVICE. Error messages stay short (a name in them is
  cut) because they travel in a 255-byte text field.

Reading the hosts file and resolv.conf is synchronous: both are small local
files, stat()ed on each lookup and read only when they change.
"""

from __future__ import annotations

import collections
import enum
import os
import re
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import dns.resolver
import trio

from arca_control.protocol.values import ScopeError, parse_host
from arca_control.protocol.wire import AddressFamily, Endpoint

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

T = TypeVar("T")

#: Linux has both; elsewhere the nearest code.
EAI_NODATA = getattr(socket, "EAI_NODATA", socket.EAI_NONAME)
EAI_ADDRFAMILY = getattr(socket, "EAI_ADDRFAMILY", socket.EAI_FAMILY)

#: The longest a positive answer is kept, whatever its TTL says.
MAX_TTL = 3600
#: The longest a negative answer (NXDOMAIN, NODATA) is kept.
MAX_NEGATIVE_TTL = 300
#: How long a negative answer without an SOA record is kept.
DEFAULT_NEGATIVE_TTL = 30
#: A name's length without its trailing dot (255 bytes in wire form).
MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
#: The EDNS buffer size of DNS Flag Day 2020: big enough that answers rarely
#: need TCP, small enough that they are not fragmented.
EDNS_PAYLOAD = 1232
DNS_PORT = 53
#: dnspython's trio backend: its sockets are trio sockets, its waits trio checkpoints.
_TRIO_BACKEND = dns.asyncbackend.get_backend("trio")
#: How much of a name an error message shows.
_SHOWN_NAME_LENGTH = 60

_LABEL_CHARACTERS = re.compile(r"[A-Za-z0-9_-]+\Z")
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


class ResolveError(Exception):
    """A lookup that failed; ``eai`` is the ``socket.EAI_*`` code getaddrinfo would give."""

    def __init__(self, eai: int, message: str) -> None:
        super().__init__(message)
        self.eai = eai
        self.message = message


@dataclass(frozen=True)
class _Outcome:
    """What one record type of one name came to: addresses, or an EAI code and why."""

    addresses: tuple[Endpoint, ...] = ()
    eai: int = 0
    message: str = ""


@dataclass
class _CacheEntry:
    expires: float
    outcome: _Outcome


@dataclass
class _Flight:
    """A query under way, for lookups of the same name and type that arrive meanwhile."""

    done: trio.Event = field(default_factory=trio.Event)
    #: None until answered, and still None if the query's owner was cancelled.
    outcome: _Outcome | None = None


class _NoReply(Exception):
    """A nameserver did not answer (timeout, ICMP unreachable): worth asking again."""


@dataclass
class _HostsTable:
    #: name → addresses (Endpoints of port 0) in file order, without duplicates.
    by_name: dict[str, list[Endpoint]] = field(default_factory=dict)
    #: address → names, for :meth:`Resolver.names_for`.
    by_address: dict[Endpoint, set[str]] = field(default_factory=dict)


class _WatchedFile(Generic[T]):
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


def _shown(name: str) -> str:
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
        raise ResolveError(socket.EAI_NONAME, f"{_shown(text)}: {exc.reason[:_SHOWN_NAME_LENGTH]}") from None
    except (ValueError, TypeError):
        return None
    if family == AddressFamily.UNIX:  # a path is no literal a name could stand for
        return None
    return Endpoint.from_packed(family, packed, 0, scope_id)


def check_name(name: str) -> str:
    """The name in lower case without its trailing dot; ResolveError(EAI_NONAME) if it is no host name."""

    def bad(why: str) -> ResolveError:
        return ResolveError(socket.EAI_NONAME, f"{_shown(name)}: {why}")

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


def parse_hosts(path: str) -> _HostsTable:
    """The hosts file at ``path``: ``address name [alias...]`` lines, ``#`` comments.

    Lines whose address is not an IP literal are skipped, as glibc does; an
    unreadable file counts as empty.
    """
    table = _HostsTable()
    try:
        with open(path, encoding="utf-8", errors="replace") as file:
            lines = file.readlines()
    except OSError:
        return table
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            literal = parse_literal(fields[0])
        except ResolveError:
            literal = None
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
        address = _literal_or_none(server) if isinstance(server, str) else None
        if address is not None:
            servers.append(address.with_port(DNS_PORT))
    return servers


def _literal_or_none(text: str) -> Endpoint | None:
    try:
        return parse_literal(text)
    except ResolveError:
        return None


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
        server = None
        if nameserver is not None:
            host, port = nameserver
            # A nameserver named by a host name would need a resolver to find it.
            address = _literal_or_none(host)
            if address is None or not 0 < port <= 0xFFFF:
                raise ValueError(f"nameserver must be (IP literal, port), not {nameserver!r}")
            server = address.with_port(port)
        self.dns = dns
        self.cache_size = cache_size
        self.timeout = timeout
        self.attempts = attempts
        self._nameserver = server
        self._hosts = _WatchedFile(hosts_file, parse_hosts, _HostsTable()) if hosts_file else None
        # Read lazily: a Resolver given a nameserver, or with DNS off, never reads it.
        self._resolv_conf: _WatchedFile[list[Endpoint]] = _WatchedFile(
            "/etc/resolv.conf", parse_resolv_conf, []
        )
        self._backend = _TRIO_BACKEND
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
                raise ResolveError(EAI_ADDRFAMILY, f"{_shown(name)}: address of another family")
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
                raise ResolveError(EAI_NODATA, f"{_shown(name)}: no address of the family asked for in the hosts file")
            raise ResolveError(socket.EAI_NONAME, f"{_shown(name)}: not in the hosts file, and DNS is off")

        rdtypes = [_RDTYPE_OF_FAMILY[family] for family in families]
        outcomes: dict[dns.rdatatype.RdataType, _Outcome] = {}

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
            raise ResolveError(EAI_NODATA, f"{_shown(name)}: no address of the family asked for")
        for eai in (socket.EAI_NONAME, socket.EAI_FAIL, socket.EAI_AGAIN, EAI_NODATA):
            if eai in failures:
                raise ResolveError(eai, f"{_shown(name)}: {failures[eai].message}")
        raise AssertionError(f"no outcome explains {failures!r}")

    async def _look_up(self, name: str, rdtype: dns.rdatatype.RdataType) -> _Outcome:
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
            outcome, ttl = await self._query(name, rdtype)
            flight.outcome = outcome
            if ttl is not None:
                self._remember(key, outcome, ttl)
            return outcome
        finally:
            del self._flights[key]
            flight.done.set()

    def _remember(self, key: _Key, outcome: _Outcome, ttl: float) -> None:
        if self.cache_size == 0:
            return
        # A TTL of 0 is kept too (expired at once): names_for still learns the name.
        self._cache[key] = _CacheEntry(trio.current_time() + ttl, outcome)
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _nameservers(self) -> list[Endpoint]:
        if self._nameserver is not None:
            return [self._nameserver]
        return self._resolv_conf.get()

    async def _query(self, name: str, rdtype: dns.rdatatype.RdataType) -> tuple[_Outcome, float | None]:
        """Ask the nameservers: the outcome, and how long it may be cached (None: not at all)."""
        nameservers = self._nameservers()
        if not nameservers:
            return _Outcome(eai=socket.EAI_FAIL, message="no nameserver configured"), None
        no_reply = _Outcome(eai=socket.EAI_AGAIN, message="no reply from the nameserver")
        failure: _Outcome | None = None
        # A server that answered with a failure is not asked again; one that did not answer is.
        failed: set[Endpoint] = set()
        for _ in range(self.attempts):
            for server in nameservers:
                if server in failed:
                    continue
                query = dns.message.make_query(name, rdtype, use_edns=0, payload=EDNS_PAYLOAD)
                try:
                    response = await self._ask(query, server)
                except _NoReply as error:
                    no_reply = _Outcome(eai=socket.EAI_AGAIN, message=str(error))
                    continue
                except (dns.exception.DNSException, ValueError) as error:
                    # Garbage, a reply to another question, a broken TCP fallback.
                    failed.add(server)
                    failure = _Outcome(eai=socket.EAI_FAIL, message=f"malformed reply ({type(error).__name__})")
                    continue
                outcome, ttl = _read_response(response, rdtype)
                if outcome.eai == socket.EAI_FAIL:
                    failed.add(server)
                    failure = outcome
                    continue
                return outcome, ttl
            if len(failed) == len(nameservers):
                break
        return failure or no_reply, None

    async def _ask(self, query: dns.message.Message, server: Endpoint) -> dns.message.Message:
        """One attempt at one server: the reply, or _NoReply after ``timeout`` seconds."""
        host, port = server
        family = server.socket_family
        with trio.move_on_after(self.timeout):
            try:
                # A connected socket (a fresh one, so a fresh source port, per
                # attempt): the kernel drops datagrams from anyone but the
                # server, and an ICMP port unreachable ends the attempt at once
                # instead of after the timeout.
                sock = await self._backend.make_socket(family, socket.SOCK_DGRAM, 0, None, (host, port))
                async with sock:
                    response, _ = await dns.asyncquery.udp_with_fallback(
                        query, host, port=port, ignore_unexpected=True, udp_sock=sock, backend=self._backend
                    )
                return response
            except OSError as error:
                why = os.strerror(error.errno) if error.errno else error
                raise _NoReply(f"no reply from the nameserver: {why}") from error
        raise _NoReply(f"no reply from the nameserver in {self.timeout:g} s")


def _read_response(response: dns.message.Message, rdtype: dns.rdatatype.RdataType) -> tuple[_Outcome, float | None]:
    """The outcome of a parsed reply, and how long it may be cached."""
    if not isinstance(response, dns.message.QueryMessage):
        # A reply to a query always parses as one; anything else answered another kind of question.
        return _Outcome(eai=socket.EAI_FAIL, message="malformed reply (not a query response)"), None
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        return _Outcome(eai=socket.EAI_FAIL, message=f"the nameserver answered {dns.rcode.to_text(rcode)}"), None
    try:
        chain = response.resolve_chaining()
    except dns.exception.DNSException as error:
        return _Outcome(eai=socket.EAI_FAIL, message=f"malformed reply ({type(error).__name__})"), None
    if chain.answer is None:
        has_soa = any(rrset.rdtype == dns.rdatatype.SOA for rrset in response.authority)
        # Without an SOA dnspython falls back to its own default; ours is shorter.
        ttl = min(chain.minimum_ttl, MAX_NEGATIVE_TTL if has_soa else DEFAULT_NEGATIVE_TTL)
        if rcode == dns.rcode.NXDOMAIN:
            return _Outcome(eai=socket.EAI_NONAME, message="no such name"), ttl
        return _Outcome(eai=EAI_NODATA, message="no address of the family asked for"), ttl
    # Parsed once, here: the answer's addresses are kept as Endpoints (of port 0).
    addresses = (Endpoint(rdata.address, 0) for rdata in chain.answer)
    return _Outcome(addresses=tuple(dict.fromkeys(addresses))), min(chain.minimum_ttl, MAX_TTL)

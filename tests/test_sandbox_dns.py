"""The sandbox's DNS server and its name pool, asked by dnspython's own client on loopback.

Decisions are fakes that record what they were asked (the policy and the
resolver have tests of their own), except in the test that wires the real
ones (``policy_decisions``) to the test DNS server. Time in the pool is a
fake clock moved by hand; nothing sleeps for a TTL.
"""

from __future__ import annotations

import os
import random
import socket
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import dns.asyncbackend
import dns.asyncquery
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import pytest
import trio

from arca_monitor.dns_transport import Limits, Transport
from arca_monitor.name_pool import HOST_NAME, NamePool, PoolExhausted
from arca_monitor.policy import Denied, Kind, Policy
from arca_monitor.resolver import EAI_NODATA, ResolveError, Resolver
from arca_monitor.sandbox_dns import Decision, Decisions, QueryRecord, SandboxDNS, policy_decisions

from .dns_server import dns_server
from .netns import run_in_netns

if TYPE_CHECKING:
    import subprocess

TRIO = dns.asyncbackend.get_backend("trio")


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeMonitor:
    """Decisions from two tables: the names rules allow, and what each name resolves to."""

    allowed: set[str] = field(default_factory=set)
    addresses: dict[str, list[str]] = field(default_factory=dict)
    failures: dict[str, BaseException] = field(default_factory=dict)
    looked_up: list[str] = field(default_factory=list)
    records: list[QueryRecord] = field(default_factory=list)

    def may_resolve(self, name: str) -> None:
        if name not in self.allowed:
            raise Denied(Kind.RESOLVE, name)

    async def lookup(self, name: str) -> list[str]:
        self.looked_up.append(name)
        await trio.lowlevel.checkpoint()
        if name in self.failures:
            raise self.failures[name]
        if name not in self.addresses:
            raise ResolveError(socket.EAI_NONAME, "no such name")
        return self.addresses[name]

    def decisions(self) -> Decisions:
        return Decisions(self.may_resolve, self.lookup, self.records.append)


@dataclass
class Running:
    server: SandboxDNS
    udp: tuple[str, int]
    tcp: tuple[str, int]

    async def ask(self, name: str, rdtype: str = "A", *, tcp: bool = False, **options) -> dns.message.Message:
        query = dns.message.make_query(name, rdtype, **options)
        host, port = self.tcp if tcp else self.udp
        if tcp:
            return await dns.asyncquery.tcp(query, host, port=port, timeout=5, backend=TRIO)
        return await dns.asyncquery.udp(query, host, port=port, timeout=5, backend=TRIO)


@asynccontextmanager
async def running(monitor: FakeMonitor, pool: NamePool | None = None, host: str = "127.0.0.1", **options):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    udp = socket.socket(family, socket.SOCK_DGRAM)
    tcp = socket.socket(family, socket.SOCK_STREAM)
    udp.bind((host, 0))
    tcp.bind((host, 0))
    tcp.listen()
    server = SandboxDNS(monitor.decisions(), pool or NamePool(clock=Clock()), **options)
    addresses = udp.getsockname()[:2], tcp.getsockname()[:2]
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve, [udp], [tcp])
        yield Running(server, *addresses)
        nursery.cancel_scope.cancel()
    assert (udp.fileno(), tcp.fileno()) == (-1, -1)  # the server closed what it was given


def addresses_in(reply: dns.message.Message) -> list[str]:
    return [rdata.to_text() for rrset in reply.answer for rdata in rrset]


# --- the pool on its own -----------------------------------------------------------


def test_pool_gives_each_name_its_own_address_upward_and_maps_it_back():
    pool = NamePool("127.100.0.0/16", ttl=60, clock=Clock())
    assert pool.host_address == "127.100.0.1"
    assert pool.capacity == 65533
    assert pool.address_for("api.example.test") == "127.100.0.2"
    assert pool.address_for("API.Example.Test.") == "127.100.0.2"
    assert pool.address_for("cdn.example.test") == "127.100.0.3"
    assert pool.address_for(HOST_NAME) == "127.100.0.1"
    assert pool.name_for("127.100.0.3") == "cdn.example.test"
    assert pool.name_for("127.100.0.1") == HOST_NAME
    assert pool.name_for("127.100.0.9") is None
    assert pool.name_for("not an address") is None
    assert pool.name_for("::1") is None
    assert pool.in_pool("127.100.200.7")
    assert not pool.in_pool("127.0.0.1")
    assert pool.count == 2


def test_pool_never_holds_127_0_0_1_and_must_lie_in_loopback():
    pool = NamePool("127.0.0.0/29", clock=Clock())
    assert pool.host_address == "127.0.0.2"  # .0 is the network's, .1 the sandbox's own loopback
    assert pool.capacity == 4
    assert [pool.address_for(f"n{i}.test") for i in range(4)] == [f"127.0.0.{i}" for i in range(3, 7)]
    for bad in ("10.0.0.0/8", "0.0.0.0/0"):
        with pytest.raises(ValueError, match=r"inside 127\.0\.0\.0/8"):
            NamePool(bad)
    with pytest.raises(ValueError, match="no room"):
        NamePool("127.0.0.0/30")  # .1 is taken, .2 would be the host's: nothing left for a name
    with pytest.raises(ValueError, match="TTL"):
        NamePool(ttl=0)


def test_pool_exhaustion_reuses_the_least_recently_used_expired_entry():
    clock = Clock()
    pool = NamePool("127.100.0.0/29", ttl=60, clock=clock)  # host .1, names .2 to .6
    assert pool.capacity == 5
    for i in range(5):
        pool.address_for(f"n{i}.test")
        clock.now += 1
    with pytest.raises(PoolExhausted) as caught:
        pool.address_for("late.test")  # everything used within its TTL: no address, nothing changed
    assert "exhausted" in str(caught.value)
    assert [pool.name_for(f"127.100.0.{i}") for i in range(2, 7)] == [f"n{i}.test" for i in range(5)]
    clock.now += 60  # n0 expired (61 s ago), n1 exactly 60 s: expired too
    assert pool.address_for("n0.test") == "127.100.0.2"  # asked again: refreshed, now the newest
    assert pool.address_for("late.test") == "127.100.0.3"  # n1's, the least recently used expired one
    assert pool.name_for("127.100.0.3") == "late.test"
    assert pool.address_for("n1.test") == "127.100.0.4"  # n1 gets a fresh address: n2's
    clock.now += 1000
    with pool.hold("127.100.0.5") as name:  # n3, the oldest now, is in use by a connection
        assert name == "n3.test"
        assert pool.address_for("other.test") == "127.100.0.6"  # n4's, not n3's
        assert pool.name_for("127.100.0.5") == "n3.test"
    clock.now += 10
    # n3 was released 10 s ago: it lives another TTL after its last use, so the oldest expired is n0.
    assert pool.address_for("more.test") == "127.100.0.2"
    assert pool.count == 5


def test_hold_refuses_an_address_that_stands_for_no_name():
    clock = Clock()
    pool = NamePool("127.100.0.0/30", ttl=5, clock=clock)  # host .1, one name: .2
    with pytest.raises(LookupError):
        pool.hold("127.100.0.2").__enter__()
    pool.address_for("a.test")
    clock.now += 5
    pool.address_for("b.test")  # takes a.test's address
    with pool.hold("127.100.0.2") as name:
        assert name == "b.test"
    with pool.hold(pool.host_address) as name:
        assert name == HOST_NAME


# --- the server ------------------------------------------------------------------


async def test_allowed_names_get_pool_addresses_and_denied_ones_nothing():
    monitor = FakeMonitor(allowed={"api.example.test", "cdn-a.example.test", "cdn-b.example.test"},
                          addresses={"api.example.test": ["192.0.2.1"], "cdn-a.example.test": ["192.0.2.7"],
                                     "cdn-b.example.test": ["192.0.2.7"]})
    async with running(monitor) as dns_:
        reply = await dns_.ask("api.example.test")
        assert reply.rcode() == dns.rcode.NOERROR
        assert addresses_in(reply) == ["127.100.0.2"]
        assert reply.answer[0].ttl == 60
        assert reply.flags & dns.flags.RA
        again = await dns_.ask("API.example.test.")
        assert addresses_in(again) == ["127.100.0.2"]
        # Two names on one real address: two pool addresses.
        a, b = await dns_.ask("cdn-a.example.test"), await dns_.ask("cdn-b.example.test")
        assert addresses_in(a) == ["127.100.0.3"]
        assert addresses_in(b) == ["127.100.0.4"]
        assert dns_.server.pool.name_for("127.100.0.4") == "cdn-b.example.test"
        # A name no rule allows: NXDOMAIN, never looked up.
        looked_up = list(monitor.looked_up)
        denied = await dns_.ask("evil.example.test")
        assert denied.rcode() == dns.rcode.NXDOMAIN
        assert not denied.answer
        assert monitor.looked_up == looked_up
        record = monitor.records[-1]
        assert (record.name, record.rdtype, record.decision, record.rcode) == (
            "evil.example.test", "A", Decision.DENIED, "NXDOMAIN")
        assert "--allow-resolve" in record.reason
    first = monitor.records[0]
    assert (first.transport, first.name, first.decision, first.answer) == (
        Transport.UDP, "api.example.test", Decision.ALLOWED, "127.100.0.2")


async def test_lookup_outcomes():
    slow = trio.Event()  # never set: a lookup that does not come back

    class Slow(FakeMonitor):
        async def lookup(self, name: str) -> list[str]:
            if name == "slow.example.test":
                await slow.wait()
            return await super().lookup(name)

    monitor = Slow(allowed={"gone.example.test", "flaky.example.test", "rebound.example.test", "bare.example.test",
                            "empty.example.test", "slow.example.test"},
                   failures={"flaky.example.test": ResolveError(socket.EAI_AGAIN, "no reply"),
                             "bare.example.test": ResolveError(EAI_NODATA, "no address"),
                             "rebound.example.test": Denied(Kind.CONNECT, "x", "10.0.0.1 is a private address")},
                   addresses={"empty.example.test": []})
    async with running(monitor, lookup_timeout=0.3) as dns_:
        expected = {"gone.example.test": (dns.rcode.NXDOMAIN, Decision.FAILED),
                    "flaky.example.test": (dns.rcode.SERVFAIL, Decision.FAILED),
                    "bare.example.test": (dns.rcode.NOERROR, Decision.FAILED),
                    "empty.example.test": (dns.rcode.NOERROR, Decision.FAILED),
                    "rebound.example.test": (dns.rcode.NXDOMAIN, Decision.DENIED),
                    "slow.example.test": (dns.rcode.SERVFAIL, Decision.FAILED)}
        for name, (rcode, decision) in expected.items():
            reply = await dns_.ask(name)
            assert (reply.rcode(), reply.answer) == (rcode, []), name
            assert (monitor.records[-1].name, monitor.records[-1].decision) == (name, decision)
        assert "private address" in monitor.records[-2].reason
        assert "0.3 s" in monitor.records[-1].reason
    assert dns_.server.pool.count == 0  # no name that failed took an address


async def test_other_record_types_host_arca_internal_localhost_and_ptr():
    monitor = FakeMonitor(allowed={"api.example.test"}, addresses={"api.example.test": ["192.0.2.1", "2001:db8::1"]})
    async with running(monitor) as dns_:
        for rdtype in ("AAAA", "MX", "TXT", "SRV", "ANY"):
            reply = await dns_.ask("api.example.test", rdtype)
            assert (reply.rcode(), reply.answer) == (dns.rcode.NOERROR, []), rdtype  # NODATA
        assert "IPv4" in monitor.records[0].reason
        assert dns_.server.pool.count == 0  # only an A query hands out an address
        assert addresses_in(await dns_.ask("api.example.test")) == ["127.100.0.2"]
        # host.arca.internal: always there, with the fixed address; no rule is asked.
        looked_up = list(monitor.looked_up)
        assert addresses_in(await dns_.ask(HOST_NAME)) == ["127.100.0.1"]
        assert (await dns_.ask(HOST_NAME, "AAAA")).answer == []
        assert addresses_in(await dns_.ask("localhost", "A")) == ["127.0.0.1"]
        assert addresses_in(await dns_.ask("db.localhost", "AAAA")) == ["::1"]
        assert monitor.looked_up == looked_up
        # PTR: pool addresses name their names; loopback is localhost; the rest is unknown.
        for address, name in (("127.100.0.2", "api.example.test."), ("127.100.0.1", f"{HOST_NAME}."),
                              ("127.0.0.1", "localhost."), ("::1", "localhost.")):
            reply = await dns_.ask(dns.reversename.from_address(address), "PTR")
            assert addresses_in(reply) == [name], address
        for address in ("127.100.0.77", "192.0.2.1", "2001:db8::1"):
            reply = await dns_.ask(dns.reversename.from_address(address), "PTR")
            assert reply.rcode() == dns.rcode.NXDOMAIN, address
        assert "nothing is forwarded" in monitor.records[-1].reason
        reply = await dns_.ask("100.127.in-addr.arpa", "PTR")  # not a whole address
        assert reply.rcode() == dns.rcode.NXDOMAIN
        reply = await dns_.ask(dns.reversename.from_address("127.100.0.2"), "TXT")
        assert (reply.rcode(), reply.answer) == (dns.rcode.NOERROR, [])
    assert all(record.name != "" for record in monitor.records)


async def test_tcp_answers_several_queries_per_connection_and_ipv6_sockets_serve_too():
    monitor = FakeMonitor(allowed={"a.example.test", "b.example.test"},
                          addresses={"a.example.test": ["192.0.2.1"], "b.example.test": ["192.0.2.2"]})
    async with running(monitor) as dns_:
        assert addresses_in(await dns_.ask("a.example.test", tcp=True)) == ["127.100.0.2"]
        with socket.create_connection(dns_.tcp, timeout=5) as client:
            queries = [dns.message.make_query(name, "A") for name in ("b.example.test", "a.example.test", "x.test")]
            # All three in one write: pipelined, answered in order.
            client.sendall(b"".join(len(w).to_bytes(2, "big") + w for w in (q.to_wire() for q in queries)))
            replies = [await trio.to_thread.run_sync(_read_tcp_message, client) for _ in queries]
            assert [r.id for r in replies] == [q.id for q in queries]
            assert [addresses_in(r) for r in replies[:2]] == [["127.100.0.3"], ["127.100.0.2"]]
            assert replies[2].rcode() == dns.rcode.NXDOMAIN
        assert {record.transport for record in monitor.records} == {Transport.TCP}
    async with running(monitor, host="::1") as dns_:
        assert addresses_in(await dns_.ask("a.example.test")) == ["127.100.0.2"]
        assert addresses_in(await dns_.ask("a.example.test", tcp=True)) == ["127.100.0.2"]


def _ended(client: socket.socket) -> bool:
    """Whether the server ended the connection: end of stream, or a reset for data it left unread."""
    try:
        return client.recv(10) == b""
    except ConnectionResetError:
        return True


def _read_tcp_message(client: socket.socket) -> dns.message.Message:
    prefix = _read_exactly(client, 2)
    return dns.message.from_wire(_read_exactly(client, int.from_bytes(prefix, "big")))


def _read_exactly(client: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = client.recv(size - len(data))
        if not chunk:
            raise EOFError(f"end of stream after {len(data)} of {size} bytes")
        data += chunk
    return data


async def test_tcp_connections_are_bounded_in_time_queries_and_number():
    monitor = FakeMonitor(allowed={"a.example.test"}, addresses={"a.example.test": ["192.0.2.1"]})
    query = dns.message.make_query("a.example.test", "A").to_wire()
    framed = len(query).to_bytes(2, "big") + query
    limits = Limits(tcp_max_queries=2, tcp_idle_timeout=0.3, max_tcp_connections=2)
    async with running(monitor, limits=limits) as dns_:
        with socket.create_connection(dns_.tcp, timeout=5) as client:
            client.sendall(framed * 3)
            assert addresses_in(await trio.to_thread.run_sync(_read_tcp_message, client)) == ["127.100.0.2"]
            await trio.to_thread.run_sync(_read_tcp_message, client)
            assert await trio.to_thread.run_sync(_ended, client)  # closed after two (reset: the third is unread)
        with socket.create_connection(dns_.tcp, timeout=5) as client:
            client.sendall(framed[:5])  # half a message, then silence: closed after the idle time
            with trio.fail_after(3):
                assert await trio.to_thread.run_sync(client.recv, 10) == b""
        with socket.create_connection(dns_.tcp, timeout=5) as client:
            client.sendall(b"\x00\x05hello")  # a message that is no query: no answer, connection closed
            assert await trio.to_thread.run_sync(client.recv, 10) == b""
        held = [socket.create_connection(dns_.tcp, timeout=5) for _ in range(2)]
        await trio.sleep(0.05)  # let the server take both
        with socket.create_connection(dns_.tcp, timeout=5) as third:
            assert await trio.to_thread.run_sync(third.recv, 10) == b""  # over the limit: closed at once
        for client in held:
            client.close()
        assert addresses_in(await dns_.ask("a.example.test", tcp=True)) == ["127.100.0.2"]


async def test_malformed_queries_get_formerr_or_nothing_and_never_stop_the_server():
    monitor = FakeMonitor(allowed={"a.example.test"}, addresses={"a.example.test": ["192.0.2.1"]})
    async with running(monitor) as dns_:
        server = dns_.server
        assert await server.answer(b"") is None
        assert await server.answer(b"\x12\x34\x01") is None  # shorter than a header: dropped
        good = dns.message.make_query("a.example.test", "A")
        response = dns.message.make_response(good).to_wire()
        assert await server.answer(response) is None  # a response, not a query: dropped (no loops)
        reply = await server.answer(good.to_wire()[:14])  # a header promising a question that is cut
        assert reply is not None
        assert reply[:2] == good.to_wire()[:2]
        assert dns.message.from_wire(reply).rcode() == dns.rcode.FORMERR
        two = dns.message.make_query("a.example.test", "A")
        two.question.append(dns.message.make_query("b.example.test", "A").question[0])
        assert dns.message.from_wire(await server.answer(two.to_wire())).rcode() == dns.rcode.FORMERR
        notify = dns.message.make_query("a.example.test", "SOA")
        notify.set_opcode(dns.opcode.NOTIFY)
        assert dns.message.from_wire(await server.answer(notify.to_wire())).rcode() == dns.rcode.NOTIMP
        chaos = dns.message.make_query("version.bind", "TXT", rdclass=dns.rdataclass.CH)
        assert dns.message.from_wire(await server.answer(chaos.to_wire())).rcode() == dns.rcode.REFUSED
        future = dns.message.make_query("a.example.test", "A", use_edns=1)
        assert dns.message.from_wire(await server.answer(future.to_wire())).rcode() == dns.rcode.BADVERS
        bad_name = dns.message.make_query("under_score-.example.test", "A")
        assert dns.message.from_wire(await server.answer(bad_name.to_wire())).rcode() == dns.rcode.NXDOMAIN
        # Random bytes and bit flips of a real query: every one is answered or dropped, none raises.
        rng = random.Random(13)
        wire = good.to_wire()
        for _ in range(1500):
            if rng.random() < 0.5:
                data = rng.randbytes(rng.randrange(0, 80))
            else:
                flipped = bytearray(wire)
                for _ in range(rng.randrange(1, 6)):
                    flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
                data = bytes(flipped)
            reply = await server.answer(data)
            assert reply is None or reply[:2] == data[:2]
        # Over the network too, and the server still answers afterwards.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for junk in (b"", b"\xff" * 3, b"\x00" * 12, rng.randbytes(600)):
                client.sendto(junk, dns_.udp)
        assert addresses_in(await dns_.ask("a.example.test")) == ["127.100.0.2"]
        assert addresses_in(await dns_.ask("a.example.test", use_edns=0, payload=1232)) == ["127.100.0.2"]


async def test_pool_exhaustion_answers_servfail_until_an_entry_expires():
    clock = Clock()
    pool = NamePool("127.100.0.0/30", ttl=30, clock=clock)  # host .1, one name: .2
    monitor = FakeMonitor(allowed={"a.example.test", "b.example.test"},
                          addresses={"a.example.test": ["192.0.2.1"], "b.example.test": ["192.0.2.2"]})
    async with running(monitor, pool) as dns_:
        assert addresses_in(await dns_.ask("a.example.test")) == ["127.100.0.2"]
        assert (await dns_.ask("b.example.test")).rcode() == dns.rcode.SERVFAIL
        assert "exhausted" in monitor.records[-1].reason
        clock.now += 29
        assert addresses_in(await dns_.ask("a.example.test")) == ["127.100.0.2"]  # refreshed
        clock.now += 29
        assert (await dns_.ask("b.example.test")).rcode() == dns.rcode.SERVFAIL
        clock.now += 1  # 30 s since a's last answer: its entry may go
        assert addresses_in(await dns_.ask("b.example.test")) == ["127.100.0.2"]
        reply = await dns_.ask(dns.reversename.from_address("127.100.0.2"), "PTR")
        assert addresses_in(reply) == ["b.example.test."]


async def test_policy_decisions_resolve_through_the_monitors_resolver_and_filter_rebinding(tmp_path):
    zone = {"api.example.test": [("A", "192.0.2.1", 300)], "inside.example.test": [("A", "10.0.0.1", 300)],
            "gone.example.test": []}
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 db.example.test\n")
    policy = Policy.build({Kind.CONNECT: ["*.example.test:443", "127.0.0.1:5432"]})
    records: list[QueryRecord] = []
    async with dns_server(zone) as (host, port, upstream):
        resolver = Resolver(hosts_file=str(hosts), nameserver=(host, port))
        async with running(FakeMonitor()) as dns_:
            dns_.server.decisions = policy_decisions(policy, resolver, records.append)
            assert addresses_in(await dns_.ask("api.example.test")) == ["127.100.0.2"]
            assert addresses_in(await dns_.ask("db.example.test")) == ["127.100.0.3"]  # the hosts file's loopback
            reply = await dns_.ask("inside.example.test")
            assert reply.rcode() == dns.rcode.NXDOMAIN
            assert records[-1].decision is Decision.DENIED
            assert "10.0.0.1 is a private address (RFC 1918) that DNS gave for inside.example.test" in records[-1].reason
            assert (await dns_.ask("gone.example.test")).rcode() == dns.rcode.NOERROR  # the zone has it, no address
            asked = upstream.count()
            assert (await dns_.ask("other.test")).rcode() == dns.rcode.NXDOMAIN
            assert records[-1].decision is Decision.DENIED
            assert upstream.count() == asked  # a denied name never reaches any DNS server


async def test_the_largest_answers_fit_in_a_classic_udp_message():
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 56, "test"])
    assert len(longest) == 253
    monitor = FakeMonitor(allowed={longest}, addresses={longest: ["192.0.2.1"]})
    async with running(monitor) as dns_:
        for name, rdtype in ((longest, "A"), (dns.reversename.from_address("127.100.0.2"), "PTR")):
            query = dns.message.make_query(name, rdtype, use_edns=0, payload=4096)
            reply = await dns_.server.answer(query.to_wire())
            assert reply is not None
            assert len(reply) <= 512
            assert dns.message.from_wire(reply).answer, rdtype
        assert addresses_in(await dns_.ask(dns.reversename.from_address("127.100.0.2"), "PTR")) == [longest + "."]


def test_getaddrinfo_and_getent_in_the_sandbox_ask_this_server(tmp_path):
    # getaddrinfo's AI_ADDRCONFIG asks for an address other than loopback, as the sandbox has.
    run_in_netns(_getaddrinfo_and_getent, tmp_path, "192.0.2.100/32")


async def _getaddrinfo_and_getent(tmp):
    # In an empty namespace, port 53 on 127.0.0.1 is ours; resolv.conf is bind-mounted in a mount
    # namespace of the programs' own, as the sandbox would do.
    resolv_conf = os.path.join(tmp, "resolv.conf")
    await trio.Path(resolv_conf).write_text("nameserver 127.0.0.1\n")
    monitor = FakeMonitor(allowed={"api.example.test"}, addresses={"api.example.test": ["192.0.2.1"]})
    udp, tcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket()
    udp.bind(("127.0.0.1", 53))
    tcp.bind(("127.0.0.1", 53))
    tcp.listen()

    async def in_sandbox(*command: str) -> subprocess.CompletedProcess[bytes]:
        script = f'mount --bind {resolv_conf} /etc/resolv.conf; exec "$@"'
        return await trio.run_process(["unshare", "-m", "--", "sh", "-ec", script, "sh", *command],
                                      capture_stdout=True, check=False)

    async with trio.open_nursery() as nursery:
        await nursery.start(SandboxDNS(monitor.decisions(), NamePool(clock=Clock())).serve, [udp], [tcp])
        result = await in_sandbox("getent", "ahostsv4", "api.example.test")
        assert result.returncode == 0
        assert result.stdout.split()[0] == b"127.100.0.2"
        result = await in_sandbox("getent", "hosts", HOST_NAME)
        assert result.stdout.split()[:2] == [b"127.100.0.1", HOST_NAME.encode()]
        result = await in_sandbox("getent", "hosts", "evil.example.test")
        assert result.returncode == 2  # not found, at once
        probe = ("import socket\n"
                 "print(sorted({a[4][0] for a in socket.getaddrinfo('api.example.test', 443)}))\n"
                 "try:\n    socket.getaddrinfo('evil.example.test', 443)\n"
                 "except socket.gaierror as e:\n    print(e.errno == socket.EAI_NONAME)\n")
        result = await in_sandbox(sys.executable, "-c", probe)
        assert result.stdout.decode().split() == ["['127.100.0.2']", "True"]
        nursery.cancel_scope.cancel()
    denied = [r for r in monitor.records if r.name == "evil.example.test"]
    assert denied
    assert all(r.decision is Decision.DENIED for r in denied)
    assert monitor.looked_up.count("evil.example.test") == 0

"""The monitor's resolver: literals, hosts file, DNS through a loopback test server, cache, errors.

Every Resolver here has a hosts file of its own (or none) and either the test
server as nameserver or DNS off, so no test reads /etc/resolv.conf or sends a
packet off loopback. Tests about TTLs use pytest-trio's ``mock_clock``: the
cache keeps time with ``trio.current_time()``, so jumping the clock expires
entries without sleeping.
"""

from __future__ import annotations

import os
import socket

import pytest
import trio

from arca_control.protocol.wire import Endpoint
from arca_monitor.resolver import (
    DEFAULT_NEGATIVE_TTL,
    EAI_ADDRFAMILY,
    EAI_NODATA,
    MAX_TTL,
    ResolveError,
    Resolver,
)

from .dns_server import dns_server

STREAM, DGRAM = socket.SOCK_STREAM, socket.SOCK_DGRAM
V4, V6 = socket.AF_INET, socket.AF_INET6

ZONE = {
    "www.example.test": [("A", "192.0.2.1", 300), ("AAAA", "2001:db8::1", 300)],
    "multi.example.test": [("A", "192.0.2.10", 300), ("A", "192.0.2.11", 300), ("A", "192.0.2.10", 300)],
    "v4only.example.test": [("A", "192.0.2.4", 300)],
    "alias.example.test": [("CNAME", "www.example.test", 60)],
    "_svc.example.test": [("A", "192.0.2.5", 300)],
    "short.example.test": [("A", "192.0.2.6", 5)],
    "long.example.test": [("A", "192.0.2.7", 86400)],
}


def dns_resolver(host: str, port: int, **options) -> Resolver:
    options.setdefault("hosts_file", None)
    options.setdefault("timeout", 1.0)
    options.setdefault("attempts", 1)
    return Resolver(nameserver=(host, port), **options)


def closed_udp_port() -> int:
    """A loopback UDP port nothing listens on (the kernel answers ICMP port unreachable)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(autouse=True)
def no_system_resolver(monkeypatch):
    """Fail any use of the system resolver. (trio still calls getaddrinfo with
    AI_NUMERICHOST to parse IP literals: that consults nothing and is allowed.)"""
    real_getaddrinfo = socket.getaddrinfo

    def numeric_only(host, port, family=0, type=0, proto=0, flags=0):
        assert flags & socket.AI_NUMERICHOST, f"system resolver asked for {host!r}"
        return real_getaddrinfo(host, port, family, type, proto, flags)

    def refuse(*args):
        raise AssertionError(f"system resolver asked: {args!r}")

    monkeypatch.setattr(socket, "getaddrinfo", numeric_only)
    for name in ("gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo"):
        monkeypatch.setattr(socket, name, refuse)


async def resolve_error(resolver: Resolver, name: str, **options) -> ResolveError:
    with pytest.raises(ResolveError) as caught:
        await resolver.resolve(name, **options)
    return caught.value


# Literals


async def test_ipv4_literal_resolves_to_itself():
    resolver = Resolver(hosts_file=None, dns=False)
    assert await resolver.resolve("127.0.0.1", 80) == [
        (V4, STREAM, Endpoint("127.0.0.1", 80)),
        (V4, DGRAM, Endpoint("127.0.0.1", 80)),
    ]
    assert await resolver.resolve("192.0.2.1", type=DGRAM) == [(V4, DGRAM, Endpoint("192.0.2.1", 0))]


async def test_ipv6_literals_are_written_as_inet_ntop_writes_them():
    resolver = Resolver(hosts_file=None, dns=False)
    assert await resolver.resolve("::1", 443, type=STREAM) == [(V6, STREAM, Endpoint("::1", 443))]
    assert await resolver.resolve("2001:DB8:0:0::1", type=STREAM) == [(V6, STREAM, Endpoint("2001:db8::1", 0))]
    assert await resolver.resolve("fe80::1%2", 22, family=V6, type=STREAM) == [
        (V6, STREAM, Endpoint("fe80::1%2", 22))
    ]
    # A scope may name an interface; it comes back as its number. A zero scope is no scope.
    index = socket.if_nametoindex("lo")
    assert await resolver.resolve("fe80::1%lo", type=STREAM) == [(V6, STREAM, Endpoint(f"fe80::1%{index}", 0))]
    assert await resolver.resolve("fe80::1%0", type=STREAM) == [(V6, STREAM, Endpoint("fe80::1", 0))]
    assert (await resolve_error(resolver, "fe80::1%no-such-interface0")).eai == socket.EAI_NONAME


async def test_literal_of_the_other_family_is_eai_addrfamily():
    resolver = Resolver(hosts_file=None, dns=False)
    assert (await resolve_error(resolver, "127.0.0.1", family=V6)).eai == EAI_ADDRFAMILY
    assert (await resolve_error(resolver, "::1", family=V4)).eai == EAI_ADDRFAMILY


async def test_bad_family_type_or_port():
    resolver = Resolver(hosts_file=None, dns=False)
    assert (await resolve_error(resolver, "127.0.0.1", family=socket.AF_UNIX)).eai == socket.EAI_FAMILY
    assert (await resolve_error(resolver, "127.0.0.1", type=socket.SOCK_RAW)).eai == socket.EAI_SOCKTYPE
    assert (await resolve_error(resolver, "127.0.0.1", port=65536)).eai == socket.EAI_SERVICE
    assert (await resolve_error(resolver, "127.0.0.1", port=-1)).eai == socket.EAI_SERVICE


# Hosts file

HOSTS = """\
# a comment line
127.0.0.1   localhost
::1         localhost ip6-localhost   # trailing comment
192.0.2.20  Box.Example.TEST box
192.0.2.21  box
2001:db8::20 box
not-an-address  ignored.test
192.0.2.22
10.0.0.1    only4.test
"""


@pytest.fixture
def hosts_file(tmp_path):
    path = tmp_path / "hosts"
    path.write_text(HOSTS)
    return path


async def test_hosts_file_names_aliases_and_order(hosts_file):
    resolver = Resolver(hosts_file=str(hosts_file), dns=False)
    assert await resolver.resolve("localhost", 80, type=STREAM) == [
        (V6, STREAM, Endpoint("::1", 80)),
        (V4, STREAM, Endpoint("127.0.0.1", 80)),
    ]
    # Names are case-insensitive and may end with a dot; IPv6 first, then IPv4 in line order.
    for name in ("box", "BOX", "box."):
        assert [endpoint.host for _, _, endpoint in await resolver.resolve(name, type=STREAM)] == [
            "2001:db8::20",
            "192.0.2.20",
            "192.0.2.21",
        ]
    assert await resolver.resolve("box.example.test", family=V4, type=DGRAM) == [
        (V4, DGRAM, Endpoint("192.0.2.20", 0))
    ]
    assert await resolver.resolve("ip6-localhost", type=STREAM) == [(V6, STREAM, Endpoint("::1", 0))]
    assert resolver.names_for("192.0.2.20") == {"box.example.test", "box"}
    assert resolver.names_for("2001:DB8::20") == {"box"}
    # Lines without a valid address or without a name are skipped.
    assert (await resolve_error(resolver, "ignored.test")).eai == socket.EAI_NONAME


async def test_hosts_file_is_read_again_when_it_changes(hosts_file):
    resolver = Resolver(hosts_file=str(hosts_file), dns=False)
    assert (await resolver.resolve("only4.test", type=STREAM))[0][2].host == "10.0.0.1"
    status = os.stat(hosts_file)
    hosts_file.write_text(HOSTS.replace("10.0.0.1", "10.0.0.2"))
    # Same size; make sure the mtime moves even on a filesystem with coarse timestamps.
    os.utime(hosts_file, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000_000))
    assert (await resolver.resolve("only4.test", type=STREAM))[0][2].host == "10.0.0.2"
    hosts_file.unlink()
    assert (await resolve_error(resolver, "only4.test")).eai == socket.EAI_NONAME
    hosts_file.write_text("10.0.0.3 only4.test\n")
    assert (await resolver.resolve("only4.test", type=STREAM))[0][2].host == "10.0.0.3"


async def test_hosts_file_without_the_family_asked_for_falls_back_to_dns(hosts_file):
    zone = {"only4.test": [("AAAA", "2001:db8::4", 300)]}
    async with dns_server(zone) as (host, port, server):
        resolver = dns_resolver(host, port, hosts_file=str(hosts_file))
        assert await resolver.resolve("only4.test", family=V4, type=STREAM) == [
            (V4, STREAM, Endpoint("10.0.0.1", 0))
        ]
        assert server.count() == 0
        assert await resolver.resolve("only4.test", family=V6, type=STREAM) == [
            (V6, STREAM, Endpoint("2001:db8::4", 0))
        ]
        assert server.queries == [("only4.test", "AAAA")]


async def test_dns_off_answers_only_literals_and_hosts(hosts_file):
    async with dns_server(ZONE) as (host, port, server):
        resolver = dns_resolver(host, port, hosts_file=str(hosts_file), dns=False)
        error = await resolve_error(resolver, "www.example.test")
        assert error.eai == socket.EAI_NONAME
        assert "DNS is off" in str(error)
        assert server.count() == 0


# DNS


async def test_a_and_aaaa_ipv6_first_both_socket_types():
    async with dns_server(ZONE) as (host, port, server):
        resolver = dns_resolver(host, port)
        assert await resolver.resolve("www.example.test", 8080) == [
            (V6, STREAM, Endpoint("2001:db8::1", 8080)),
            (V6, DGRAM, Endpoint("2001:db8::1", 8080)),
            (V4, STREAM, Endpoint("192.0.2.1", 8080)),
            (V4, DGRAM, Endpoint("192.0.2.1", 8080)),
        ]
        assert sorted(server.queries) == [("www.example.test", "A"), ("www.example.test", "AAAA")]


async def test_family_filter_asks_only_for_that_family():
    async with dns_server(ZONE) as (host, port, server):
        resolver = dns_resolver(host, port)
        assert await resolver.resolve("www.example.test", 80, family=V4, type=STREAM) == [
            (V4, STREAM, Endpoint("192.0.2.1", 80))
        ]
        assert server.queries == [("www.example.test", "A")]
        assert await resolver.resolve("www.example.test", 80, family=V6, type=DGRAM) == [
            (V6, DGRAM, Endpoint("2001:db8::1", 80))
        ]
        assert server.queries[1:] == [("www.example.test", "AAAA")]


async def test_several_addresses_keep_answer_order_without_duplicates():
    async with dns_server(ZONE) as (host, port, _):
        resolver = dns_resolver(host, port)
        result = await resolver.resolve("multi.example.test", family=V4, type=STREAM)
        assert [endpoint.host for _, _, endpoint in result] == ["192.0.2.10", "192.0.2.11"]


async def test_cname_is_followed_and_underscores_are_allowed():
    async with dns_server(ZONE) as (host, port, _):
        resolver = dns_resolver(host, port)
        assert await resolver.resolve("alias.example.test", family=V4, type=STREAM) == [
            (V4, STREAM, Endpoint("192.0.2.1", 0))
        ]
        assert await resolver.resolve("_svc.example.test", family=V4, type=STREAM) == [
            (V4, STREAM, Endpoint("192.0.2.5", 0))
        ]
        assert resolver.names_for("192.0.2.1") == {"alias.example.test"}


async def test_name_with_only_the_other_family():
    async with dns_server(ZONE) as (host, port, _):
        resolver = dns_resolver(host, port)
        assert (await resolve_error(resolver, "v4only.example.test", family=V6)).eai == EAI_NODATA
        # Asked for both, the one family that exists answers.
        assert await resolver.resolve("v4only.example.test", type=STREAM) == [
            (V4, STREAM, Endpoint("192.0.2.4", 0))
        ]


async def test_nxdomain_is_eai_noname():
    async with dns_server(ZONE) as (host, port, _):
        resolver = dns_resolver(host, port)
        error = await resolve_error(resolver, "nothing.example.test")
        assert error.eai == socket.EAI_NONAME
        assert "no such name" in str(error)


async def test_servfail_and_refused_are_eai_fail_and_not_cached():
    async with dns_server(ZONE, servfail={"broken.test"}, refused={"refused.test"}) as (host, port, server):
        resolver = dns_resolver(host, port, attempts=2)
        error = await resolve_error(resolver, "broken.test", family=V4)
        assert error.eai == socket.EAI_FAIL
        assert "SERVFAIL" in str(error)
        # A server that answered is not asked the same question again on a second attempt.
        assert server.count("broken.test") == 1
        assert (await resolve_error(resolver, "broken.test", family=V4)).eai == socket.EAI_FAIL
        assert server.count("broken.test") == 2
        error = await resolve_error(resolver, "refused.test")
        assert error.eai == socket.EAI_FAIL
        assert "REFUSED" in str(error)


async def test_malformed_reply_is_eai_fail():
    async with dns_server(ZONE, malformed={"garbage.test"}) as (host, port, _):
        resolver = dns_resolver(host, port)
        error = await resolve_error(resolver, "garbage.test")
        assert error.eai == socket.EAI_FAIL
        assert "malformed" in str(error)


async def test_no_reply_is_eai_again_after_every_attempt():
    async with dns_server(ZONE, silent={"slow.test"}) as (host, port, server):
        resolver = dns_resolver(host, port, timeout=0.2, attempts=2)
        started = trio.current_time()
        error = await resolve_error(resolver, "slow.test", family=V4)
        assert error.eai == socket.EAI_AGAIN
        assert 0.4 <= trio.current_time() - started < 2
        assert server.queries == [("slow.test", "A"), ("slow.test", "A")]


async def test_closed_port_is_eai_again_at_once():
    resolver = dns_resolver("127.0.0.1", closed_udp_port(), timeout=5, attempts=2)
    with trio.fail_after(2):
        error = await resolve_error(resolver, "www.example.test")
    assert error.eai == socket.EAI_AGAIN
    assert "refused" in str(error)


# Name checks: all before any query.

BAD_NAMES = [
    "",
    ".",
    "a..b",
    ".leading.test",
    "trailing.test..",
    "-bad-.example",
    "bad-.example",
    "-bad.example",
    "x" * 64 + ".test",
    ("a" * 63 + ".") * 3 + "b" * 62 + ".",  # 254 bytes and the trailing dot
    ("a" * 63 + ".") * 3 + "b" * 62,  # 254 bytes
    "space in.test",
    "star*.test",
    "slash/.test",
    "back\\slash.test",
    "nul\x00.test",
    "exämple.test",
    "\U0001f600" * 100 + ".test",
    "127.1",
    "1.2.3.04",
    "1.2.3.4%1",
    "10.0.0.256",
]


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_bad_names_are_eai_noname_before_any_query(name):
    async with dns_server(ZONE) as (host, port, server):
        resolver = dns_resolver(host, port)
        error = await resolve_error(resolver, name)
        assert error.eai == socket.EAI_NONAME
        assert len(str(error).encode()) < 255
        assert server.count() == 0


async def test_longest_names_are_asked():
    async with dns_server(ZONE) as (host, port, server):
        resolver = dns_resolver(host, port)
        longest = ("a" * 63 + ".") * 3 + "b" * 61  # 253 bytes
        for name in (longest, longest + ".", "x" * 63 + ".test", "xn--bcher-kva.test", "0-9.test", "a"):
            assert (await resolve_error(resolver, name, family=V4)).eai == socket.EAI_NONAME
        # The name with and without its trailing dot is one name, asked once.
        assert server.count() == 5


# Cache


async def test_second_lookup_is_answered_from_the_cache():
    async with dns_server(ZONE) as (host, port, server):
        resolver = dns_resolver(host, port)
        first = await resolver.resolve("www.example.test")
        assert server.count() == 2
        # Case and the trailing dot do not matter; the port is the caller's.
        assert await resolver.resolve("WWW.Example.Test.") == first
        assert [e.port for _, _, e in await resolver.resolve("www.example.test", 99)] == [99] * 4
        assert server.count() == 2
        assert resolver.names_for("2001:db8::1") == {"www.example.test"}
        assert resolver.names_for("192.0.2.99") == set()
        assert resolver.names_for("not an address") == set()


async def test_cache_entry_expires_with_its_ttl(mock_clock):
    async with dns_server(ZONE) as (host, port, server):
        resolver = dns_resolver(host, port)
        await resolver.resolve("short.example.test", family=V4)
        mock_clock.jump(4.5)
        await resolver.resolve("short.example.test", family=V4)
        assert server.count() == 1
        mock_clock.jump(1)
        await resolver.resolve("short.example.test", family=V4)
        assert server.count() == 2


async def test_long_ttls_are_capped(mock_clock):
    async with dns_server(ZONE) as (host, port, server):
        resolver = dns_resolver(host, port)
        await resolver.resolve("long.example.test", family=V4)
        mock_clock.jump(MAX_TTL - 1)
        await resolver.resolve("long.example.test", family=V4)
        assert server.count() == 1
        mock_clock.jump(2)
        await resolver.resolve("long.example.test", family=V4)
        assert server.count() == 2


async def test_cname_ttl_bounds_the_answer(mock_clock):
    async with dns_server(ZONE) as (host, port, server):
        resolver = dns_resolver(host, port)
        await resolver.resolve("alias.example.test", family=V4)
        mock_clock.jump(61)
        await resolver.resolve("alias.example.test", family=V4)
        assert server.count() == 2


async def test_nxdomain_and_nodata_are_cached_for_the_soa_negative_ttl(mock_clock):
    async with dns_server(ZONE, negative_ttl=10) as (host, port, server):
        resolver = dns_resolver(host, port)
        for _ in range(2):
            assert (await resolve_error(resolver, "nothing.example.test")).eai == socket.EAI_NONAME
            assert (await resolve_error(resolver, "v4only.example.test", family=V6)).eai == EAI_NODATA
        assert server.count() == 3
        mock_clock.jump(11)
        assert (await resolve_error(resolver, "nothing.example.test")).eai == socket.EAI_NONAME
        assert server.count() == 5


async def test_negative_answer_without_soa_is_cached_briefly(mock_clock):
    async with dns_server(ZONE, soa=False) as (host, port, server):
        resolver = dns_resolver(host, port)
        await resolve_error(resolver, "nothing.example.test", family=V4)
        mock_clock.jump(DEFAULT_NEGATIVE_TTL - 1)
        await resolve_error(resolver, "nothing.example.test", family=V4)
        assert server.count() == 1
        mock_clock.jump(2)
        await resolve_error(resolver, "nothing.example.test", family=V4)
        assert server.count() == 2


async def test_cache_evicts_the_least_recently_used():
    async with dns_server(ZONE) as (host, port, server):
        resolver = dns_resolver(host, port, cache_size=2)

        async def look_up(name: str) -> None:
            await resolver.resolve(f"{name}.example.test", family=V4)

        await look_up("www")
        await look_up("multi")
        await look_up("www")  # now the most recently used
        assert server.count() == 2
        await look_up("v4only")  # evicts multi
        await look_up("www")
        assert server.count() == 3
        await look_up("multi")
        assert server.count() == 4
        assert server.count("www.example.test") == 1


async def test_cache_size_zero_caches_nothing():
    async with dns_server(ZONE) as (host, port, server):
        resolver = dns_resolver(host, port, cache_size=0)
        for _ in range(2):
            await resolver.resolve("www.example.test", family=V4)
        assert server.count() == 2


# Concurrency


async def test_unanswered_lookup_does_not_hold_up_others():
    async with dns_server(ZONE, silent={"slow.test"}) as (host, port, _):
        resolver = dns_resolver(host, port, timeout=1.5)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(resolve_error, resolver, "slow.test")
            await trio.sleep(0.05)
            with trio.fail_after(0.5):
                assert (await resolver.resolve("www.example.test", family=V4))[0][2].host == "192.0.2.1"
            nursery.cancel_scope.cancel()


async def test_concurrent_lookups_of_one_name_share_a_query():
    async with dns_server(ZONE, silent={"slow.test"}) as (host, port, server):
        resolver = dns_resolver(host, port, timeout=0.3)
        errors = []

        async def look_up():
            errors.append(await resolve_error(resolver, "slow.test", family=V4))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(look_up)
        assert [error.eai for error in errors] == [socket.EAI_AGAIN] * 5
        assert server.count() == 1


async def test_waiters_ask_again_when_the_query_owner_is_cancelled():
    async with dns_server(ZONE, silent={"slow.test"}) as (host, port, server):
        resolver = dns_resolver(host, port, timeout=0.3)
        errors = []

        async def waiter():
            errors.append(await resolve_error(resolver, "slow.test", family=V4))

        async with trio.open_nursery() as nursery:
            with trio.move_on_after(0.1):
                async with trio.open_nursery() as owner:
                    owner.start_soon(resolver.resolve, "slow.test", None, V4)
                    await trio.lowlevel.checkpoint()
                    nursery.start_soon(waiter)
                    await trio.sleep_forever()
        assert [error.eai for error in errors] == [socket.EAI_AGAIN]
        assert server.count() == 2


def test_constructor_checks_its_arguments():
    with pytest.raises(ValueError, match="nameserver must be"):
        Resolver(nameserver=("dns.example", 53))
    with pytest.raises(ValueError, match="nameserver must be"):
        Resolver(nameserver=("127.0.0.1", 0))
    with pytest.raises(ValueError, match="attempts >= 1"):
        Resolver(attempts=0)

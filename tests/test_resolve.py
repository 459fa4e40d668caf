"""Resolve and connect by name, through the monitor: hosts file, cache, a DNS server of the test's own."""

from __future__ import annotations

import socket

import pytest
import trio

import arca_control
from arca_control.protocol.wire import Endpoint

from .conftest import LOOPBACK_RULES, wait_until
from .dns_server import dns_server

ZONE = {
    "db.internal": [("AAAA", "::1", 300), ("A", "127.0.0.1", 300)],
    "v4.internal": [("A", "127.0.0.2", 300)],
}


def monitor_args(port: int, tmp_path, hosts: str = "") -> tuple[str, ...]:
    hosts_file = tmp_path / "hosts"
    hosts_file.write_text(hosts)
    return ("--resolver", f"127.0.0.1:{port}", "--hosts-file", str(hosts_file),
            "--allow-resolve", "*.internal", *LOOPBACK_RULES)


async def test_resolve_through_the_monitor(tmp_path):
    async with dns_server(ZONE, servfail={"broken.internal"}) as (_, port, server):
        hosts = "127.0.0.9 pinned.internal\n"
        async with arca_control.open_session(*monitor_args(port, tmp_path, hosts)) as session:
            found = await session.resolve("db.internal", 5432, type=socket.SOCK_STREAM)
            assert found == [
                (socket.AF_INET6, socket.SOCK_STREAM, Endpoint("::1", 5432)),
                (socket.AF_INET, socket.SOCK_STREAM, Endpoint("127.0.0.1", 5432)),
            ]
            both = await session.resolve("v4.internal", 53)
            assert {(kind, endpoint) for _, kind, endpoint in both} == {
                (socket.SOCK_STREAM, Endpoint("127.0.0.2", 53)),
                (socket.SOCK_DGRAM, Endpoint("127.0.0.2", 53)),
            }
            only_v4 = await session.resolve("db.internal", family=socket.AF_INET, type=socket.SOCK_STREAM)
            assert only_v4 == [(socket.AF_INET, socket.SOCK_STREAM, Endpoint("127.0.0.1", 0))]
            # The hosts file comes first, and no query is sent for it.
            queries = len(server.queries)
            assert (await session.resolve("pinned.internal", type=socket.SOCK_STREAM))[0][2] == Endpoint("127.0.0.9", 0)
            # The cache, shared by the monitor: a second lookup sends nothing.
            await session.resolve("db.internal", type=socket.SOCK_STREAM)
            assert len(server.queries) == queries
            with pytest.raises(socket.gaierror) as caught:
                await session.resolve("missing.internal")
            assert caught.value.errno == socket.EAI_NONAME
            with pytest.raises(socket.gaierror) as caught:
                await session.resolve("broken.internal")
            assert caught.value.errno == socket.EAI_FAIL
            for bad in ("x" * 250 + ".internal", "-bad-.internal", "a..b.internal"):
                with pytest.raises(socket.gaierror) as caught:
                    await session.resolve(bad)
                assert caught.value.errno == socket.EAI_NONAME
            # A name no rule allows is denied before any lookup, as a PermissionError.
            queries = len(server.queries)
            with pytest.raises(PermissionError) as denied:
                await session.resolve("www.example.test")
            assert "--allow-resolve" in str(denied.value)
            assert len(server.queries) == queries


async def test_timeouts_and_closed_servers_are_eai_again(tmp_path):
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    closed_port = probe.getsockname()[1]
    probe.close()  # nothing answers here: the kernel says "port unreachable"
    async with arca_control.open_session(*monitor_args(closed_port, tmp_path)) as session:
        with trio.fail_after(10), pytest.raises(socket.gaierror) as caught:
            await session.resolve("anything.internal")
        assert caught.value.errno == socket.EAI_AGAIN


async def test_a_slow_lookup_does_not_block_other_requests(tmp_path):
    async with dns_server(ZONE, silent={"slow.internal"}) as (_, port, _server):
        async with arca_control.open_session(*monitor_args(port, tmp_path)) as session:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_expect_again, session)
                with trio.fail_after(1):
                    assert (await session.listen("127.0.0.1", 0)).local.port
                    assert await session.resolve("v4.internal", type=socket.SOCK_STREAM)


async def _expect_again(session):
    with pytest.raises(socket.gaierror):
        await session.resolve("slow.internal")


async def test_connect_by_name_tries_each_address(tmp_path):
    async with dns_server(ZONE) as (_, port, _server):
        async with arca_control.open_session(*monitor_args(port, tmp_path)) as session:
            # db.internal is ::1 then 127.0.0.1; listen on IPv4 only: the IPv6 try is refused.
            listener = await session.listen("127.0.0.1", 0)
            stream = await session.connect("db.internal", listener.local.port)
            assert stream.peer == Endpoint("127.0.0.1", listener.local.port)
            await (await listener.accept()).aclose()
            await stream.aclose()
            await listener.aclose()
            # Nothing listens any more: the last error comes back.
            with pytest.raises(ConnectionRefusedError):
                await session.connect("db.internal", listener.local.port)
            with pytest.raises(socket.gaierror):
                await session.connect("missing.internal", 80)


async def test_bad_literals_and_pending_lookups_keep_the_rules(tmp_path):
    from arca_control.protocol.messages import Resolve

    async with dns_server(ZONE, silent={"slow.internal"}) as (_, port, _server):
        args = (*monitor_args(port, tmp_path), "--max-in-flight", "2")
        async with arca_control.open_session(*args) as session:
            # A malformed scope is an answer (EAI_NONAME), not a dead monitor.
            with pytest.raises(socket.gaierror):
                await session.resolve("fe80::1%nosuchif0")
            async with trio.open_nursery() as nursery:
                # Staged below the session: a lookup it gives up on without a word to the monitor.
                request, frame = session.core.send(Resolve(name="slow.internal"))
                await session.channel.send_bytes(frame)
                session.core.cancel(request.request_id)
                nursery.start_soon(_expect_again, session)
                await trio.sleep(0.2)
                # Two lookups pending: the in-flight limit applies to them too.
                with pytest.raises(BlockingIOError):
                    await session.resolve("v4.internal")
                # A request reusing a pending lookup's id is refused (EBUSY).
                from arca_control.protocol.codec import encode
                await session.channel.send_bytes(encode(Resolve(request_id=request.request_id, name="x.internal")))
                nursery.cancel_scope.cancel()
            assert await session.resolve("127.0.0.1")
            assert session.process is not None
            assert session.process.returncode is None


async def test_each_address_gets_its_own_timeout(tmp_path, stalled_address):
    """The first address never answers; the second, on the same port, does."""
    host, port = stalled_address
    zone = {"two.internal": [("A", host, 300), ("A", "127.0.0.2", 300)]}
    async with dns_server(zone) as (_, dns_port, _server):
        async with arca_control.open_session(*monitor_args(dns_port, tmp_path)) as session:
            listener = await session.listen("127.0.0.2", port)
            with trio.fail_after(5):
                stream = await session.connect("two.internal", port, timeout=0.3)
            assert stream.peer == Endpoint("127.0.0.2", port)
            await (await listener.accept()).aclose()
            await stream.aclose()
            with pytest.raises(socket.gaierror) as caught:
                await session.resolve("two.internal", 70000)
            assert caught.value.errno == socket.EAI_SERVICE


async def test_sessions_of_one_monitor_share_the_cache(tmp_path):
    import os
    import sys

    async with dns_server(ZONE) as (_, port, server):
        path = str(tmp_path / "arca.sock")
        monitor = await trio.lowlevel.open_process(
            [sys.executable, "-m", "arca_monitor", "--socket", path, *monitor_args(port, tmp_path)]
        )
        try:
            await wait_until(lambda: os.path.exists(path), seconds=10)
            async with arca_control.attach_session(path) as first:
                await first.resolve("v4.internal", type=socket.SOCK_STREAM)
            asked = server.count("v4.internal")
            async with arca_control.attach_session(path) as second:
                found = await second.resolve("v4.internal", type=socket.SOCK_STREAM)
            assert found[0][2] == Endpoint("127.0.0.2", 0)
            assert server.count("v4.internal") == asked  # answered from the shared cache
        finally:
            monitor.terminate()
            await monitor.wait()

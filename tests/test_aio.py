"""The asyncio API (arca_control.aio): asyncio's own streams and servers through the monitor.

These are plain (sync) test functions that run their own event loop with
``asyncio.run``: pytest-trio's trio_mode would otherwise take async tests.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import socket
import time
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple

import pytest

import arca_control.aio

from .conftest import closed_port, errno_is

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

T = TypeVar("T")
Args = TypeVarTuple("Args")

#: Upper bound, in seconds, on any single wait in this file; a whole test gets TEST_LIMIT.
WAIT = 10
TEST_LIMIT = 30


def run(coro_fn: Callable[[*Args], Awaitable[T]], *args: *Args) -> T:
    """Run ``coro_fn(*args)`` in a fresh event loop, bounded by TEST_LIMIT."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro_fn(*args), TEST_LIMIT)

    return asyncio.run(bounded())


def blocking_connect(address) -> None:
    """Connect with a plain socket (in a thread: it blocks) and close at once; raises what connect raises."""
    socket.create_connection(address, timeout=WAIT).close()


async def assert_refused(address) -> None:
    """A plain connect to ``address`` is refused (retrying briefly while a close is still landing)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            await asyncio.to_thread(blocking_connect, address)
        except ConnectionRefusedError:
            return
        except ConnectionResetError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{address} still accepts connections")
        await asyncio.sleep(0.02)


async def echo_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def plain_echo_server() -> asyncio.Server:
    """An asyncio echo server on loopback that has nothing to do with arca."""
    return await asyncio.start_server(echo_handler, "127.0.0.1", 0)


async def echo_round_trip(s, address, payload: bytes = b"round trip") -> None:
    reader, writer = await s.open_connection(*address)
    try:
        writer.write(payload)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(len(payload)), WAIT) == payload
    finally:
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), WAIT)


# --- both sides through arca ---------------------------------------------------------------


def test_echo_server_and_client_both_through_aio_with_half_close():
    async def main():
        async with arca_control.aio.open_session("--no-dns") as s:
            seen = asyncio.get_running_loop().create_future()

            async def handle(reader, writer):
                # Read to EOF (the client's write_eof), and only then answer.
                data = await reader.read()
                seen.set_result((data, writer.get_extra_info("peername"), writer.get_extra_info("sockname")))
                writer.write(b"got %d bytes: " % len(data) + hashlib.sha256(data).hexdigest().encode())
                await writer.drain()
                writer.close()

            server = await s.start_server(handle, "127.0.0.1", 0)
            address = server.sockets[0].getsockname()
            assert address[0] == "127.0.0.1"
            assert address[1] > 0
            assert server.is_serving()

            payload = os.urandom(300_000)
            reader, writer = await s.open_connection(*address)
            assert writer.get_extra_info("peername") == address
            writer.write(payload)
            await writer.drain()
            assert writer.can_write_eof()
            writer.write_eof()
            answer = await asyncio.wait_for(reader.read(), WAIT)  # the answer, then EOF
            assert answer == b"got %d bytes: " % len(payload) + hashlib.sha256(payload).hexdigest().encode()
            assert reader.at_eof()
            assert await reader.read(10) == b""

            data, server_peer, server_local = await asyncio.wait_for(seen, WAIT)
            assert data == payload
            assert server_peer == writer.get_extra_info("sockname")
            assert server_local == address
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), WAIT)
            server.close()
            await asyncio.wait_for(server.wait_closed(), WAIT)
            assert not server.is_serving()

    run(main)


def test_many_clients_at_once_through_an_aio_server():
    async def main():
        async with arca_control.aio.open_session("--no-dns") as s:
            server = await s.start_server(echo_handler, "127.0.0.1", 0)
            address = server.sockets[0].getsockname()
            payloads = [f"client {i} ".encode() * (500 + i * 97) for i in range(10)]
            await asyncio.gather(*(echo_round_trip(s, address, payload) for payload in payloads))
            server.close()
            await asyncio.wait_for(server.wait_closed(), WAIT)

    run(main)


# --- against plain asyncio peers -----------------------------------------------------------


def test_open_connection_to_a_plain_asyncio_server():
    async def main():
        plain = await plain_echo_server()
        address = plain.sockets[0].getsockname()[:2]
        async with plain, arca_control.aio.open_session("--no-dns") as s:
            reader, writer = await s.open_connection(*address)
            assert writer.get_extra_info("peername") == address
            local = writer.get_extra_info("sockname")
            assert local[0] == "127.0.0.1"
            assert local[1] not in (0, address[1])
            payload = os.urandom(1 << 20)
            writer.write(payload)
            received = await asyncio.wait_for(reader.readexactly(len(payload)), WAIT)
            assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), WAIT) == b""  # the echo server closes at EOF
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), WAIT)
            counters = await s.stats()  # the monitor relayed it all, both ways
            assert counters["bytes_up"] == counters["bytes_down"] == len(payload)

    run(main)


def test_errors_are_oserror_subclasses():
    async def main():
        async with arca_control.aio.open_session("--no-dns") as s:
            with pytest.raises(ConnectionRefusedError) as caught:
                await s.open_connection("127.0.0.1", closed_port())
            assert caught.value.errno == errno.ECONNREFUSED
            with pytest.raises(socket.gaierror) as unknown:
                await s.open_connection("no-such-host.invalid", 80)
            assert isinstance(unknown.value, OSError)
            with pytest.raises(socket.gaierror) as unknown:
                await s.getaddrinfo("no-such-host.invalid", 80)
            assert unknown.value.errno == socket.EAI_NONAME
            # Listening on a port already taken: EADDRINUSE.
            taken = await s.start_server(echo_handler, "127.0.0.1", 0)
            with pytest.raises(OSError, check=errno_is(errno.EADDRINUSE)):
                await s.start_server(echo_handler, "127.0.0.1", taken.sockets[0].getsockname()[1])
            taken.close()
            await asyncio.wait_for(taken.wait_closed(), WAIT)

    run(main)


def test_getaddrinfo_matches_the_loops_for_numeric_hosts():
    async def main():
        loop = asyncio.get_running_loop()
        async with arca_control.aio.open_session("--no-dns") as s:
            for host, port, family, kind in (
                ("127.0.0.1", 8080, 0, 0),
                ("127.0.0.1", 443, socket.AF_INET, socket.SOCK_STREAM),
                ("::1", 53, socket.AF_INET6, socket.SOCK_DGRAM),
                ("::1", "8443", 0, socket.SOCK_STREAM),
            ):
                ours = await s.getaddrinfo(host, port, family=family, type=kind)
                theirs = await loop.getaddrinfo(host, port, family=family, type=kind)
                assert ours == theirs
                assert all(len(entry) == 5 and isinstance(entry[4], tuple) for entry in ours)

    run(main)


def test_getaddrinfo_of_a_hosts_file_name(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 arca-test.example\n")

    async def main():
        plain = await plain_echo_server()
        address = plain.sockets[0].getsockname()[:2]
        async with plain, arca_control.aio.open_session("--no-dns", "--hosts-file", str(hosts)) as s:
            infos = await s.getaddrinfo("arca-test.example", address[1], family=socket.AF_INET,
                                        type=socket.SOCK_STREAM)
            assert infos == [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", address)]
            await echo_round_trip(s, ("arca-test.example", address[1]), b"by name")

    run(main)


# --- server lifetime -----------------------------------------------------------------------


def test_cancelling_serve_forever_closes_the_server():
    async def main():
        async with arca_control.aio.open_session("--no-dns") as s:
            server = await s.start_server(echo_handler, "127.0.0.1", 0, start_serving=False)
            address = server.sockets[0].getsockname()
            assert not server.is_serving()
            serving = asyncio.create_task(server.serve_forever())
            await echo_round_trip(s, address, b"while serving")
            # And a plain client, not through arca.
            reader, writer = await asyncio.open_connection(*address)
            writer.write(b"plain")
            assert await asyncio.wait_for(reader.readexactly(5), WAIT) == b"plain"
            writer.close()
            await writer.wait_closed()
            assert server.is_serving()

            serving.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(serving, WAIT)
            assert not server.is_serving()
            await assert_refused(address)
            with pytest.raises(RuntimeError):
                await server.start_serving()  # closed for good
            # The session itself is still fine.
            other = await s.start_server(echo_handler, "127.0.0.1", 0)
            await echo_round_trip(s, other.sockets[0].getsockname())
            other.close()
            await asyncio.wait_for(other.wait_closed(), WAIT)

    run(main)


def test_server_as_async_context_manager():
    async def main():
        async with arca_control.aio.open_session("--no-dns") as s:
            async with await s.start_server(echo_handler, "127.0.0.1", 0) as server:
                address = server.sockets[0].getsockname()
                assert server.is_serving()
                await echo_round_trip(s, address, b"inside")
            assert not server.is_serving()
            await assert_refused(address)

    run(main)


def test_wait_closed_waits_for_open_connections():
    """asyncio 3.12's rule, which the module documents: wait_closed waits for live connections too."""

    async def main():
        async with arca_control.aio.open_session("--no-dns") as s:
            server = await s.start_server(echo_handler, "127.0.0.1", 0)
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
            writer.write(b"hi")
            assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"hi"
            server.close()
            waiting = asyncio.create_task(server.wait_closed())
            await asyncio.sleep(0.2)
            assert not waiting.done()
            # The open connection still works after close().
            writer.write(b"still")
            assert await asyncio.wait_for(reader.readexactly(5), WAIT) == b"still"
            writer.close()
            await writer.wait_closed()
            await asyncio.wait_for(waiting, WAIT)

    run(main)


# --- cancellation --------------------------------------------------------------------------


def test_cancelling_a_hanging_open_connection(stalled_address):
    async def main():
        plain = await plain_echo_server()
        async with plain, arca_control.aio.open_session("--no-dns") as s:
            connecting = asyncio.create_task(s.open_connection(*stalled_address))
            await asyncio.sleep(0.3)
            assert not connecting.done()  # it really hangs
            started = time.monotonic()
            connecting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(connecting, WAIT)
            assert time.monotonic() - started < 1.0
            # wait_for's timeout cancels the same way.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(s.open_connection(*stalled_address), 0.2)
            # A timeout of the call's own: TimeoutError too.
            with pytest.raises(TimeoutError):
                await s.open_connection(*stalled_address, timeout=0.2)
            # The session still works afterwards.
            await echo_round_trip(s, plain.sockets[0].getsockname()[:2], b"after cancel")
            infos = await s.getaddrinfo("127.0.0.1", 1234, family=socket.AF_INET, type=socket.SOCK_STREAM)
            assert infos[0][4] == ("127.0.0.1", 1234)

    run(main)


def test_calls_after_the_session_closes_raise_oserror():
    async def main():
        plain = await plain_echo_server()
        address = plain.sockets[0].getsockname()[:2]
        async with plain:
            async with arca_control.aio.open_session("--no-dns") as s:
                await echo_round_trip(s, address)
            with pytest.raises(OSError, check=errno_is(errno.EBADF)):
                await s.open_connection(*address)
            with pytest.raises(OSError, check=errno_is(errno.EBADF)):
                await s.start_server(echo_handler, "127.0.0.1", 0)

    run(main)


def test_a_server_with_no_host_takes_ipv4_and_ipv6_clients():
    async def main():
        async with arca_control.aio.open_session("--no-dns") as s:
            async def handle(reader, writer):
                writer.write(await reader.read(5))
                await writer.drain()
                writer.close()

            async with await s.start_server(handle) as server:  # host None: every address
                port = server.sockets[0].getsockname()[1]
                for host in ("127.0.0.1", "::1"):
                    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), WAIT)
                    writer.write(b"hello")
                    assert await asyncio.wait_for(reader.read(), WAIT) == b"hello"
                    writer.close()

    run(main)

"""The socket channel: connections as one AF_UNIX stream socket, with the pipes' semantics."""

from __future__ import annotations

import contextlib
import hashlib
import os
import selectors
import socket
import struct

import pytest
import trio

import arca_control
from arca_control.protocol.wire import Capability

from .conftest import blocking_client, read_all, tcp_server


@pytest.fixture
async def socket_session():
    async with arca_control.open_session("--no-dns", socket_channel=True) as session:
        yield session


async def echo(stream: trio.SocketStream) -> None:
    async with stream:
        while data := await stream.receive_some(1 << 16):
            await stream.send_all(data)
        await stream.send_eof()


async def test_the_socket_channel_is_asked_for_and_granted(socket_session, session):
    assert Capability.SOCKET_CHANNEL in socket_session.monitor.capabilities
    assert socket_session.socket_channel
    # Not asked for: pipes, as before.
    assert Capability.SOCKET_CHANNEL not in session.monitor.capabilities
    assert not session.socket_channel


async def test_a_stream_on_the_socket_channel_echoes_and_half_closes(socket_session, nursery):
    address = await tcp_server(nursery, echo)
    stream = await socket_session.connect(*address)
    assert stream.is_socket
    payload = os.urandom(3 << 20)

    async def send():
        await stream.send_all(payload)
        await stream.send_eof()  # the server sees EOF only after every byte

    async with trio.open_nursery() as inner:
        inner.start_soon(send)
        received = await read_all(stream)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    await stream.aclose()


async def test_a_reset_still_raises_through_the_stream(socket_session, nursery):
    async def reset(server_stream):
        await server_stream.receive_some(1)
        server_stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server_stream.socket.close()

    stream = await socket_session.connect(*await tcp_server(nursery, reset))
    await stream.send_all(b"x")
    with pytest.raises(ConnectionResetError), trio.fail_after(10):
        await read_all(stream)
    await stream.aclose()


async def test_a_guest_that_reads_slowly_loses_nothing(socket_session, nursery):
    """Backpressure: the monitor holds what the guest's socket did not take, then sends it."""
    payload = os.urandom(8 << 20)

    async def send(server_stream):
        async with server_stream:
            await server_stream.send_all(payload)

    stream = await socket_session.connect(*await tcp_server(nursery, send))
    await trio.sleep(0.5)  # let every buffer on the way fill
    received = bytearray()
    while data := await stream.receive_some(4096 if len(received) < (1 << 20) else 1 << 20):
        received += data
    assert received == payload
    stats = await socket_session.stats()
    assert stats["bytes_down"] == len(payload)
    await stream.aclose()


async def test_detach_gives_a_real_socket_for_makefile_and_selectors(socket_session, nursery):
    stream = await socket_session.connect(*await tcp_server(nursery, echo))
    sock = stream.detach()
    try:
        assert isinstance(sock, socket.socket)
        assert sock.family == socket.AF_UNIX
        assert sock.gettimeout() is None
        with pytest.raises(trio.ClosedResourceError):
            await stream.send_all(b"x")

        def use() -> bytes:
            with selectors.DefaultSelector() as selector:
                selector.register(sock, selectors.EVENT_WRITE)
                assert selector.select(timeout=5)
            with sock.makefile("rwb") as f:
                f.write(b"line one\nline two\n")
                f.flush()
                sock.shutdown(socket.SHUT_WR)
                return f.read()

        assert await trio.to_thread.run_sync(use) == b"line one\nline two\n"
    finally:
        sock.close()


async def test_a_detached_socket_closing_is_the_peers_eof(socket_session, nursery):
    got = trio.Event()
    seen = []

    async def record(server_stream):
        seen.append(await read_all(server_stream))
        got.set()

    stream = await socket_session.connect(*await tcp_server(nursery, record))
    sock = stream.detach()
    sock.sendall(b"bye")
    sock.close()
    with trio.fail_after(10):
        await got.wait()
    assert seen == [b"bye"]


async def test_the_guest_writing_after_the_upstream_failed_gets_an_error(socket_session, nursery):
    async def reset(server_stream: trio.SocketStream) -> None:
        # Once the guest has written: a reset at once can beat the monitor's connect, which fails then.
        await server_stream.receive_some(1)
        server_stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server_stream.socket.close()

    stream = await socket_session.connect(*await tcp_server(nursery, reset))
    sock = stream.detach()
    sock.settimeout(10)
    try:
        with pytest.raises(ConnectionError):  # EPIPE, or ECONNRESET
            for _ in range(1000):  # bounded: the monitor refuses writes once the connection is dead
                sock.sendall(b"x" * 65536)
                await trio.sleep(0.01)
        # A raw socket sees the reset as EOF, or as ECONNRESET when the monitor closed its
        # end with the guest's last writes unread (PROTOCOL.md section 5).
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(10) == b""
    finally:
        sock.close()


async def test_accepted_connections_come_as_sockets(socket_session):
    listener = await socket_session.listen("127.0.0.1", 0)
    client = await trio.to_thread.run_sync(blocking_client, listener.local[:2])
    try:
        stream = await listener.accept()
        assert stream.is_socket
        assert stream.peer[1] == client.getsockname()[1]
        sock = stream.detach()
        client.sendall(b"ping")
        assert sock.recv(4) == b"ping"
        sock.sendall(b"pong")
        sock.close()
        assert await trio.to_thread.run_sync(read_all_blocking, client) == b"pong"
    finally:
        client.close()
        await listener.aclose()


def read_all_blocking(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(65536):
        chunks.append(data)
    return b"".join(chunks)


async def test_a_pipe_stream_cannot_be_detached(session, nursery):
    stream = await session.connect(*await tcp_server(nursery, echo))
    with pytest.raises(TypeError):
        stream.detach()
    await stream.aclose()

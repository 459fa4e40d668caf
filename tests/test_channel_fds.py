"""What a connection costs in descriptors, per data-channel kind, and that the socket channel's one fd
for both directions keeps every connection's bytes its own and is released at close."""

from __future__ import annotations

import functools
import os
import random
import socket
from typing import TYPE_CHECKING

import pytest
import trio

import arca_control
from arca_control.protocol.messages import Endpoint
from arca_monitor.channels import DataChannel, make_pipe_channel, make_socket_channel
from arca_monitor.connection import Connection
from arca_monitor.relay import RelayEngine

from .conftest import fd_count, tcp_server, wait_until

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

CONNECTIONS = 20
#: The monitor's fds per connection: pipes hold the TCP socket, rx's write end and tx's read end;
#: the socket channel the TCP socket and the monitor's end of the socketpair, one fd for both directions.
MONITOR_FDS = {"pipes": 3, "socket": 2}
#: The guest's: the rx pipe's read end and the tx socket's write end, or the one socket.
GUEST_FDS = {"pipes": 2, "socket": 1}


async def echo(stream: trio.SocketStream) -> None:
    async with stream:
        while data := await stream.receive_some(1 << 16):
            await stream.send_all(data)


@pytest.mark.parametrize("kind", ["pipes", "socket"])
async def test_the_monitor_holds_its_count_of_fds_per_connection(kind, nursery):
    host, port = await tcp_server(nursery, echo)
    async with arca_control.open_session("--no-dns", socket_channel=kind == "socket") as session:
        assert session.process is not None
        monitor = session.process.pid
        monitor_idle, guest_idle = fd_count(monitor), fd_count(os.getpid())
        streams = [await session.connect(host, port) for _ in range(CONNECTIONS)]
        for number, stream in enumerate(streams):
            message = f"connection {number}".encode()
            await stream.send_all(message)
            got = b""
            while len(got) < len(message):
                got += await stream.receive_some(len(message) - len(got))
            assert got == message
        # Every echo came back, so every connection is relayed and the echo server holds one socket for each.
        assert fd_count(monitor) - monitor_idle == MONITOR_FDS[kind] * CONNECTIONS
        assert fd_count(os.getpid()) - guest_idle == (GUEST_FDS[kind] + 1) * CONNECTIONS
        for stream in streams:
            await stream.aclose()
        # The monitor closes its ends as it sees each guest's close: all of them, back to idle.
        await wait_until(lambda: fd_count(monitor) == monitor_idle, seconds=10)


# --- several connections at once through one relay, both directions, half-closed either way ---------


class Ends:
    """One side of a relayed connection as three calls: send, send EOF, receive."""

    def __init__(self, send: Callable[[bytes], Awaitable[None]], send_eof: Callable[[], Awaitable[None]],
                 receive: Callable[[int], Awaitable[bytes]]) -> None:
        self.send, self.send_eof, self.receive = send, send_eof, receive


def guest_ends(channel: DataChannel) -> tuple[Ends, Callable[[], Awaitable[None]]]:
    """The guest's side of ``channel``, and how to close it."""
    if channel.is_socket:
        (fd,) = channel.guest_fds
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(socket.socket(fileno=fd)))
        return Ends(stream.send_all, stream.send_eof, stream.receive_some), stream.aclose
    rx, tx = (trio.lowlevel.FdStream(fd) for fd in channel.guest_fds)

    async def close() -> None:
        await rx.aclose()
        await tx.aclose()

    return Ends(tx.send_all, tx.aclose, rx.receive_some), close


async def talk(ends: Ends, out: bytes, *, late: bool) -> bytes:
    """Send ``out`` while reading to EOF; what was read. ``late``: the second half of ``out`` goes
    only after the other side's EOF, over the connection it half-closed."""
    got = bytearray()
    eof = trio.Event()

    async def receive() -> None:
        while data := await ends.receive(1 << 16):
            got.extend(data)
        eof.set()

    async def send() -> None:
        half = len(out) // 2
        await ends.send(out[:half])
        if late:
            await eof.wait()
        await ends.send(out[half:])
        await ends.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive)
        nursery.start_soon(send)
    return bytes(got)


async def tcp_pair(listener: socket.socket) -> tuple[socket.socket, trio.SocketStream]:
    """A loopback TCP connection: the monitor's socket, and the peer's end as a trio stream."""
    client = trio.socket.socket()
    await client.connect(listener.getsockname())
    ours, _ = listener.accept()
    ours.setblocking(False)
    return ours, trio.SocketStream(client)


@pytest.mark.parametrize("make_channel", [make_pipe_channel, make_socket_channel], ids=["pipes", "socket"])
async def test_connections_at_once_keep_their_bytes_and_release_their_fds(make_channel):
    """Six connections in one relay, each moving its own bytes both ways at once: half of them
    half-closed by the guest first (the peer sends on after its EOF), half by the peer first (the
    guest sends on after EOF). Every byte arrives on its own connection, and once all have closed
    the relay holds none of their fds."""
    count, size = 6, 1 << 20
    closed: list[int] = []
    all_closed = trio.Event()

    def on_change(event: str, conn: Connection, **fields: object) -> None:
        if event == "close":
            closed.append(conn.connection_id)
            if len(closed) == count:
                all_closed.set()

    async def send_event(event: object) -> None:
        await trio.lowlevel.checkpoint()

    listener = socket.create_server(("127.0.0.1", 0))
    relay = RelayEngine(send_event, on_change)
    idle = fd_count(os.getpid())
    rng = random.Random(15)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay.run)
            work = []
            for number in range(count):
                sock, peer = await tcp_pair(listener)
                channel = make_channel()
                conn = Connection(number + 1, sock, Endpoint("127.0.0.1", 1), Endpoint("127.0.0.1", 2), channel)
                relay.add(conn)
                relay.announce(conn)
                guest, close_guest = guest_ends(channel)
                up, down = rng.randbytes(size + number), rng.randbytes(size - number)
                work.append((guest, close_guest, Ends(peer.send_all, peer.send_eof, peer.receive_some), peer,
                             up, down, number % 2 == 0))
            results: dict[int, tuple[bytes, bytes]] = {}

            async def one(number: int) -> None:
                guest, close_guest, peer_ends, peer, up, down, guest_first = work[number]
                got = {}

                async def side(name: str, ends: Ends, out: bytes, late: bool) -> None:
                    got[name] = await talk(ends, out, late=late)

                async with trio.open_nursery() as both:
                    both.start_soon(side, "guest", guest, up, not guest_first)
                    both.start_soon(side, "peer", peer_ends, down, guest_first)
                results[number] = (got["peer"], got["guest"])
                await close_guest()
                await peer.aclose()

            with trio.fail_after(60):
                async with trio.open_nursery() as connections:
                    for number in range(count):
                        connections.start_soon(one, number)
                await all_closed.wait()
            for number, (_, _, _, _, up, down, _) in enumerate(work):
                assert results[number] == (up, down), f"connection {number} mixed or lost bytes"
            assert sorted(closed) == list(range(1, count + 1))
            assert not relay.connections
            assert fd_count(os.getpid()) == idle  # every socket and channel end is closed
            nursery.cancel_scope.cancel()
    finally:
        relay.close()
        listener.close()


async def test_a_socket_channel_end_shut_one_way_stays_open_for_the_other(nursery):
    """Through a real monitor: the peer's FIN reaches the guest as EOF while its upload goes on
    over the same fd, and the guest's EOF reaches the peer while the download goes on."""
    uploads: dict[int, bytes] = {}
    received = {number: trio.Event() for number in range(6)}

    async def collect(stream: trio.SocketStream) -> None:
        async with stream:
            got = bytearray()
            while len(got) < 8:
                got.extend(await stream.receive_some(8 - len(got)))
            number, peer_first = int(got[:4]), got[4:8] == b"peer"
            if peer_first:  # EOF to the guest now, then read its upload
                await stream.send_eof()
            while data := await stream.receive_some(1 << 16):
                got.extend(data)
            uploads[number] = bytes(got)
            received[number].set()
            if not peer_first:  # the download goes on after the guest's EOF
                await stream.send_all(b"after the guest's EOF %d" % number)

    host, port = await tcp_server(nursery, collect)
    async with arca_control.open_session("--no-dns", socket_channel=True) as session:

        async def one(number: int) -> None:
            stream = await session.connect(host, port)
            peer_first = number % 2 == 0
            body = random.Random(number).randbytes(300_000)
            head = b"%04d%s" % (number, b"peer" if peer_first else b"gues")
            await stream.send_all(head)
            if peer_first:
                assert await stream.receive_some(10) == b""  # the peer's EOF, the upload not done yet
            await stream.send_all(body)
            await stream.send_eof()
            got = bytearray()
            while data := await stream.receive_some(1 << 16):
                got.extend(data)
            assert bytes(got) == (b"" if peer_first else b"after the guest's EOF %d" % number)
            await received[number].wait()
            assert uploads[number] == head + body
            await stream.aclose()

        with trio.fail_after(60):
            async with trio.open_nursery() as connections:
                for number in range(6):
                    connections.start_soon(functools.partial(one, number))

"""The relay engine on its own: races between the control channel and the data channels."""

from __future__ import annotations

import contextlib
import os
import socket

import pytest
import trio

from arca_control.protocol.messages import Endpoint
from arca_monitor.channels import make_pipe_channel, make_socket_channel
from arca_monitor.connection import Connection, GuestGone, splice_to_channel
from arca_monitor.relay import RelayEngine


@pytest.mark.parametrize("make_channel", [make_pipe_channel, make_socket_channel], ids=["pipes", "socket"])
async def test_an_abort_while_the_connection_end_is_being_sent(make_channel):
    """The guest's Abort is handled while the ConnectionEnd waits for room on the control
    channel: the relay must neither fail (closing an fd twice) nor report the close twice."""
    sending, release = trio.Event(), trio.Event()
    closes = []

    async def send_event(event) -> None:
        sending.set()
        await release.wait()  # a full control channel

    relay = RelayEngine(send_event, lambda event, conn, **fields: closes.append(fields.get("how")) if event == "close" else None)
    ours, peer = socket.socketpair()  # stands in for the TCP socket
    ours.setblocking(False)
    channel = make_channel()
    conn = Connection(1, ours, Endpoint("127.0.0.1", 1), Endpoint("127.0.0.1", 2), channel)
    relay.add(conn)
    relay.announce(conn)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(relay.run)
            peer.shutdown(socket.SHUT_WR)  # the peer's FIN: a ConnectionEnd is queued
            with trio.fail_after(5):
                await sending.wait()
            relay.abort(conn)
            release.set()
            await trio.sleep(0.2)  # relay.run would raise here, failing the nursery
            nursery.cancel_scope.cancel()
    finally:
        relay.close()
        peer.close()
        for fd in channel.guest_fds:
            socket.close(fd)
    assert closes == ["aborted"]


def _socket_connection(connection_id: int) -> tuple[Connection, socket.socket, socket.socket]:
    """A socket-channel connection whose 'TCP' socket is one end of a socketpair: (conn, peer, guest)."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    channel = make_socket_channel()
    conn = Connection(connection_id, ours, Endpoint("127.0.0.1", 1), Endpoint("127.0.0.1", 2), channel)
    guest = socket.socket(fileno=channel.guest_fds[0])
    guest.setblocking(False)
    return conn, peer, guest


def _close(conn: Connection, *sockets: socket.socket) -> None:
    conn.sock.close()
    for fd in {conn.rx_write, conn.tx_read}:
        socket.close(fd)
    for sock in sockets:
        sock.close()


def _move_down(conn: Connection) -> None:
    """Splice until the source is empty or the guest's socket is full (then the rest waits in pending_down)."""
    while True:
        try:
            splice_to_channel(conn)
        except BlockingIOError:
            return
        if conn.pending_down:
            return


def test_splicing_into_a_full_socket_channel_keeps_every_byte_in_order():
    """The relay pipe is shared by every connection: what a full guest socket did not take
    must leave it (into pending_down) before the next splice, or bytes would go astray."""
    payload = os.urandom(6 << 20)
    conn, peer, guest = _socket_connection(1)
    other, other_peer, other_guest = _socket_connection(2)
    received = bytearray()
    partial = 0
    try:
        peer.setblocking(False)
        sent = turn = 0
        while len(received) < len(payload):
            turn += 1
            with contextlib.suppress(BlockingIOError):
                sent += peer.send(payload[sent:sent + (1 << 20)]) if sent < len(payload) else 0
            _move_down(conn)
            partial += bool(conn.pending_down)
            # Another connection's bytes through the same pipe in between: none of conn's may come along.
            other_peer.sendall(b"other")
            _move_down(other)
            assert other_guest.recv(100) == b"other"
            if turn % 32 == 0 or sent == len(payload):  # a slow guest: its socket fills in between
                with contextlib.suppress(BlockingIOError):
                    while chunk := guest.recv(1 << 16):
                        received += chunk
        assert received == payload
        assert partial  # the guest's socket did fill: the pending_down path ran
    finally:
        _close(conn, peer, guest)
        _close(other, other_peer, other_guest)


def test_splicing_to_a_closed_guest_leaves_the_relay_pipe_empty():
    conn, peer, guest = _socket_connection(1)
    other, other_peer, other_guest = _socket_connection(2)
    try:
        guest.close()
        peer.sendall(b"x" * 100_000)
        with pytest.raises(GuestGone):
            splice_to_channel(conn)
        other_peer.sendall(b"only this")
        _move_down(other)
        assert other_guest.recv(100) == b"only this"
    finally:
        _close(conn, peer)
        _close(other, other_peer, other_guest)

"""The relay engine on its own: races between the control channel and the data channels."""

from __future__ import annotations

import socket

import pytest
import trio

from arca_control.protocol.messages import Endpoint
from arca_monitor.channels import make_pipe_channel, make_socket_channel
from arca_monitor.connection import Connection
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

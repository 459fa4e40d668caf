"""Shared fixtures: a spawned monitor session, and real TCP peers outside the guest."""

from __future__ import annotations

import functools
import socket

import pytest
import trio

import arca_control


@pytest.fixture
async def session():
    async with arca_control.open_session() as session:
        yield session


async def read_all(stream) -> bytes:
    """Everything ``stream`` (trio stream or ArcaStream) yields until EOF."""
    chunks = []
    while data := await stream.receive_some(1 << 20):
        chunks.append(data)
    return b"".join(chunks)


async def tcp_server(nursery: trio.Nursery, handler) -> tuple[str, int]:
    """A real trio TCP server on a kernel-chosen loopback port, outside any session."""
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[:2]


def blocking_client(address) -> socket.socket:
    return socket.create_connection(address, timeout=10)


@pytest.fixture
def stalled_address():
    """A loopback address where connects hang: a listener whose accept queue is full.

    With listen(0) the kernel queues one connection; SYNs beyond it are dropped
    (and retried by the client), so a further connect neither succeeds nor fails.
    """
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname(), timeout=5)
    yield listener.getsockname()
    filler.close()
    listener.close()

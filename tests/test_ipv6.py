"""IPv6 through the monitor: listen, connect, accept, dual stack and V6ONLY, scope ids."""

from __future__ import annotations

import errno
import functools
import socket

import pytest
import trio

from arca_control.protocol.addresses import ip_endpoint as _endpoint
from arca_control.protocol.wire import Endpoint

from .conftest import errno_is, read_all


def ipv6_client(address) -> socket.socket:
    return socket.create_connection(address, timeout=10)


async def test_listen_and_accept_on_ipv6_loopback(session):
    listener = await session.listen("::1", 0)
    assert listener.local.host == "::1"
    assert listener.local.port
    client = await trio.to_thread.run_sync(ipv6_client, ("::1", listener.local.port))
    with client:
        stream = await listener.accept()
        assert stream.peer == Endpoint.from_sockaddr(client.getsockname())
        assert stream.local == Endpoint.from_sockaddr(client.getpeername()) == listener.local
        await stream.send_all(b"over v6")
        assert await trio.to_thread.run_sync(client.recv, 100) == b"over v6"
        await stream.aclose()


async def test_connect_to_a_real_ipv6_server(session):
    async def handler(server_stream):
        await server_stream.send_all(b"hello ::1")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="::1"))
        port = listeners[0].socket.getsockname()[1]
        stream = await session.connect("::1", port)
        assert stream.peer == Endpoint("::1", port)
        assert stream.local.host == "::1"
        assert await read_all(stream) == b"hello ::1"
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_dual_stack_listener_takes_ipv4_too(session):
    listener = await session.listen("::", 0, v6only=False)
    client = await trio.to_thread.run_sync(ipv6_client, ("127.0.0.1", listener.local.port))
    with client:
        stream = await listener.accept()
        # The kernel's own view of an IPv4 peer on an IPv6 socket: IPv4-mapped.
        assert stream.peer == Endpoint(f"::ffff:{client.getsockname()[0]}", client.getsockname()[1])
        await stream.aclose()
    v6 = await session.connect("::1", listener.local.port)
    await (await listener.accept()).aclose()
    await v6.aclose()


async def test_v6only_listener_refuses_ipv4(session):
    listener = await session.listen("::", 0, v6only=True)
    with pytest.raises(ConnectionRefusedError):
        await session.connect("127.0.0.1", listener.local.port)
    stream = await session.connect("::1", listener.local.port)
    await (await listener.accept()).aclose()
    await stream.aclose()
    with pytest.raises(OSError, check=errno_is(errno.EINVAL)):
        await session.listen("127.0.0.1", 0, v6only=True)


def test_scope_names_become_indexes_and_sockaddrs_round_trip():
    index = socket.if_nametoindex("lo")
    assert _endpoint("fe80::1%lo", 80) == Endpoint(f"fe80::1%{index}", 80)
    assert Endpoint(f"fe80::1%{index}", 80).sockaddr() == ("fe80::1", 80, 0, index)
    assert Endpoint.from_sockaddr(("fe80::1", 80, 0, index)) == Endpoint(f"fe80::1%{index}", 80)
    assert Endpoint("::1", 5).sockaddr() == ("::1", 5, 0, 0)
    assert Endpoint("127.0.0.1", 5).sockaddr() == ("127.0.0.1", 5)
    with pytest.raises(ValueError, match="no interface 'no-such-interface'"):
        _endpoint("fe80::1%no-such-interface", 80)
    with pytest.raises(ValueError, match="not an IP address literal"):
        _endpoint("127.1", 80)

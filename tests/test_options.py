"""Socket options applied to the monitor's real sockets and read back, reuse-port, and abort."""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING

import pytest
import trio

from .conftest import blocking_client, errno_is, monitor_socket, read_all

if TYPE_CHECKING:
    from arca_control import ArcaListener, ArcaSession, ArcaStream


async def pair(session: ArcaSession) -> tuple[ArcaListener, ArcaStream, ArcaStream]:
    listener = await session.listen("127.0.0.1", 0)
    client = await session.connect(*listener.local)
    server = await listener.accept()
    return listener, client, server


@pytest.mark.parametrize(
    ("level", "name", "value"),
    [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
        (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 77),
        (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 11),
        (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 5),
        (socket.IPPROTO_IP, socket.IP_TTL, 42),
    ],
)
async def test_options_are_applied_and_read_back(session, level, name, value):
    _, client, server = await pair(session)
    assert await client.setsockopt(level, name, value) == value
    assert await client.getsockopt(level, name) == value
    # The monitor's real socket has it: checked on a copy of its descriptor, not through arca.
    with monitor_socket(session.process.pid, client.local) as real:
        assert real.getsockopt(level, name) == value
    await client.aclose()
    await server.aclose()


async def test_listener_options_are_set_on_the_real_socket(session):
    listener = await session.listen("127.0.0.1", 0)
    assert await listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768) == 65536
    with monitor_socket(session.process.pid, listener.local) as real:
        assert real.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == 65536
    await listener.aclose()


async def test_buffer_sizes_come_back_as_the_kernel_sets_them(session):
    _, client, server = await pair(session)
    got = await client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    assert got == 2 * 65536  # Linux doubles it for bookkeeping, and says so
    with monitor_socket(session.process.pid, client.local) as real:
        assert real.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) == got
    assert await client.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) > 0
    await client.aclose()
    await server.aclose()


async def test_unknown_and_bind_time_options(session):
    listener, client, server = await pair(session)
    with pytest.raises(OSError, check=errno_is(errno.ENOPROTOOPT)):
        await client.setsockopt(socket.SOL_SOCKET, socket.SO_DEBUG, 1)
    with pytest.raises(OSError, check=errno_is(errno.EINVAL)):  # a bind-time option: known, but too late
        await listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    assert await listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    assert await listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    await client.aclose()
    await server.aclose()
    await listener.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)


async def test_v6only_reads_back(session):
    listener = await session.listen("::", 0, v6only=True)
    assert await listener.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    dual = await session.listen("::", 0)
    assert await dual.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0


async def test_reuse_port_lets_listeners_share_a_port_only_when_all_ask(session):
    first = await session.listen("127.0.0.1", 0, reuse_port=True)
    second = await session.listen("127.0.0.1", first.local.port, reuse_port=True)
    assert await second.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    with pytest.raises(OSError, check=errno_is(errno.EADDRINUSE)):
        await session.listen("127.0.0.1", first.local.port)


async def test_abort_resets_the_peer(session):
    listener = await session.listen("127.0.0.1", 0)
    peer = await trio.to_thread.run_sync(blocking_client, listener.local)
    stream = await listener.accept()
    await stream.send_all(b"last words")
    await trio.sleep(0.1)  # let them reach the peer's buffer
    await stream.abort()
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"x")

    def read_until_reset():
        got = b""
        while True:
            try:
                data = peer.recv(65536)
            except ConnectionResetError:
                return got, "reset"
            if not data:
                return got, "eof"
            got += data

    _, how = await trio.to_thread.run_sync(read_until_reset)
    assert how == "reset"
    peer.close()
    assert stream not in session.streams


async def test_abort_reaches_another_guest_stream_as_an_error(session):
    _, client, server = await pair(session)
    await server.abort()
    with pytest.raises(trio.BrokenResourceError) as caught:
        await read_all(client)
    assert isinstance(caught.value.__cause__, ConnectionResetError)
    await client.aclose()


async def test_options_on_unknown_targets(session):
    from arca_control.protocol.messages import GetOption
    from arca_control.protocol.wire import OptionTarget

    with pytest.raises(OSError, check=errno_is(errno.EBADF)):
        await session.request(
            GetOption(target=OptionTarget.CONNECTION, target_id=999, level=socket.SOL_SOCKET, name=socket.SO_KEEPALIVE)
        )

"""AF_UNIX stream sockets through the monitor: the same streams and listeners as TCP."""

from __future__ import annotations

import errno
import os
import socket

import pytest
import trio

from arca_control.protocol.wire import Endpoint

from .conftest import LOOPBACK_RULES, errno_is, read_all, wait_until


@pytest.fixture
async def session(tmp_path):
    """A session whose policy allows AF_UNIX sockets under this test's directory only."""
    import arca_control

    async with arca_control.open_session("--no-dns", "--allow-unix", str(tmp_path), *LOOPBACK_RULES) as session:
        yield session


async def test_listen_and_connect_unix(session, tmp_path):
    path = str(tmp_path / "service.sock")
    listener = await session.listen_unix(path)
    assert listener.local == Endpoint(path, 0)
    assert await trio.Path(path).exists()
    client = await session.connect_unix(path)
    server = await listener.accept()
    assert client.peer == server.local == Endpoint(path, 0)
    assert client.local == server.peer == Endpoint("", 0)  # a connecting socket has no name
    await client.send_all(b"over AF_UNIX")
    await client.send_eof()
    assert await read_all(server) == b"over AF_UNIX"
    await server.send_all(b"and back")
    await server.aclose()
    assert await read_all(client) == b"and back"
    await client.aclose()
    await listener.aclose()
    await wait_until(lambda: not os.path.exists(path))  # the monitor removes the file it made


async def test_a_real_unix_client_and_server(session, tmp_path):
    path = str(tmp_path / "guest.sock")
    listener = await session.listen_unix(path)

    def plain_client():
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(10)
            client.connect(path)
            client.sendall(b"plain")
            return client.recv(100)

    async with trio.open_nursery() as nursery:
        async def serve():
            stream = await listener.accept()
            await stream.send_all(await stream.receive_some())
            await stream.aclose()

        nursery.start_soon(serve)
        assert await trio.to_thread.run_sync(plain_client) == b"plain"

    outside = str(tmp_path / "outside.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(outside)
    server.listen()
    with server:
        stream = await session.connect_unix(outside)
        conn, _ = await trio.to_thread.run_sync(server.accept)
        with conn:
            conn.sendall(b"from outside")
            assert await stream.receive_some() == b"from outside"
        await stream.aclose()


async def test_unix_errors(session, tmp_path):
    with pytest.raises(FileNotFoundError):
        await session.connect_unix(str(tmp_path / "nobody-here.sock"))
    path = str(tmp_path / "taken.sock")
    await session.listen_unix(path)
    with pytest.raises(OSError, check=errno_is(errno.EADDRINUSE)):
        await session.listen_unix(path)
    for bad, why in (
        ("\0abstract", "abstract-namespace names are refused"),
        ("@abstract", "abstract-namespace names are refused"),
        ("relative.sock", "must be absolute"),
        ("/" + "x" * 200, "not a usable AF_UNIX path"),
    ):
        with pytest.raises(ValueError, match=why):
            await session.listen_unix(bad)
    not_for_unix = (errno.EOPNOTSUPP, errno.ENOPROTOOPT, errno.EINVAL)
    with pytest.raises(OSError, check=lambda exc: exc.errno in not_for_unix):  # TCP options do not apply to AF_UNIX
        await session.listen_unix(str(tmp_path / "opt.sock"))
        stream = await session.connect_unix(str(tmp_path / "opt.sock"))
        await stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def test_unix_paths_outside_the_allowed_directory_are_denied(session, tmp_path):
    with pytest.raises(PermissionError) as caught:
        await session.listen_unix("/tmp/not-allowed-here.sock")
    assert "--allow-unix" in str(caught.value)
    with pytest.raises(PermissionError):
        await session.connect_unix(str(tmp_path) + "-sibling/x.sock")


async def test_a_link_inside_the_allowed_directory_to_a_socket_outside_is_denied(session, tmp_path_factory, tmp_path):
    outside_dir = tmp_path_factory.mktemp("outside")
    outside = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    outside.bind(str(outside_dir / "host.sock"))
    outside.listen()
    with outside:
        os.symlink(outside_dir / "host.sock", tmp_path / "escape.sock")
        os.symlink(outside_dir, tmp_path / "escape-dir")
        for attempt in (tmp_path / "escape.sock", tmp_path / "escape-dir" / "host.sock"):
            with pytest.raises(PermissionError) as caught:
                await session.connect_unix(str(attempt))
            assert "--allow-unix" in str(caught.value)
        with pytest.raises(PermissionError):
            await session.listen_unix(str(tmp_path / "escape-dir" / "new.sock"))
        outside.setblocking(False)
        with pytest.raises(BlockingIOError):
            outside.accept()  # nothing reached the socket outside
    # A link that stays inside the allowed directory is no escape: it works.
    listener = await session.listen_unix(str(tmp_path / "real.sock"))
    os.symlink(tmp_path / "real.sock", tmp_path / "alias.sock")
    client = await session.connect_unix(str(tmp_path / "alias.sock"))
    server = await listener.accept()
    await client.send_all(b"via a link")
    assert await server.receive_some(100) == b"via a link"
    for stream in (client, server, listener):
        await stream.aclose()

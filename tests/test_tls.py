"""TLS over arca connections, through the trio, asyncio and blocking APIs.

The certificates are made here by trustme. For the client cases the TLS
server is not arca's code (a stdlib thread, or asyncio's own server); for the
server cases arca listens and the TLS client is the stdlib's or asyncio's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import socket
import ssl
import struct
import threading
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple

import pytest
import trio
import trustme

import arca_control
import arca_control.aio
import arca_control.sync

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from arca_control.stream import ArcaStream
    from arca_control.sync import Address, ArcaSocket

T = TypeVar("T")
Args = TypeVarTuple("Args")
Transport = TypeVar("Transport", bound=trio.abc.Stream)

#: Upper bound, in seconds, on any single wait in this file.
WAIT = 10
MIB = 1 << 20


@pytest.fixture(scope="module")
def ca():
    return trustme.CA()


@pytest.fixture(scope="module")
def leaf(ca):
    return ca.issue_cert("localhost", "127.0.0.1")


@pytest.fixture(scope="module")
def server_ctx(leaf):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)
    return ctx


@pytest.fixture(scope="module")
def client_ctx(ca):
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def recv_exactly(sock, count: int) -> bytes:
    chunks, got = [], 0
    while got < count:
        chunk = sock.recv(min(count - got, 1 << 16))
        if not chunk:
            raise EOFError(f"EOF after {got} of {count} bytes")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


class StdlibTLSEchoServer:
    """A TLS echo server of the stdlib's (threads, ``wrap_socket(server_side=True)``), not arca's.

    ``handshakes`` counts the handshakes that succeeded, ``failures`` the ones that did not.
    """

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self._ctx = ctx
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.address = self._listener.getsockname()[:2]
        self.handshakes = 0
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        conn.settimeout(WAIT)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no Nagle stalls on echoed records
        try:
            with self._ctx.wrap_socket(conn, server_side=True) as tls:
                self.handshakes += 1
                while data := tls.recv(1 << 16):
                    tls.sendall(data)
        except (ssl.SSLError, OSError) as exc:
            self.failures.append(exc)
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(WAIT)
        self._listener.close()


@pytest.fixture
def tls_echo_server(server_ctx):
    server = StdlibTLSEchoServer(server_ctx)
    yield server
    server.close()


def stdlib_tls_client(
    address: tuple[str, int], client_ctx: ssl.SSLContext, payload: bytes
) -> tuple[bytes, str | None, bytes | None]:
    """A stdlib TLS client (run it in a thread): sends a length-prefixed payload, then reads
    back as many bytes. Returns (what came back, TLS version, the server certificate's DER)."""
    with socket.create_connection(address, timeout=WAIT) as raw, \
            client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(struct.pack("!I", len(payload)) + payload)
        echoed = recv_exactly(tls, len(payload))
        return echoed, tls.version(), tls.getpeercert(binary_form=True)


# --- trio ----------------------------------------------------------------------------------


async def trio_echo_check(tls: trio.SSLStream[Transport], payload: bytes) -> bytes:
    """Send ``payload`` while reading its echo, at once (so no buffer can fill); the echo."""
    received = bytearray()

    async def send():
        await tls.send_all(payload)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        while len(received) < len(payload):
            data = await tls.receive_some(1 << 16)
            assert data, f"EOF after {len(received)} of {len(payload)} bytes"
            received += data
    return bytes(received)


@pytest.mark.parametrize("socket_channel", [False, True], ids=["pipes", "socket-channel"])
async def test_trio_tls_client_to_a_stdlib_server(socket_channel, tls_echo_server, client_ctx):
    async with arca_control.open_session("--no-dns", socket_channel=socket_channel) as session:
        with trio.fail_after(WAIT):
            stream = await session.connect(*tls_echo_server.address)
            assert stream.is_socket == socket_channel
            tls = trio.SSLStream(stream, client_ctx, server_hostname="localhost")
            await tls.do_handshake()
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            assert tls.getpeercert()["subjectAltName"][0] == ("DNS", "localhost")
            small = b"hello over TLS"
            assert await trio_echo_check(tls, small) == small
            payload = os.urandom(MIB)
            assert digest(await trio_echo_check(tls, payload)) == digest(payload)
            await tls.aclose()
    assert tls_echo_server.handshakes == 1
    assert not tls_echo_server.failures


@pytest.mark.parametrize("socket_channel", [False, True], ids=["pipes", "socket-channel"])
async def test_trio_tls_server_through_arca_with_a_stdlib_client(socket_channel, server_ctx, client_ctx, leaf):
    payload = os.urandom(MIB)
    async with arca_control.open_session("--no-dns", socket_channel=socket_channel) as session:
        listener = await session.listen("127.0.0.1", 0)
        address = (listener.local[0], listener.local[1])

        async def serve() -> tuple[trio.SSLStream[ArcaStream], bytes]:
            stream = await listener.accept()
            tls = trio.SSLStream(stream, server_ctx, server_side=True)
            await tls.do_handshake()
            header = b""
            while len(header) < 4:
                header += await tls.receive_some(4 - len(header))
            (length,) = struct.unpack("!I", header)
            received = bytearray()
            while len(received) < length:
                data = await tls.receive_some(1 << 16)
                assert data
                received += data
            await tls.send_all(bytes(received))
            return tls, bytes(received)

        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                client: dict[str, tuple[bytes, str | None, bytes | None]] = {}

                async def run_client() -> None:
                    client["result"] = await trio.to_thread.run_sync(
                        stdlib_tls_client, address, client_ctx, payload, abandon_on_cancel=True)

                nursery.start_soon(run_client)
                tls, received = await serve()
            echoed, version, der = client["result"]
            assert digest(received) == digest(payload)
            assert digest(echoed) == digest(payload)
            assert version in ("TLSv1.2", "TLSv1.3")
            assert der == ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
            await tls.aclose()
            await listener.aclose()


async def test_trio_tls_wrong_hostname_fails_verification(tls_echo_server, client_ctx):
    async with arca_control.open_session("--no-dns", socket_channel=True) as session:
        with trio.fail_after(WAIT):
            stream = await session.connect(*tls_echo_server.address)
            tls = trio.SSLStream(stream, client_ctx, server_hostname="wrong.example")
            with pytest.raises(trio.BrokenResourceError) as caught:
                await tls.do_handshake()
            assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)
            assert caught.value.__cause__.verify_code == 62  # X509_V_ERR_HOSTNAME_MISMATCH
            await stream.aclose()
            # The session is unharmed: the right name works on a new connection.
            tls = trio.SSLStream(await session.connect(*tls_echo_server.address), client_ctx,
                                 server_hostname="localhost")
            assert await trio_echo_check(tls, b"ok") == b"ok"
            await tls.aclose()


# --- asyncio -------------------------------------------------------------------------------


async def asyncio_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


async def asyncio_echo_check(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> bytes:
    writer.write(payload)
    _, echoed = await asyncio.gather(writer.drain(), reader.readexactly(len(payload)))
    return echoed


def run(coro_fn: Callable[[*Args], Awaitable[T]], *args: *Args) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro_fn(*args), 30)

    return asyncio.run(bounded())


def test_asyncio_tls_client_to_a_plain_asyncio_server(server_ctx, client_ctx):
    async def main():
        plain = await asyncio.start_server(asyncio_echo, "127.0.0.1", 0, ssl=server_ctx)
        address = plain.sockets[0].getsockname()[:2]
        async with plain, arca_control.aio.open_session("--no-dns") as s:
            reader, writer = await asyncio.wait_for(
                s.open_connection(*address, ssl=client_ctx, server_hostname="localhost"), WAIT)
            ssl_object = writer.get_extra_info("ssl_object")
            assert ssl_object is not None
            assert ssl_object.server_hostname == "localhost"
            assert writer.get_extra_info("peercert")["subjectAltName"][0] == ("DNS", "localhost")
            assert writer.get_extra_info("peername") == address
            payload = os.urandom(MIB)
            echoed = await asyncio.wait_for(asyncio_echo_check(reader, writer, payload), WAIT)
            assert digest(echoed) == digest(payload)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), WAIT)

    run(main)


def test_asyncio_tls_server_through_arca_with_an_asyncio_client(server_ctx, client_ctx):
    async def main():
        async with arca_control.aio.open_session("--no-dns") as s:
            server = await s.start_server(asyncio_echo, "127.0.0.1", 0, ssl=server_ctx)
            address = server.sockets[0].getsockname()
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(*address, ssl=client_ctx, server_hostname="localhost"), WAIT)
            assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
            payload = os.urandom(MIB)
            echoed = await asyncio.wait_for(asyncio_echo_check(reader, writer, payload), WAIT)
            assert digest(echoed) == digest(payload)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), WAIT)
            # And an arca client to the arca TLS server, both sides through the session.
            reader, writer = await asyncio.wait_for(
                s.open_connection(*address, ssl=client_ctx, server_hostname="localhost"), WAIT)
            assert await asyncio.wait_for(asyncio_echo_check(reader, writer, b"both sides"), WAIT) == b"both sides"
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), WAIT)
            server.close()
            await asyncio.wait_for(server.wait_closed(), WAIT)

    run(main)


def test_asyncio_tls_wrong_hostname_fails_verification(server_ctx, client_ctx):
    async def main():
        plain = await asyncio.start_server(asyncio_echo, "127.0.0.1", 0, ssl=server_ctx)
        address = plain.sockets[0].getsockname()[:2]
        async with plain, arca_control.aio.open_session("--no-dns") as s:
            with pytest.raises(ssl.SSLCertVerificationError):
                await asyncio.wait_for(
                    s.open_connection(*address, ssl=client_ctx, server_hostname="wrong.example"), WAIT)
            # server_hostname defaults to the host, as asyncio's does: 127.0.0.1 is in the certificate.
            reader, writer = await asyncio.wait_for(s.open_connection(*address, ssl=client_ctx), WAIT)
            assert await asyncio.wait_for(asyncio_echo_check(reader, writer, b"by address"), WAIT) == b"by address"
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), WAIT)

    run(main)


# --- blocking ------------------------------------------------------------------------------


def test_sync_tls_client_to_a_stdlib_server(tls_echo_server, client_ctx):
    with arca_control.sync.open_session("--no-dns") as s:
        raw = s.create_connection(tls_echo_server.address, timeout=WAIT)
        assert raw.getpeername() == tls_echo_server.address
        with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            assert tls.getpeercert()["subjectAltName"][0] == ("DNS", "localhost")
            assert tls.gettimeout() == WAIT
            payload = os.urandom(MIB)
            # Chunk by chunk, each echoed before the next: a blocking socket must not fill both ways.
            echoed = bytearray()
            for start in range(0, len(payload), 64 << 10):
                chunk = payload[start:start + (64 << 10)]
                tls.sendall(chunk)
                echoed += recv_exactly(tls, len(chunk))
            assert digest(bytes(echoed)) == digest(payload)
    assert tls_echo_server.handshakes == 1


def test_tls_socket_addresses_in_transparent_mode(tls_echo_server, client_ctx):
    """wrap_socket makes a new socket object over the fd: transparent mode still knows it."""
    arca_control.install("--no-dns")
    try:
        raw = socket.create_connection(tls_echo_server.address, timeout=WAIT)
        local = raw.getsockname()
        assert local[0] == "127.0.0.1"
        with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            # What a TLS socket over a TCP socket gives: the TCP addresses.
            assert (tls.getpeername(), tls.getsockname()) == (tls_echo_server.address, local)
            tls.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # lands on the monitor's socket
            assert tls.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        arca_control.uninstall()


def test_sync_tls_server_through_arca_with_a_stdlib_client(server_ctx, client_ctx):
    payload = os.urandom(MIB)
    with arca_control.sync.open_session("--no-dns") as s, s.listen("127.0.0.1", 0) as listener:
        host, port = listener.getsockname()[:2]
        echoes: list[tuple[bytes, str | None, bytes | None]] = []
        failures: list[BaseException] = []

        def client() -> None:
            try:
                echoes.append(stdlib_tls_client((host, port), client_ctx, payload))
            except BaseException as exc:
                failures.append(exc)

        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        accepted: concurrent.futures.Future[tuple[ArcaSocket, Address]] = concurrent.futures.Future()
        threading.Thread(target=lambda: accepted.set_result(listener.accept()), daemon=True).start()
        conn, _ = accepted.result(timeout=WAIT)
        conn.settimeout(WAIT)
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            (length,) = struct.unpack("!I", recv_exactly(tls, 4))
            received = recv_exactly(tls, length)
            tls.sendall(received)
            thread.join(WAIT)
        assert not failures, failures
        [(echoed, _, _)] = echoes
        assert digest(received) == digest(payload) == digest(echoed)


def test_sync_tls_wrong_hostname_fails_verification(tls_echo_server, client_ctx):
    with arca_control.sync.open_session("--no-dns") as s:
        raw = s.create_connection(tls_echo_server.address, timeout=WAIT)
        with pytest.raises(ssl.SSLCertVerificationError) as caught:
            client_ctx.wrap_socket(raw, server_hostname="wrong.example")
        assert "wrong.example" in str(caught.value)
        raw.close()

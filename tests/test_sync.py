"""The blocking API (arca_control.sync) against real stdlib peers on loopback."""

from __future__ import annotations

import concurrent.futures
import errno
import http.client
import http.server
import os
import socket
import socketserver
import threading
import time
import urllib.request
from typing import TYPE_CHECKING, TypeVar, TypeVarTuple

import pytest

import arca_control.sync
from arca_control.sync import ArcaSocket

from .conftest import closed_port, errno_is, serving

if TYPE_CHECKING:
    from collections.abc import Callable

    from arca_control.session import ArcaSession
    from arca_control.sync import AddrInfo

T = TypeVar("T")
Args = TypeVarTuple("Args")

#: Upper bound, in seconds, on any single wait in this file.
WAIT = 10
HOST_NAME = "arca-test.example"


def bounded(fn: Callable[[*Args], T], *args: *Args, timeout: float = WAIT) -> T:
    """``fn(*args)`` in a daemon thread, waited for at most ``timeout`` seconds (so nothing can hang)."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        try:
            future.set_result(fn(*args))
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return future.result(timeout=timeout)


def recv_exactly(sock: socket.socket, count: int) -> bytes:
    chunks, got = [], 0
    while got < count:
        chunk = sock.recv(min(count - got, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(WAIT)
        try:
            while data := self.request.recv(1 << 16):
                self.request.sendall(data)
        except OSError:
            pass


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@pytest.fixture(scope="module")
def echo_server():
    """A stdlib threaded echo server on a kernel-chosen loopback port: its (host, port)."""
    with serving(_EchoServer(("127.0.0.1", 0), _EchoHandler)) as server:
        yield server.server_address[:2]


class _HTTPHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = f"hello {self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Seen-Host", self.headers.get("Host", ""))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[::-1])

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def http_server():
    """A stdlib ThreadingHTTPServer on loopback: its (host, port)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HTTPHandler)
    server.daemon_threads = True
    with serving(server):
        yield server.server_address[:2]


@pytest.fixture(scope="module")
def hosts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hosts") / "hosts"
    path.write_text(f"127.0.0.1 {HOST_NAME}\n")
    return path


@pytest.fixture(scope="module")
def s(hosts_file):
    """One blocking session for the module, with a hosts file naming HOST_NAME (DNS off)."""
    with arca_control.sync.open_session("--no-dns", "--hosts-file", str(hosts_file)) as session:
        yield session


def resolve_requests(session: arca_control.sync.Session) -> int:
    """How many Resolve requests the monitor has seen from this session."""
    stats = session.stats()
    return stats["requests"].get("Resolve", 0)


# --- create_connection ---------------------------------------------------------------------


def test_create_connection_echoes_through_a_stdlib_server(s, echo_server):
    with s.create_connection(echo_server, timeout=WAIT) as sock:
        assert isinstance(sock, ArcaSocket)
        assert isinstance(sock, socket.socket)
        assert sock.family == socket.AF_UNIX  # the socket channel under the hood
        assert sock.getpeername() == echo_server
        local = sock.getsockname()
        assert isinstance(local, tuple)
        local_host, local_port = local[:2]
        assert local_host == "127.0.0.1"
        assert 0 < local_port < 65536
        assert local_port != echo_server[1]
        for payload in (b"x", b"hello arca", os.urandom(200_000)):
            sock.sendall(payload)
            assert recv_exactly(sock, len(payload)) == payload
        sock.shutdown(socket.SHUT_WR)  # the echo server sees EOF and closes: we read EOF
        assert recv_all(sock) == b""


def test_create_connection_sets_the_timeout_it_was_given(s, echo_server):
    with s.create_connection(echo_server, timeout=3.25) as sock:
        assert sock.gettimeout() == 3.25
        # The timeout is really in force: nothing is sent, so a read times out.
        started = time.monotonic()
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(10)
        assert time.monotonic() - started < 0.2 + 2
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(7.5)
    try:
        with s.create_connection(echo_server) as sock:  # no timeout given: the stdlib's default
            assert sock.gettimeout() == 7.5
    finally:
        socket.setdefaulttimeout(previous)


def test_create_connection_makefile(s, echo_server):
    with s.create_connection(echo_server, timeout=WAIT) as sock, sock.makefile("rwb") as f:
        lines = [f"line {i}\n".encode() for i in range(50)]
        for line in lines:
            f.write(line)
        f.flush()
        assert [f.readline() for _ in lines] == lines
    with s.create_connection(echo_server, timeout=WAIT) as sock:
        writer = sock.makefile("w", encoding="utf-8", newline="\n")
        reader = sock.makefile("r", encoding="utf-8", newline="\n")
        writer.write("héllo, wörld\n")
        writer.flush()
        assert reader.readline() == "héllo, wörld\n"
        writer.close()
        reader.close()


def test_create_connection_rejects_source_address(s, echo_server):
    with pytest.raises(OSError, check=errno_is(errno.EOPNOTSUPP)):
        s.create_connection(echo_server, timeout=WAIT, source_address=("127.0.0.1", 0))


# --- http.client and urllib ----------------------------------------------------------------


def test_http_client_over_an_arca_socket(s, http_server):
    host, port = http_server
    conn = http.client.HTTPConnection(host, port, timeout=WAIT)
    conn.sock = s.create_connection(http_server, timeout=WAIT)
    arca_sock = conn.sock
    try:
        conn.request("GET", "/first")
        response = conn.getresponse()
        assert response.status == 200
        assert response.read() == b"hello /first"
        # Keep-alive: a second request on the same connection, with a body.
        conn.request("POST", "/echo", body=b"0123456789" * 1000)
        response = conn.getresponse()
        assert response.status == 201
        assert response.read() == (b"0123456789" * 1000)[::-1]
        assert conn.sock is arca_sock  # never reconnected by http.client itself
    finally:
        conn.close()


def _arca_opener(session: arca_control.sync.Session, connects: list[socket.socket]) -> urllib.request.OpenerDirector:
    """A urllib opener whose HTTP connections are made by ``session``; each connect is recorded."""

    class ArcaHTTPConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = session.create_connection((self.host, self.port), self.timeout)
            connects.append(self.sock)

    class ArcaHTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(ArcaHTTPConnection, req)

    # No proxies from the environment: the request must go straight through arca.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), ArcaHTTPHandler())


def test_urllib_through_the_sync_api(s, http_server):
    connects: list[socket.socket] = []
    opener = _arca_opener(s, connects)
    port = http_server[1]
    with opener.open(f"http://127.0.0.1:{port}/by-address", timeout=WAIT) as response:
        assert response.status == 200
        assert response.read() == b"hello /by-address"
    # By a name only the monitor's hosts file knows: the system resolver could not have found it.
    with opener.open(f"http://{HOST_NAME}:{port}/by-name", timeout=WAIT) as response:
        assert response.status == 200
        assert response.headers["X-Seen-Host"] == f"{HOST_NAME}:{port}"
        assert response.read() == b"hello /by-name"
    request = urllib.request.Request(f"http://127.0.0.1:{port}/post", data=b"abcdef", method="POST")
    with opener.open(request, timeout=WAIT) as response:
        assert response.status == 201
        assert response.read() == b"fedcba"
    assert len(connects) == 3
    assert all(isinstance(sock, ArcaSocket) and sock.getpeername() == ("127.0.0.1", port) for sock in connects)


# --- errors and names ----------------------------------------------------------------------


def test_connection_refused(s):
    port = closed_port()
    with pytest.raises(ConnectionRefusedError) as caught:
        s.create_connection(("127.0.0.1", port), timeout=WAIT)
    assert caught.value.errno == errno.ECONNREFUSED


def test_connect_to_a_stalled_address_times_out(s, stalled_address):
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        s.create_connection(stalled_address, timeout=0.3)
    assert time.monotonic() - started < 5


def test_getaddrinfo_of_an_unknown_name_raises_gaierror(s):
    with pytest.raises(socket.gaierror) as caught:
        s.getaddrinfo("no-such-host.invalid", 80)
    assert caught.value.errno == socket.EAI_NONAME
    with pytest.raises(socket.gaierror):
        s.gethostbyname("no-such-host.invalid")
    with pytest.raises(socket.gaierror):  # create_connection by that name fails too
        s.create_connection(("no-such-host.invalid", 80), timeout=WAIT)


def test_numeric_getaddrinfo_is_answered_without_the_monitor(s):
    before = resolve_requests(s)
    for host, family, kind in (("127.0.0.1", 0, 0), ("127.0.0.1", socket.AF_INET, socket.SOCK_STREAM),
                               ("::1", socket.AF_INET6, socket.SOCK_STREAM), ("::1", 0, socket.SOCK_DGRAM)):
        assert s.getaddrinfo(host, 8080, family, kind) == socket.getaddrinfo(host, 8080, family, kind)
    assert s.getaddrinfo("127.0.0.1", "8080", socket.AF_INET, socket.SOCK_STREAM) == [
        (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", 8080))
    ]
    assert s.gethostbyname("127.0.0.1") == "127.0.0.1"
    assert resolve_requests(s) == before  # nothing was asked of the monitor


def test_a_name_from_the_monitors_hosts_file(s, echo_server):
    port = echo_server[1]
    assert s.getaddrinfo(HOST_NAME, port, socket.AF_INET, socket.SOCK_STREAM) == [
        (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", port))
    ]
    both = s.getaddrinfo(HOST_NAME, port)
    assert {(family, kind, address) for family, kind, _, _, address in both} >= {
        (socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", port)),
    }
    assert all(address == ("127.0.0.1", port) for *_, address in both)
    assert s.gethostbyname(HOST_NAME) == "127.0.0.1"
    with s.create_connection((HOST_NAME, port), timeout=WAIT) as sock:
        assert sock.getpeername() == ("127.0.0.1", port)
        sock.sendall(b"by name")
        assert recv_exactly(sock, 7) == b"by name"


# --- listen and accept ---------------------------------------------------------------------


def test_listen_and_accept_a_stdlib_client(s):
    with s.listen("127.0.0.1", 0) as listener:
        host, port = listener.getsockname()
        assert host == "127.0.0.1"
        assert port > 0
        for round_ in range(2):
            with socket.create_connection((host, port), timeout=WAIT) as client:
                conn, peer = bounded(listener.accept)
                with conn:
                    assert isinstance(conn, ArcaSocket)
                    assert peer == client.getsockname()
                    assert conn.getpeername() == client.getsockname()
                    assert conn.getsockname() == (host, port)
                    conn.settimeout(WAIT)
                    client.sendall(b"ping %d" % round_)
                    assert recv_exactly(conn, 6) == b"ping %d" % round_
                    conn.sendall(b"pong")
                    conn.shutdown(socket.SHUT_WR)
                    assert recv_all(client) == b"pong"
    # Closed: the monitor no longer listens there.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((host, port), timeout=WAIT)


def test_listener_accept_several_queued_connections(s):
    with s.listen("127.0.0.1", 0) as listener:
        address = listener.getsockname()
        clients = [socket.create_connection(address, timeout=WAIT) for _ in range(4)]
        try:
            by_port = {client.getsockname()[1]: client for client in clients}
            for _ in clients:
                conn, peer = bounded(listener.accept)
                with conn:
                    conn.settimeout(WAIT)
                    conn.sendall(str(peer[1]).encode())
                    conn.shutdown(socket.SHUT_WR)
                    assert recv_all(by_port.pop(peer[1])) == str(peer[1]).encode()
            assert not by_port
        finally:
            for client in clients:
                client.close()


# --- many threads at once ------------------------------------------------------------------


def test_eight_threads_connect_and_echo_at_once(s, echo_server):
    barrier = threading.Barrier(8, timeout=WAIT)

    def work(index: int) -> list[bytes]:
        barrier.wait()
        results = []
        for round_ in range(5):
            payload = f"thread {index} round {round_} ".encode() * (100 + 37 * index)
            with s.create_connection(echo_server, timeout=WAIT) as sock:
                sock.sendall(payload)
                sock.shutdown(socket.SHUT_WR)
                results.append(recv_all(sock))
        return results

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(work, index) for index in range(8)]
        for index, future in enumerate(futures):
            got = future.result(timeout=WAIT * 2)
            assert got == [f"thread {index} round {round_} ".encode() * (100 + 37 * index) for round_ in range(5)]


def test_eight_threads_getaddrinfo_at_once(s):
    barrier = threading.Barrier(8, timeout=WAIT)

    def work(index: int) -> list[list[AddrInfo]]:
        barrier.wait()
        # Each thread asks for its own port, so a reply routed to the wrong caller would show.
        return [s.getaddrinfo(HOST_NAME, 2000 + 10 * index + i, socket.AF_INET, socket.SOCK_STREAM)
                for i in range(5)]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(work, index) for index in range(8)]
        for index, future in enumerate(futures):
            assert future.result(timeout=WAIT * 2) == [
                [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", 2000 + 10 * index + i))]
                for i in range(5)
            ]


# --- after the session ---------------------------------------------------------------------


def test_calls_after_the_session_closes_raise_oserror(hosts_file, echo_server):
    session = arca_control.sync.open_session("--no-dns", "--hosts-file", str(hosts_file))
    with session:
        sock = session.create_connection(echo_server, timeout=WAIT)
        listener = session.listen("127.0.0.1", 0)
        listener_address = listener.getsockname()
    try:
        with pytest.raises(OSError, check=errno_is(errno.EBADF)):
            session.create_connection(echo_server, timeout=WAIT)
        with pytest.raises(OSError, check=errno_is(errno.EBADF)):
            session.getaddrinfo(HOST_NAME, 80)
        with pytest.raises(OSError, check=errno_is(errno.EBADF)):
            session.gethostbyname(HOST_NAME)
        with pytest.raises(OSError, check=errno_is(errno.EBADF)):
            session.listen("127.0.0.1", 0)
        with pytest.raises(OSError, check=errno_is(errno.EBADF)):
            bounded(listener.accept)
        # The monitor is gone: its listening socket with it, and a socket handed out reads EOF.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(listener_address[:2], timeout=WAIT)
        sock.settimeout(WAIT)
        assert sock.recv(10) == b""
        session.close()  # closing again is harmless
    finally:
        sock.close()


def test_closing_the_session_releases_a_thread_blocked_in_accept():
    session = arca_control.sync.open_session("--no-dns")
    listener = session.listen("127.0.0.1", 0)
    outcome: concurrent.futures.Future[BaseException | None] = concurrent.futures.Future()

    def accept() -> None:
        try:
            listener.accept()
        except BaseException as exc:
            outcome.set_result(exc)
        else:
            outcome.set_result(None)

    threading.Thread(target=accept, daemon=True).start()
    time.sleep(0.2)  # let it block in the monitor
    session.close()
    assert isinstance(outcome.result(timeout=WAIT), OSError)
    listener.close()  # after its session: harmless, as a socket's close is


def test_a_monitor_that_never_answers_times_out(tmp_path, monkeypatch):
    """A monitor socket that takes the connection but never answers Hello: open_session gives up."""
    from arca_control import portal

    silent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    silent.bind(str(tmp_path / "silent.sock"))
    silent.listen(1)  # the kernel completes the connect; nobody ever accepts
    monkeypatch.setattr(portal, "START_TIMEOUT", 0.5)
    monkeypatch.setenv("ARCA_MONITOR", str(tmp_path / "silent.sock"))
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        arca_control.sync.open_session()
    assert time.monotonic() - started < WAIT
    silent.close()


def test_a_portal_call_from_the_portal_thread_is_refused(s):
    async def inner(trio_session: ArcaSession) -> object:
        # In the portal's own thread, as every submitted call is.
        return s.portal.call(lambda trio_session: trio_session.stats())

    with pytest.raises(RuntimeError):
        s.portal.call(inner)


def test_getaddrinfo_of_a_name_has_the_stdlibs_shape(s):
    with pytest.raises(socket.gaierror) as caught:
        s.getaddrinfo(HOST_NAME, 80, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_TCP)
    assert caught.value.errno == socket.EAI_SOCKTYPE
    with pytest.raises(socket.gaierror) as caught:
        s.getaddrinfo(HOST_NAME, "http", flags=socket.AI_NUMERICSERV)
    assert caught.value.errno == socket.EAI_NONAME
    # proto alone picks the type; a service name becomes its port.
    assert s.getaddrinfo(HOST_NAME, "53", proto=socket.IPPROTO_UDP) == [
        (socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP, "", ("127.0.0.1", 53))]
    tcp_port = socket.getservbyname("http", "tcp")
    infos = s.getaddrinfo(HOST_NAME, "http", type=socket.SOCK_STREAM, flags=socket.AI_CANONNAME)
    assert infos == [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, HOST_NAME, ("127.0.0.1", tcp_port))]
    both = s.getaddrinfo(HOST_NAME, 7, flags=socket.AI_CANONNAME)
    assert [info[2] for info in both] == [socket.IPPROTO_TCP, socket.IPPROTO_UDP]
    assert [info[3] for info in both] == [HOST_NAME, ""]  # the canonical name, on the first entry only

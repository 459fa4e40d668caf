"""Transparent mode: unmodified stdlib clients (urllib, http.client, socket) through the monitor.

Two ways in: ``arca_control.install()`` in this process, and plain
``arca-run`` running an unmodified program in its sandbox, where nothing but
the monitor can carry its connections: the host's server is reached as
``host.arca.internal`` (127.0.0.1 there is the sandbox's own), allowed by a
rule for the host's 127.0.0.1. ``--transparent`` is an accepted no-op now.
"""

from __future__ import annotations

import errno
import http.client
import http.server
import os
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.request
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest
import trustme

import arca_control
from arca_control import transparent

from .conftest import closed_port, errno_is, serving

if TYPE_CHECKING:
    from arca_control.session import SessionStats

RUN = [sys.executable, "-m", "arca_monitor.run", "--no-dns"]


def from_sandbox(url: str) -> tuple[str, str]:
    """The host's ``url`` as the sandbox reaches it, and the rule that lets it through."""
    port = url.rsplit(":", 1)[1]
    return url.replace("127.0.0.1", "host.arca.internal"), f"--allow-connect=127.0.0.1:{port}"


class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"hello {self.path} from {self.client_address[0]}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@contextmanager
def http_server(context: ssl.SSLContext | None = None):
    """A local stdlib HTTP(S) server on a kernel-chosen loopback port: its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    scheme = "https" if context else "http"
    with serving(server):
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}"


def stats() -> SessionStats:
    session = transparent.current_session()
    assert session is not None
    return session.stats()


def test_install_routes_urllib_and_http_client_and_uninstall_restores():
    originals = (socket.create_connection, socket.getaddrinfo, socket.socket.connect)
    with http_server() as url:
        arca_control.install("--no-dns")
        try:
            assert transparent.installed()
            assert urllib.request.urlopen(f"{url}/u", timeout=10).read() == b"hello /u from 127.0.0.1"
            port = int(url.rsplit(":", 1)[1])
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/h")
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"hello /h from 127.0.0.1")
            conn.close()
            # A plain socket's connect is routed too; TCP options land on the monitor's real socket.
            sock = socket.socket()
            sock.settimeout(10)
            sock.connect(("127.0.0.1", port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert sock.getpeername() == ("127.0.0.1", port)
            assert sock.getsockname()[0] == "127.0.0.1"
            assert sock.family == socket.AF_INET
            assert sock.gettimeout() == 10
            sock.close()
            counters = stats()
            assert counters["requests"]["Connect"] == 3
            assert counters["bytes_down"] > 0
            # AF_UNIX and listening sockets pass through untouched.
            a, b = socket.socketpair()
            a.close()
            b.close()
        finally:
            arca_control.uninstall()
    assert (socket.create_connection, socket.getaddrinfo, socket.socket.connect) == originals
    assert not transparent.installed()


def test_errors_and_names_in_transparent_mode(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 arca-test.example\n")
    refused_port = closed_port()
    arca_control.install("--no-dns", "--hosts-file", str(hosts))
    try:
        assert socket.gethostbyname("arca-test.example") == "127.0.0.1"
        assert socket.getaddrinfo("arca-test.example", 80, type=socket.SOCK_STREAM)[0][4] == ("127.0.0.1", 80)
        with pytest.raises(socket.gaierror):
            socket.getaddrinfo("not-there.example", 80)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", refused_port), timeout=5)
        sock = socket.socket()
        assert sock.connect_ex(("127.0.0.1", refused_port)) == 111  # ECONNREFUSED
        sock.close()
    finally:
        arca_control.uninstall()


def _run(*args: str, env_extra: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RUN, *args], capture_output=True, text=True, timeout=timeout)


APP = textwrap.dedent(
    """
    import http.client, os, socket, sys, urllib.request
    url = sys.argv[1]
    print(urllib.request.urlopen(url + "/urllib", timeout=10).read().decode())
    host, port = url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/http.client")
    print(conn.getresponse().read().decode())
    pid = os.fork()
    if pid == 0:  # a forked child opens its own session
        ok = urllib.request.urlopen(url + "/child", timeout=10).read().startswith(b"hello /child")
        os._exit(0 if ok else 1)
    print("child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(5)
    try:  # TEST-NET-1: the sandbox has only lo, so this can reach nothing but its refusal rule
        udp.connect(("192.0.2.1", 9))
        udp.send(b"x")
        udp.recv(1)
        print("udp: received")
    except OSError as exc:
        print("udp: errno", exc.errno)
    """
)


def test_arca_run_runs_an_unmodified_program():
    with http_server() as url:
        inside, rule = from_sandbox(url)
        result = _run(rule, "--", sys.executable, "-I", "-c", APP, inside)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "hello /urllib from 127.0.0.1",
        "hello /http.client from 127.0.0.1",
        "child 0",
        "udp: errno 111",  # UDP is not relayed: the sandbox refuses it at once (ECONNREFUSED)
    ]


def test_without_transparent_the_same_program_has_no_network():
    with http_server() as url:
        result = subprocess.run([sys.executable, "-m", "arca_monitor.run", "--no-dns", "--", sys.executable, "-c",
                                 "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=5)", url],
                                capture_output=True, text=True, timeout=60)
    # 127.0.0.1 is the sandbox's own loopback, where the host's server is not.
    assert result.returncode == 1
    assert "Connection refused" in result.stderr


def test_the_monitors_policy_still_decides():
    """A denied connection is reset at once (the program's connect had already succeeded against the monitor)."""
    with http_server() as url:
        port = int(url.rsplit(":", 1)[1])
        inside, _ = from_sandbox(url)
        result = _run("--allow-connect", f"127.0.0.1:{port + 1 if port < 65535 else port - 1}", "--",
                      sys.executable, "-I", "-c",
                      "import urllib.request, sys\n"
                      "try:\n urllib.request.urlopen(sys.argv[1], timeout=5)\n"
                      "except OSError as exc:\n"
                      " reason = getattr(exc, 'reason', exc)  # URLError if it came before the request went\n"
                      " print(type(reason).__name__, reason.errno)", inside)
    assert result.stdout.strip() == "ConnectionResetError 104", result.stderr


def test_https_through_transparent_mode(tmp_path):
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1", "host.arca.internal").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    app = textwrap.dedent(
        """
        import ssl, sys, urllib.request
        context = ssl.create_default_context(cafile=sys.argv[2])
        print(urllib.request.urlopen(sys.argv[1] + "/tls", timeout=10, context=context).read().decode())
        """
    )
    with http_server(server_context) as url:
        inside, rule = from_sandbox(url)
        result = _run(rule, "--", sys.executable, "-I", "-c", app, inside, str(ca_file))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello /tls from 127.0.0.1"


def test_asyncio_in_transparent_mode():
    app = textwrap.dedent(
        """
        import asyncio, sys
        async def main():
            reader, writer = await asyncio.open_connection("host.arca.internal", int(sys.argv[1]))
            writer.write(b"GET /asyncio HTTP/1.0\\r\\n\\r\\n")
            await writer.drain()
            print((await reader.read()).split(b"\\r\\n\\r\\n", 1)[1].decode())
            writer.close()
        asyncio.run(main())
        """
    )
    with http_server() as url:
        _, rule = from_sandbox(url)
        result = _run(rule, "--", sys.executable, "-I", "-c", app, url.rsplit(":", 1)[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello /asyncio from 127.0.0.1"


def test_connect_twice_is_eisconn_and_options_set_before_connect_carry_over():
    with http_server() as url:
        port = int(url.rsplit(":", 1)[1])
        arca_control.install("--no-dns")
        try:
            sock = socket.socket()
            sock.settimeout(10)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as urllib3 does, before connect
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 42)
            sock.connect(("127.0.0.1", port))
            # Read back from the monitor's real socket.
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 42
            with pytest.raises(OSError, check=errno_is(errno.EISCONN)):
                sock.connect(("127.0.0.1", port))
            sock.close()
        finally:
            arca_control.uninstall()


def test_the_startup_hook_needs_a_monitor_and_keeps_the_programs_own_sitecustomize(tmp_path):
    own = tmp_path / "own"
    own.mkdir()
    (own / "sitecustomize.py").write_text("import builtins\nbuiltins.OWN_SITECUSTOMIZE = True\n")
    check = ("import builtins, socket; print(getattr(builtins, 'OWN_SITECUSTOMIZE', False), "
             "socket.create_connection.__module__)")
    hook = os.path.join(os.path.dirname(arca_control.__file__), "_site")
    # ARCA_TRANSPARENT without ARCA_MONITOR: nothing is installed (and no monitor spawned).
    env = {k: v for k, v in os.environ.items() if k != "ARCA_MONITOR"}
    env.update(ARCA_TRANSPARENT="1", PYTHONPATH=os.pathsep.join([hook, str(own)]))
    result = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["True", "socket"], result.stderr
    # ARCA_TRANSPARENT with ARCA_MONITOR (a monitor of its own, not arca-run): installed, and the
    # program's own sitecustomize still ran.
    socket_path = tmp_path / "monitor.sock"
    monitor = subprocess.Popen([sys.executable, "-m", "arca_monitor", "--socket", str(socket_path), "--no-dns"])
    try:
        deadline = time.monotonic() + 30
        while not socket_path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60,
                                env={**env, "ARCA_MONITOR": str(socket_path)})
    finally:
        monitor.terminate()
        monitor.wait(timeout=30)
    assert result.stdout.split() == ["True", "arca_control.transparent"], result.stderr
    # Under arca-run, --transparent is a no-op that says so once: nothing is patched, nothing needs to be.
    result = subprocess.run([*RUN, "--transparent", "--", sys.executable, "-c", check], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(own)})
    assert result.stdout.split() == ["True", "socket"], result.stderr
    assert result.stderr.count("--transparent is no longer needed") == 1


def test_aio_and_sync_guests_attach_to_arca_runs_monitor():
    """Under arca-run (no --transparent) the aio and sync sessions attach to ARCA_MONITOR."""
    app = textwrap.dedent(
        """
        import asyncio, sys, arca_control.aio, arca_control.sync
        port = int(sys.argv[1])
        async def main():
            async with arca_control.aio.open_session() as s:
                reader, writer = await s.open_connection("127.0.0.1", port)
                writer.write(b"GET /aio HTTP/1.0\\r\\n\\r\\n")
                print((await reader.read()).split(b"\\r\\n\\r\\n", 1)[1].decode())
                writer.close()
        asyncio.run(main())
        with arca_control.sync.open_session() as s:
            sock = s.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"GET /sync HTTP/1.0\\r\\n\\r\\n")
            print(sock.makefile("rb").read().split(b"\\r\\n\\r\\n", 1)[1].decode())
        """
    )
    with http_server() as url:
        port = url.rsplit(":", 1)[1]
        result = subprocess.run([sys.executable, "-m", "arca_monitor.run", "--no-dns", "--allow-connect",
                                 f"127.0.0.1:{port}", "--", sys.executable, "-c", app, port],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["hello /aio from 127.0.0.1", "hello /sync from 127.0.0.1"]

"""The intercept front end: real programs in arca-run's sandbox (curl, socat, getent, sh, python -I, pip) reach
the host only through the monitor, by its policy, and everything else fails at once.

Safety: every destination allowed here is the host's loopback, reached as
``host.arca.internal`` or as a hosts-file name mapped to 127.0.0.1; the
monitor's resolver is a hosts file or tests/dns_server.py on loopback, never
the system's. The one test whose programs name a non-loopback address
(192.0.2.x, TEST-NET-1) runs the whole arca-run inside an outer ``unshare -n``
and denies it by policy, so the monitor refuses it before connecting.

Most tests run as root and, where the machine allows, as ``nobody`` in a user
namespace (the modes of tests/test_sandbox.py). The files the monitor reads
there live in a directory nobody may read.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import os
import random
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import zipfile
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest
import trio

from .conftest import serving
from .dns_server import dns_server
from .sandbox_modes import Mode, host_directory
from .test_sandbox import processes_with

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

HOST = "host.arca.internal"



@pytest.fixture
def shared() -> Iterator[str]:
    """A directory the monitor may read in either mode (it runs as nobody in the user mode)."""
    with host_directory("arca-intercept-", 0o755) as path:
        yield path


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found is not None, f"{name} is a system dependency (make system-deps)"
    return found


def arca_run(mode: Mode, *argv: str, hosts: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """arca-run in ``mode``, with ``argv`` (options, ``--``, command), the audit log on stderr; output captured."""
    resolver = ["--hosts-file", hosts] if hosts else ["--no-dns", "--hosts-file", os.devnull]
    command = [*mode.as_user, mode.python, "-m", "arca_monitor.run", *resolver, "--audit-log", "-", *argv]
    return subprocess.run(command, env=mode.env, cwd="/", capture_output=True, text=True, timeout=timeout)


def audit_of(result: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    return [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]


def events(result: subprocess.CompletedProcess[str], *names: str) -> list[dict[str, object]]:
    return [record for record in audit_of(result) if record["event"] in names]


class Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def file_server(directory: str) -> Iterator[int]:
    """An HTTP server for ``directory`` on the host's 127.0.0.1: its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: Files(*a, directory=directory))
    with serving(server):
        yield server.server_address[1]


def test_a_byte_exact_download_through_host_arca_internal(mode: Mode, shared: str) -> None:
    blob = random.randbytes(4 << 20)
    with open(os.path.join(shared, "blob"), "wb") as file:
        file.write(blob)
    with file_server(shared) as port:
        result = arca_run(mode, f"--allow-connect=127.0.0.1:{port}", "--", "sh", "-c",
                          f"{tool('curl')} -sS --noproxy '*' http://{HOST}:{port}/blob | sha256sum")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == hashlib.sha256(blob).hexdigest()
    [opened] = events(result, "open")
    assert (opened["session"], opened["via"], opened["name"], opened["decision"]) == (0, "intercept", HOST, "allowed")
    assert opened["peer"] == f"127.0.0.1:{port}"
    assert str(opened["destination"]).startswith("127.100.0.1:")
    [closed] = events(result, "close")
    assert closed["how"] == "closed"
    assert int(str(closed["bytes_down"])) > len(blob)


def half_close_server(listener: socket.socket, log: list[bytes]) -> None:
    """First connection: read to EOF, then answer. Second: send and shut down first, then read to EOF."""
    for first in (True, False):
        conn, _ = listener.accept()
        with conn:
            if not first:
                conn.sendall(b"hello first\n")
                conn.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            log.append(data)
            if first:
                conn.sendall(b"got %d bytes\n" % len(data))


def test_half_close_both_ways_with_socat(mode: Mode) -> None:
    socat = tool("socat")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)
    port = listener.getsockname()[1]
    received: list[bytes] = []
    thread = threading.Thread(target=half_close_server, args=(listener, received))
    thread.start()
    script = (f"printf 'up to EOF' | {socat} -t 5 - TCP:{HOST}:{port}; "
              f"(sleep 0.5; printf 'after your EOF') | {socat} -t 5 - TCP:{HOST}:{port}")
    try:
        result = arca_run(mode, f"--allow-connect=127.0.0.1:{port}", "--", "sh", "-c", script)
    finally:
        thread.join(30)
        listener.close()
    assert result.returncode == 0, result.stderr
    # The guest's FIN reached the server, whose answer still came back; the server's FIN reached the
    # guest, whose data still went through.
    assert result.stdout == "got 9 bytes\nhello first\n"
    assert received == [b"up to EOF", b"after your EOF"]
    changes = [(record["connection_id"], record["event"]) for record in events(result, "guest_eof", "peer_eof")]
    assert changes == [(1, "guest_eof"), (1, "peer_eof"), (2, "peer_eof"), (2, "guest_eof")]


def test_a_name_rule_through_the_sandboxs_dns(mode: Mode, shared: str) -> None:
    hosts = os.path.join(shared, "hosts")
    with open(hosts, "w") as file:
        file.write("127.0.0.1 svc.arca-test.example\n")
    with open(os.path.join(shared, "page"), "w") as file:
        file.write("by name\n")
    with file_server(shared) as port:
        script = (f"getent hosts svc.arca-test.example; "
                  f"{tool('curl')} -sS --noproxy '*' http://svc.arca-test.example:{port}/page")
        result = arca_run(mode, f"--allow-connect=svc.arca-test.example:{port}", "--", "sh", "-c", script, hosts=hosts)
    assert result.returncode == 0, result.stderr
    address, name = result.stdout.splitlines()[0].split()
    assert name == "svc.arca-test.example"
    assert address.startswith("127.100.")
    assert result.stdout.splitlines()[1] == "by name"
    [opened] = events(result, "open")
    assert (opened["name"], opened["destination"], opened["peer"]) == (
        "svc.arca-test.example", f"{address}:{port}", f"127.0.0.1:{port}")


async def test_a_denied_name_is_never_asked_upstream(mode: Mode) -> None:
    zone = {"allowed.arca-test.example": [("A", "127.0.0.1", 60)], "denied.arca-test.example": [("A", "127.0.0.1", 60)]}
    async with dns_server(zone) as (host, port, server):
        command = [*mode.as_user, mode.python, "-m", "arca_monitor.run", "--resolver", f"{host}:{port}",
                   "--hosts-file", os.devnull, "--allow-resolve", "allowed.arca-test.example",
                   # DNS may lead a name to loopback only where a CIDR rule names it (rebinding protection)
                   "--allow-connect", "127.0.0.1:1", "--audit-log", "-",
                   "--", "sh", "-c", ("getent hosts allowed.arca-test.example; getent hosts denied.arca-test.example;"
                   " echo status $?")]
        with trio.fail_after(60):
            result = await trio.run_process(command, env=mode.env, cwd="/", capture_stdout=True,
                                            capture_stderr=True, check=False)
        assert server.count("denied.arca-test.example") == 0
        assert server.count("allowed.arca-test.example") >= 1
    lines = result.stdout.decode().splitlines()
    assert lines[0].split()[1] == "allowed.arca-test.example"
    assert lines[0].startswith("127.100.")
    assert lines[1] == "status 2"  # getent: not found
    denied = [record for record in audit_of(subprocess.CompletedProcess([], 0, "", result.stderr.decode()))
              if record.get("name") == "denied.arca-test.example"]
    assert denied
    assert {(record["decision"], record["rcode"]) for record in denied} == {("denied", "NXDOMAIN")}
    assert all("--allow-resolve" in str(record["reason"]) for record in denied)


def test_a_denied_port_fails_fast_and_is_audited(mode: Mode) -> None:
    with socket.create_server(("127.0.0.1", 0)) as open_server:
        port = open_server.getsockname()[1]
        other = port + 1 if port < 65535 else port - 1
        script = (f"start=$(date +%s%N); {tool('curl')} -sS --noproxy '*' http://{HOST}:{other}/; echo curl $?;"
                  f" echo ms $(( ($(date +%s%N) - start) / 1000000 ))")
        result = arca_run(mode, f"--allow-connect=127.0.0.1:{port}", "--", "sh", "-c", script)
    lines = dict(line.split() for line in result.stdout.splitlines())
    assert lines["curl"] in ("7", "56"), result.stderr  # couldn't connect, or reset: never 28 (timed out)
    assert int(lines["ms"]) < 1000
    [refused] = events(result, "intercept")
    assert (refused["decision"], refused["errno"], refused["name"]) == ("denied", "EACCES", HOST)
    assert f"no --allow-connect rule for {HOST}:{other}" in str(refused["reason"])
    assert events(result, "open") == []


def test_loopback_inside_the_sandbox_never_reaches_the_monitor(mode: Mode) -> None:
    # A fixed port is safe here: it is in the sandbox's own, empty network namespace.
    socat = tool("socat")
    script = (f"{socat} -T 5 TCP-LISTEN:8123,bind=127.0.0.1,reuseaddr SYSTEM:'echo from inside' & sleep 0.5;"
              f" {socat} -T 5 - TCP:127.0.0.1:8123 </dev/null; wait")
    result = arca_run(mode, "--", "sh", "-c", script)
    assert (result.returncode, result.stdout) == (0, "from inside\n"), result.stderr
    # Only the sandbox's closing summary, which says nothing went out.
    [summary] = audit_of(result)
    assert summary["event"] == "summary"
    assert (summary["connections"], summary["denials"], summary["bytes_up"], summary["bytes_down"]) == (0, 0, 0, 0)


ASYNCIO = """
import asyncio, sys
async def one(n):
    reader, writer = await asyncio.open_connection(sys.argv[1], int(sys.argv[2]))
    writer.write(b"%d\\n" % n)
    await writer.drain()
    line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return line.decode().strip()
async def main():
    answers = await asyncio.gather(*(one(n) for n in range(30)))
    print(" ".join(answers))
asyncio.run(main())
"""


class Echo(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        self.wfile.write(b"echo " + self.rfile.readline())


def test_unpatched_asyncio_30_connections_at_once(mode: Mode) -> None:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    server.daemon_threads = True
    with serving(server):
        port = server.server_address[1]
        result = arca_run(mode, f"--allow-connect=127.0.0.1:{port}", "--", mode.python, "-I", "-c",
                          ASYNCIO, HOST, str(port))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [word for n in range(30) for word in ("echo", str(n))]
    assert len(events(result, "open")) == 30
    assert len(events(result, "close")) == 30


def test_unpatched_urllib(mode: Mode, shared: str) -> None:
    with open(os.path.join(shared, "index.html"), "w") as file:
        file.write("urllib works")
    with file_server(shared) as port:
        result = arca_run(mode, f"--allow-connect=127.0.0.1:{port}", "--", mode.python, "-I", "-c",
                          "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=10).read()"
                          ".decode())", f"http://{HOST}:{port}/")
    assert (result.returncode, result.stdout) == (0, "urllib works\n"), result.stderr


def tiny_wheel(directory: Path) -> str:
    """A pure-Python wheel of ``arca_tiny`` 1.0 written into ``directory``: its file name."""
    name = "arca_tiny-1.0-py3-none-any.whl"
    files = {
        "arca_tiny/__init__.py": "VALUE = 42\n",
        "arca_tiny-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: arca-tiny\nVersion: 1.0\n",
        "arca_tiny-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = io.StringIO()
    for path, text in files.items():
        digest = hashlib.sha256(text.encode()).digest()
        record.write(f"{path},sha256={base64.urlsafe_b64encode(digest).rstrip(b'=').decode()},{len(text)}\n")
    record.write("arca_tiny-1.0.dist-info/RECORD,,\n")
    with zipfile.ZipFile(directory / name, "w") as wheel:
        for path, text in {**files, "arca_tiny-1.0.dist-info/RECORD": record.getvalue()}.items():
            wheel.writestr(path, text)
    return name


def test_pip_install_from_a_local_index(tmp_path: Path) -> None:
    # The machine's pip configuration (its own indexes) stays out: only the index served here.
    root = Mode("root", [], sys.executable, {**os.environ, "PIP_CONFIG_FILE": os.devnull})
    package = tmp_path / "index" / "simple" / "arca-tiny"
    package.mkdir(parents=True)
    wheel = tiny_wheel(package)
    (package / "index.html").write_text(f'<html><body><a href="{wheel}">{wheel}</a></body></html>\n')
    target = tmp_path / "target"
    with file_server(str(tmp_path / "index")) as port:
        result = arca_run(root, f"--allow-connect=127.0.0.1:{port}", "--", sys.executable, "-I", "-m", "pip",
                          "install", "--index-url", f"http://{HOST}:{port}/simple/", "--no-deps",
                          "--trusted-host", HOST, "--disable-pip-version-check", "--no-cache-dir", "--target", str(target), "arca-tiny",
                          timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (target / "arca_tiny" / "__init__.py").read_text() == "VALUE = 42\n"
    assert {record["name"] for record in events(result, "open")} == {HOST}


OUTSIDE = """
import socket, sys, time
start = time.monotonic()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.settimeout(5)
udp.connect(("192.0.2.1", 9))
udp.send(b"x")
try:
    udp.recv(1)
except OSError as exc:
    print("udp", exc.errno, time.monotonic() - start < 0.5)
start = time.monotonic()
try:
    socket.create_connection(("192.0.2.1", 80), timeout=5).recv(1)
except OSError as exc:
    print("tcp", exc.errno, time.monotonic() - start < 0.5)
"""


def test_other_udp_and_a_denied_address_fail_fast_inside_an_outer_namespace() -> None:
    """The monitor faces 192.0.2.1 here: the whole arca-run runs in an outer ``unshare -n``, and policy denies it."""
    command = ["unshare", "-n", "--", "sh", "-ec", 'ip link set lo up; exec "$@"', "sh", sys.executable, "-m",
               "arca_monitor.run", "--no-dns", "--hosts-file", os.devnull, "--allow-connect", "127.0.0.1:1",
               "--audit-log", "-", "--", sys.executable, "-I", "-c", OUTSIDE]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["udp 111 True", "tcp 104 True"]  # ECONNREFUSED; ECONNRESET
    [refused_udp] = events(result, "udp_refused")
    assert refused_udp["destination"] == "192.0.2.1:9"
    [denied] = events(result, "intercept")
    assert denied["reason"] == "denied by policy: no --allow-connect rule for 192.0.2.1:80"
    assert events(result, "open") == []


def test_no_orphan_outlives_the_command_nor_its_connection(mode: Mode) -> None:
    socat = tool("socat")
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)
    port = listener.getsockname()[1]
    marker = f"{300 + random.random():.6f}"
    script = (f"(sleep {marker} | {socat} - TCP:{HOST}:{port}) & sleep 0.5; echo started")
    try:
        result = arca_run(mode, f"--allow-connect=127.0.0.1:{port}", "--", "sh", "-c", script)
        conn, _ = listener.accept()
    finally:
        listener.close()
    with conn:
        conn.settimeout(10)
        assert conn.recv(1) == b""  # the relayed connection ended with the sandbox
    assert (result.returncode, result.stdout) == (0, "started\n"), result.stderr
    assert processes_with(f"sleep\0{marker}") == []
    assert [record["how"] for record in events(result, "close")] in (["closed"], ["aborted"])


def test_transparent_is_an_accepted_no_op(mode: Mode) -> None:
    result = arca_run(mode, "--transparent", "--", "sh", "-c", "echo ran")
    assert (result.returncode, result.stdout) == (0, "ran\n")
    assert result.stderr.count("--transparent is no longer needed and does nothing") == 1


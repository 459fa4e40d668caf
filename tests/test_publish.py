"""arca-run --publish: an unmodified server in the sandbox, reached by the host's curl at the port arca-run printed.

Safety: the only destinations are loopback. The host's side is a listener
arca-run binds on 127.0.0.1 or ::1; the sandbox's side is the sandbox's own
loopback, where nothing but the test's server listens. The guest ports are
fixed numbers on purpose: the sandbox's loopback is its own (a fresh network
namespace per run), so they cannot collide with anything on the host. The
host's ports are always chosen by the kernel (HOST_PORT 0), or taken from a
listener the test holds.

Each test runs as root and, where the kernel allows unprivileged user
namespaces, as nobody (the ``mode`` fixture of tests/test_sandbox.py).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
import trio

from arca_monitor import publish_spec, run
from tests.test_sandbox import Lines

if TYPE_CHECKING:
    from tests.sandbox_modes import Mode

PUBLISHED = re.compile(r"published (?P<host>\S+):(?P<port>\d+) -> sandbox port (?P<guest>\d+)")
#: How long a server in the sandbox may take to start answering.
READY_DEADLINE = 30.0


@dataclass
class Running:
    """An arca-run with published ports: where each is (as printed), and its stderr after those lines."""

    process: trio.Process
    ports: list[tuple[str, int, int]]
    rest: list[bytes | bytearray] = field(default_factory=list)



def put(directory: str, name: str, data: bytes) -> None:
    """A file the server in the sandbox may read, whoever it runs as."""
    path = os.path.join(directory, name)
    with open(path, "wb") as file:
        file.write(data)
    os.chmod(path, 0o644)


@pytest.fixture
def shared():
    """A directory nobody may read and write too (the served files, the audit log), removed afterwards."""
    path = tempfile.mkdtemp(prefix="arca-publish-")
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path)


@asynccontextmanager
async def arca_run_published(mode: Mode, count: int, *argv: str):
    """arca-run ``argv`` (in ``mode``), once it has printed ``count`` published lines; ended with SIGTERM."""
    process = await trio.lowlevel.open_process(mode.run(*argv), env=mode.env, cwd="/", stderr=subprocess.PIPE)
    assert process.stderr is not None
    lines = Lines(process.stderr)
    try:
        with trio.fail_after(30):
            printed = [PUBLISHED.fullmatch(await lines.next()) for _ in range(count)]
        ports = [(found["host"], int(found["port"]), int(found["guest"])) for found in printed if found]
        assert len(ports) == count, printed
        running = Running(process, ports)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, process.stderr, running.rest)
            yield running
            process.send_signal(signal.SIGTERM)  # forwarded to the server, which ends, and the sandbox with it
            with trio.fail_after(30):
                await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def drain(stream: trio.abc.ReceiveStream, into: list[bytes | bytearray]) -> None:
    while data := await stream.receive_some(65536):
        into.append(data)


async def curl(url: str, *options: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(30):
        return await trio.run_process(["curl", "--silent", "--show-error", "--max-time", "20", *options, url],
                                      capture_stdout=True, capture_stderr=True, check=False)


async def when_ready(url: str) -> subprocess.CompletedProcess[bytes]:
    """curl ``url`` until the server in the sandbox answers (it may still be starting), within READY_DEADLINE."""
    deadline = time.monotonic() + READY_DEADLINE
    while True:
        result = await curl(url, "--fail")
        if result.returncode == 0 or time.monotonic() > deadline:
            return result
        await trio.sleep(0.05)


def url(host: str, port: int, path: str) -> str:
    return f"http://{host}:{port}/{path}"


def audit_records(path: str) -> list[dict[str, object]]:
    with open(path) as log:
        return [json.loads(line) for line in log]


def http_server(mode: Mode, port: int, directory: str, bind: str = "127.0.0.1") -> list[str]:
    return [mode.python, "-m", "http.server", str(port), "--bind", bind, "--directory", directory]


async def test_curl_downloads_from_an_unmodified_server_in_the_sandbox(mode, shared):
    """HOST_PORT 0: the port the kernel chose is printed, curl reaches the server there, byte-exact; audited."""
    payload = os.urandom(3 << 20)
    put(shared, "blob", payload)
    audit = os.path.join(shared, "audit.log")
    async with arca_run_published(mode, 1, "--publish", "0:8000", "--audit-log", audit, "--",
                                  *http_server(mode, 8000, shared)) as running:
        [(host, port, guest)] = running.ports
        assert (host, guest) == ("127.0.0.1", 8000)
        assert port != 0
        ready = await when_ready(url(host, port, "blob"))
        assert ready.returncode == 0, ready.stderr
        assert ready.stdout == payload
    records = audit_records(audit)
    opened = [record for record in records if record["event"] == "open"]
    assert opened
    assert {(record["via"], record["published"], record["guest_port"], record["session"]) for record in opened} \
        == {("publish", f"127.0.0.1:{port}", 8000, 0)}
    closes = {record["connection_id"]: record for record in records if record["event"] == "close"}
    served = closes[opened[-1]["connection_id"]]
    assert served["how"] == "closed"
    up, down = served["bytes_up"], served["bytes_down"]
    assert isinstance(up, int)
    assert up > len(payload)  # the body and its headers
    assert isinstance(down, int)
    assert down > 0  # curl's request


TWO_SERVERS = (
    'python="$1"; dir="$2"; "$python" -m http.server 8000 --bind 127.0.0.1 --directory "$dir" & '
    'exec "$python" -m http.server 8001 --bind ::1 --directory "$dir"'
)


async def test_two_published_ports_and_an_ipv6_host_address(mode, shared):
    """Two --publish at once, one on the host's ::1; the IPv6-only server inside is found on the sandbox's ::1."""
    put(shared, "v4", b"four\n")
    put(shared, "v6", b"six\n")
    async with arca_run_published(mode, 2, "--publish", "127.0.0.1:0:8000", "--publish", "[::1]:0:8001", "--",
                                  "sh", "-c", TWO_SERVERS, "sh", mode.python, shared) as running:
        [(host4, port4, guest4), (host6, port6, guest6)] = running.ports
        assert (host4, guest4, host6, guest6) == ("127.0.0.1", 8000, "[::1]", 8001)
        four = await when_ready(url(host4, port4, "v4"))
        six = await when_ready(url(host6, port6, "v6"))
        assert (four.stdout, six.stdout) == (b"four\n", b"six\n"), (four.stderr, six.stderr)


async def test_a_guest_port_with_no_server_is_reset_at_once_and_audited(mode, shared):
    audit = os.path.join(shared, "audit.log")
    async with arca_run_published(mode, 1, "--publish", "0:8000", "--audit-log", audit, "--",
                                  "sleep", "60") as running:
        [(host, port, _)] = running.ports
        with trio.fail_after(5):  # a reset or a close, never a wait
            client = trio.socket.socket()
            with client:
                await client.connect((host, port))
                try:
                    data = await client.recv(1)
                except ConnectionResetError:
                    data = b""
        assert data == b""
    [failed] = [record for record in audit_records(audit) if record["event"] == "publish"]
    assert (failed["decision"], failed["errno"], failed["guest_port"]) == ("failed", "ECONNREFUSED", 8000)
    assert failed["published"] == f"127.0.0.1:{port}"


async def test_a_host_port_in_use_is_an_error_before_the_command_runs(mode, shared):
    marker = os.path.join(shared, "ran")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with trio.fail_after(60):
            result = await trio.run_process(mode.run("--publish", f"{port}:8000", "--", "touch", marker),
                                            env=mode.env, cwd="/", capture_stdout=True, capture_stderr=True,
                                            check=False)
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [
        f"arca-run: --publish 127.0.0.1:{port}:8000: {os.strerror(errno.EADDRINUSE)}"]
    assert not await trio.Path(marker).exists()


@pytest.mark.parametrize(("text", "spec"), [
    ("0:8000", publish_spec.PublishSpec("127.0.0.1", 0, 8000)),
    ("8080:80", publish_spec.PublishSpec("127.0.0.1", 8080, 80)),
    ("0.0.0.0:0:8000", publish_spec.PublishSpec("0.0.0.0", 0, 8000)),
    ("[::1]:0:8000", publish_spec.PublishSpec("::1", 0, 8000)),
    ("[::]:65535:1", publish_spec.PublishSpec("::", 65535, 1)),
])
def test_publish_specs(text, spec):
    assert publish_spec.parse(text) == spec


@pytest.mark.parametrize(("text", "says"), [
    ("8000", "not [HOST_ADDR:]HOST_PORT:GUEST_PORT"),
    ("1:2:3:4", "not [HOST_ADDR:]HOST_PORT:GUEST_PORT"),
    ("0:0", "GUEST_PORT must be a number 1-65535"),
    ("70000:80", "HOST_PORT must be a number 0-65535"),
    ("localhost:0:80", "'localhost' is not an IP address"),
    ("::1:0:80", "not [HOST_ADDR:]HOST_PORT:GUEST_PORT"),
    ("[127.0.0.1]:0:80", "an IPv6 address goes in brackets, an IPv4 address does not"),
    ("[::1]0:80", "must be followed by ':'"),
])
def test_bad_publish_specs_are_refused_before_anything_runs(text, says, capsys):
    with pytest.raises(publish_spec.PublishError, match=re.escape(says)):
        publish_spec.parse(text)
    assert run.main(["--publish", text, "--", "true"]) == 2
    assert capsys.readouterr().err.startswith("arca-run: --publish")


def test_publish_fd_is_arca_runs_to_set(capsys):
    assert run.main(["--publish-fd", "3:80", "--", "true"]) == 2
    assert "arca-run's to set" in capsys.readouterr().err

"""arca-run's sandbox: its own loopback, contained processes, and every way out landing on the monitor's sockets.

Safety: nothing here can leave the machine. The sandbox's network namespace has
no interface but ``lo``; the outside addresses tests use (192.0.2.x and
2001:db8::x, documentation ranges; 127.0.0.2, the name pool) only ever land on
the sandbox's intercept listeners, DNS sockets or UDP refusal rule, which these
tests hold and answer themselves. Nothing is relayed anywhere.

Most tests run twice: as root (plain namespaces) and as ``nobody`` (through
``setpriv``), where the plain namespaces are refused and a user namespace that
maps nobody to root is the only way; ``test_the_namespaces_arca_run_chose``
checks that each mode really takes its path. The sandbox tests start the init
themselves and hold its channel with :func:`open_sandbox`, the monitor's
handle, to see what lands on its sockets (the test's own hook; the monitor
has none). The arca-run tests run the whole command.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import textwrap
from contextlib import asynccontextmanager
from dataclasses import dataclass

import dns.message
import dns.rrset
import pytest
import trio

from arca_control.protocol import launch as launch_env
from arca_control.protocol.wire import Endpoint
from arca_monitor.sandbox import launch
from arca_monitor.sandbox.destination import original_destination
from arca_monitor.sandbox.handle import Sandbox, open_sandbox
from arca_monitor.sandbox.messages import Loopback

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]


@dataclass(frozen=True)
class Mode:
    """Who runs the sandbox: root, or nobody (with a Python that nobody can run, and this project on its path)."""

    name: str
    as_user: list[str]
    python: str
    env: dict[str, str]

    def run(self, *options: str) -> list[str]:
        """The arca-run command line in this mode."""
        return [*self.as_user, self.python, "-m", "arca_monitor.run", "--no-dns", *options]

    def script(self, source: str, *args: object) -> list[str]:
        return [self.python, "-c", textwrap.dedent(source), *map(str, args)]


def runs_as_nobody(unshare: str, python: str, env: dict[str, str]) -> bool:
    """``python`` runs, with this project, as nobody mapped to root in a user namespace."""
    probe = [*AS_NOBODY, unshare, *launch.USER_NAMESPACE, "--net", python, "-c", "import trio, dns, arca_monitor"]
    return subprocess.run(probe, env=env, capture_output=True, cwd="/").returncode == 0


@functools.cache
def nobody_mode() -> Mode | None:
    """The user-namespace mode, if this kernel allows unprivileged user namespaces and nobody can run Python."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    paths = sysconfig.get_paths()
    path = os.pathsep.join(dict.fromkeys([launch_env.package_root(), paths["purelib"], paths["platlib"]]))
    env = {**os.environ, "PYTHONPATH": path}
    # This interpreter may live where nobody cannot go (root's home): then the system's, if it is the same version.
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, system):
        if os.path.exists(python) and runs_as_nobody(unshare, python, env):
            return Mode("user", AS_NOBODY, python, env)
    return None


@pytest.fixture(params=["root", "user"])
def mode(request: pytest.FixtureRequest) -> Mode:
    if request.param == "root":
        return Mode("root", [], sys.executable, dict(os.environ))
    found = nobody_mode()
    if found is None:
        pytest.skip("no unprivileged user namespaces here, or no Python that nobody may run")
    return found


def init_prefix(mode: Mode) -> list[str]:
    if mode.name == "root":
        prefix = launch.isolation_prefix()
        assert prefix is not None
        assert "--user" not in prefix  # as root, the probe takes plain namespaces first
        return prefix
    unshare = shutil.which("unshare")
    assert unshare is not None
    return [*mode.as_user, unshare, *launch.USER_NAMESPACE, *launch.NAMESPACES, "--"]


class Lines:
    """A guest's standard output, line by line."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self) -> str:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(4096)
            assert data, f"the guest's output ended after {self.buffer!r}"
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


@dataclass
class Guest:
    sandbox: Sandbox
    process: trio.Process
    out: Lines


@asynccontextmanager
async def sandboxed(mode: Mode, command: list[str]):
    """``command`` running in a sandbox whose channel this test holds."""
    pair = launch.Pair.open()
    argv = launch.init_command(init_prefix(mode), pair, command, mode.python)
    process = await trio.lowlevel.open_process(argv, pass_fds=pair.init_fds(), stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, env=mode.env, cwd="/")
    pair.close_init_ends()
    assert process.stdout is not None
    try:
        with trio.fail_after(30):
            async with open_sandbox(pair.monitor_end) as sandbox:
                yield Guest(sandbox, process, Lines(process.stdout))
    finally:
        pair.close()
        if process.returncode is None:
            process.kill()
        await process.wait()


def pending(sandbox: Sandbox) -> list[trio.socket.SocketType]:
    """The sandbox's sockets with something waiting on them (a connection, a datagram)."""
    import select

    sockets = [*sandbox.intercept, *sandbox.dns_udp, *sandbox.dns_tcp]
    readable, _, _ = select.select(sockets, [], [], 0)
    return readable


LOOPBACK = """
    import socket
    print("lo up:", int(open("/sys/class/net/lo/flags").read(), 16) & 1 == 1, flush=True)
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        server = socket.create_server((host, 0), family=family)
        client = socket.create_connection(server.getsockname()[:2], timeout=5)
        conn, _ = server.accept()
        client.sendall(b"ping")
        print(host, "tcp", conn.recv(4).decode(), flush=True)
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.bind((host, 0))
        socket.socket(family, socket.SOCK_DGRAM).sendto(b"ping", udp.getsockname())
        print(host, "udp", udp.recv(4).decode(), flush=True)
"""


async def test_the_sandboxs_loopback_is_its_own(mode):
    async with sandboxed(mode, mode.script(LOOPBACK)) as guest:
        assert [await guest.out.next() for _ in range(5)] == [
            "lo up: True", "127.0.0.1 tcp ping", "127.0.0.1 udp ping", "::1 tcp ping", "::1 udp ping",
        ]
        assert await guest.process.wait() == 0
        # The monitor saw nothing: no connection, query or refused datagram waits on any of its sockets.
        assert pending(guest.sandbox) == []
        with trio.move_on_after(0.3):
            batch = await guest.sandbox.receive_refusals()
            pytest.fail(f"loopback traffic was refused: {batch}")


OUTSIDE = """
    import selectors, socket
    for host, port in (("192.0.2.1", 80), ("2001:db8::1", 80), ("127.0.0.2", 8080)):
        sock = socket.create_connection((host, port), timeout=5)
        print(host, "peer", sock.getpeername()[1], sock.recv(100).decode(), flush=True)
        sock.close()
    sock = socket.socket()
    sock.setblocking(False)
    print("non-blocking", sock.connect_ex(("192.0.2.2", 443)), flush=True)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_WRITE)
    selector.select(5)
    print("connected", sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), flush=True)
"""


async def answer_intercepted(listener: trio.socket.SocketType, expected: Endpoint) -> None:
    conn, _ = await listener.accept()
    with conn:
        assert original_destination(conn) == expected
        await conn.send(f"intercepted {expected.host}".encode())


async def test_every_connection_out_lands_on_the_intercept_listener(mode):
    async with sandboxed(mode, mode.script(OUTSIDE)) as guest:
        intercept = guest.sandbox.intercept
        for listener, host, port in ((intercept.v4, "192.0.2.1", 80), (intercept.v6, "2001:db8::1", 80),
                                     (intercept.v4, "127.0.0.2", 8080)):  # the name pool is not the sandbox's own
            await answer_intercepted(listener, Endpoint(host, port))
            assert await guest.out.next() == f"{host} peer {port} intercepted {host}"
        assert await guest.out.next() == f"non-blocking {errno.EINPROGRESS}"
        conn, _ = await intercept.v4.accept()
        with conn:
            assert original_destination(conn) == Endpoint("192.0.2.2", 443)
            assert await guest.out.next() == "connected 0"
        assert await guest.process.wait() == 0


async def test_a_program_in_another_language_is_intercepted_too(mode):
    curl = shutil.which("curl")
    assert curl is not None, "curl is a system dependency (make system-deps)"
    command = [curl, "-sS", "--noproxy", "*", "--max-time", "10", "http://192.0.2.1:8080/hello"]
    async with sandboxed(mode, command) as guest:
        conn, _ = await guest.sandbox.intercept.v4.accept()
        with conn:
            assert original_destination(conn) == Endpoint("192.0.2.1", 8080)
            request = b""
            while b"\r\n\r\n" not in request:
                request += await conn.recv(4096)
            assert request.startswith(b"GET /hello HTTP/1.1\r\n")
            await conn.send(b"HTTP/1.0 200 OK\r\nContent-Length: 8\r\n\r\nanswered")
        assert await guest.out.stream.receive_some(100) == b"answered"
        assert await guest.process.wait() == 0


async def test_the_intercept_listeners_cannot_be_reached_directly(mode):
    """Only the redirect leads to them: a connection on a listener was always going somewhere else."""
    script = """
        import socket, sys
        ports = sys.stdin.readline().split()  # the init's choice: the test reads it off the handed sockets
        for host, port in (("127.0.0.1", ports[0]), ("::1", ports[1]), ("127.0.0.1", ports[2])):
            try:
                socket.create_connection((host, int(port)), timeout=5)
                print("connected", flush=True)
            except OSError as exc:
                print("errno", exc.errno, flush=True)
    """
    async with sandboxed(mode, mode.script(script)) as guest:
        sandbox = guest.sandbox
        ports = [sock.getsockname()[1] for sock in (*sandbox.intercept, sandbox.dns_tcp.v4)]
        assert guest.process.stdin is not None
        await guest.process.stdin.send_all(" ".join(map(str, ports)).encode() + b"\n")
        assert [await guest.out.next() for _ in range(3)] == [f"errno {errno.ECONNREFUSED}"] * 3
        assert await guest.process.wait() == 0
        assert pending(sandbox) == []

"""Shared fixtures and helpers: a spawned monitor session, a raw one, real TCP peers outside the guest, and a ready ClientCore."""

from __future__ import annotations

import functools
import inspect
import os
import socket
import sys
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest
import trio

import arca_control
from arca_control.protocol.client import ClientCore
from arca_control.protocol.codec import encode
from arca_control.protocol.core import SessionState
from arca_control.protocol.messages import Hello, HelloOk
from arca_control.protocol.wire import Endpoint

from .raw_monitor import RawMonitor
from .sandbox_modes import Mode, nobody_mode

if TYPE_CHECKING:
    import socketserver
    from collections.abc import Awaitable, Callable, Iterator
    from pathlib import Path

#: Rules that give back what the default allows on loopback, for tests that add rules of their own
#: (any rule replaces the whole default).
LOOPBACK_RULES = (
    "--allow-connect", "127.0.0.0/8:1-65535", "--allow-connect", "[::1]:1-65535",
    "--allow-listen", "127.0.0.0/8:*", "--allow-listen", "[::1]:*",
    "--allow-listen", "0.0.0.0:*", "--allow-listen", "[::]:*",
    "--allow-udp", "127.0.0.0/8:*", "--allow-udp", "[::1]:*",
)

#: Endpoints for the sans-IO core tests, which never open them.
HERE = Endpoint("127.0.0.1", 1)
THERE = Endpoint("127.0.0.1", 2)


def ready_client() -> ClientCore:
    """A ClientCore past the handshake."""
    core = ClientCore()
    hello, _ = core.send(Hello())
    core.receive(encode(HelloOk(request_id=hello.request_id)), [])
    assert core.state is SessionState.READY
    return core


@pytest.fixture
async def session():
    # No DNS: a name a test resolves by mistake must not reach the system's nameserver.
    async with arca_control.open_session("--no-dns") as session:
        yield session


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[RawMonitor]:
    """A monitor driven with hand-made frames (``raw_monitor``), killed at the end if still running."""
    monitor = RawMonitor(tmp_path)
    yield monitor
    monitor.kill()


async def read_all(stream) -> bytes:
    """Everything ``stream`` (trio stream or ArcaStream) yields until EOF."""
    chunks = []
    while data := await stream.receive_some(1 << 20):
        chunks.append(data)
    return b"".join(chunks)


async def tcp_server(nursery: trio.Nursery, handler) -> tuple[str, int]:
    """A real trio TCP server on a kernel-chosen loopback port, outside any session."""
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    host, port = listeners[0].socket.getsockname()[:2]
    return str(host), int(port)


def closed_port() -> int:
    """A loopback port that was just bound and closed: nothing listens there."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serving(server: socketserver.BaseServer):
    """Run a stdlib ``socketserver`` in a thread for the block; shut it down and close it after."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


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


def fd_count(pid: int) -> int:
    """Open descriptors of a process, from /proc."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def errno_is(code: int) -> Callable[[OSError], bool]:
    """For ``pytest.raises(OSError, check=errno_is(errno.EBADF))``: the error carries that errno."""
    return lambda exc: exc.errno == code


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], *, seconds: float = 5.0, interval: float = 0.02
) -> None:
    """Wait until ``condition()`` (a function, or an async one) holds; ``trio.TooSlowError`` after ``seconds``.

    For what no event of ours can signal: a file the monitor makes or removes, its
    descriptors and counters, a port it frees, work finishing in the session's own
    background tasks. So it is polled.
    """
    with trio.fail_after(seconds):
        while True:
            result = condition()
            if await result if inspect.isawaitable(result) else result:
                return
            await trio.sleep(interval)


async def settle(measure, target, *, seconds: float = 5.0, interval: float = 0.02):
    """Poll ``measure()`` until it equals ``target`` or time runs out; return the last value."""
    value = measure()
    with trio.move_on_after(seconds):
        while value != target:
            await trio.sleep(interval)
            value = measure()
    return value


@pytest.fixture
async def socket_monitor(tmp_path):
    """A standalone ``arca-monitor --socket PATH``: (path, process)."""
    path = str(tmp_path / "arca.sock")
    process = await trio.lowlevel.open_process([sys.executable, "-m", "arca_monitor", "--socket", path])
    await wait_until(lambda: os.path.exists(path), seconds=10)
    yield path, process
    process.terminate()
    with trio.fail_after(10):
        assert await process.wait() == 0  # SIGTERM is a clean shutdown
    assert not await trio.Path(path).exists()


async def until_refused(address, seconds: float = 5.0) -> None:
    """Wait until connecting to ``address`` is refused: the monitor has closed that listener."""
    with trio.fail_after(seconds):
        while True:
            try:
                socket.create_connection(address, timeout=1).close()
            except ConnectionRefusedError:
                return
            except ConnectionResetError:
                pass  # it was still closing
            await trio.sleep(0.02)


def monitor_socket(pid: int, local: tuple[str, int] | tuple[str, int, int, int], kind: str = "tcp") -> socket.socket:
    """A duplicate of the monitor's own socket (``kind`` tcp or udp) bound to ``local``, to check it directly.

    Finds the socket's inode in /proc/net/{tcp,udp}{,6}, its fd in /proc/PID/fd,
    and copies it with pidfd_getfd(2) (same user, so allowed).
    """
    import ctypes
    import ipaddress

    host, port = local[0], local[1]
    address = ipaddress.ip_address(host.split("%")[0])
    table = f"/proc/net/{kind}" if address.version == 4 else f"/proc/net/{kind}6"
    inodes = set()
    with open(table) as f:
        next(f)
        for line in f:
            fields = line.split()
            _, local_port = fields[1].split(":")
            if int(local_port, 16) == port:
                inodes.add(fields[9])
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            pidfd = os.pidfd_open(pid)
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                copy = libc.syscall(438, pidfd, int(fd), 0)  # pidfd_getfd
                if copy < 0:
                    raise OSError(ctypes.get_errno(), "pidfd_getfd")
            finally:
                os.close(pidfd)
            return socket.socket(fileno=copy)
    raise LookupError(f"no socket on port {port} in process {pid}")


@pytest.fixture(params=["root", "user"])
def mode(request: pytest.FixtureRequest) -> Mode:
    """Each sandbox test twice: as root, and as nobody in a user namespace where the kernel allows it."""
    if request.param == "root":
        return Mode("root", [], sys.executable, dict(os.environ))
    found = nobody_mode()
    if found is None:
        pytest.skip("no unprivileged user namespaces here, or no Python that nobody may run")
    return found

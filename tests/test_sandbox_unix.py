"""No new AF_UNIX sockets under arca-run: the seccomp filter (each refusal audited), socketpair (datagram pairs
substituted), sessions through the doorbell."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import pytest
import trio

from arca_control import open_session
from arca_control.protocol.launch import DOORBELL_RING
from arca_control.session import doorbell_session
from arca_monitor.audit import AuditLog
from arca_monitor.config import Config
from arca_monitor.policy import Policy
from arca_monitor.resolver import Resolver
from arca_monitor.sandbox.handle import open_sandbox
from arca_monitor.sandbox.messages import MessageError, Ready, Supervise, decode, encode
from arca_monitor.seccomp_notify import is_listener
from arca_monitor.server import serve_doorbell

from .netns import ROOT
from .sandbox_modes import host_directory
from .test_sandbox import fake_handoff, hand

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from .sandbox_modes import Mode

RUN = [sys.executable, "-m", "arca_monitor.run", "--no-dns"]


def host_unix_server(tmp_path: Path) -> tuple[socket.socket, str]:
    """A listening stream socket in a world-accessible directory of the host, itself world-accessible."""
    directory = tmp_path / "public"
    directory.mkdir()
    directory.chmod(0o777)
    path = str(directory / "host.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    os.chmod(path, 0o777)
    server.listen()
    server.setblocking(False)
    return server, path


def nothing_arrived(server: socket.socket) -> bool:
    try:
        conn, _ = server.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


HOSTILE = textwrap.dedent(
    """
    import os, socket, sys
    path = sys.argv[1]
    print("env", os.environ.get("ARCA_MONITOR") is None, os.environ.get("ARCA_MONITOR_FD") is not None)
    try:
        socket.socket(socket.AF_UNIX)
        print("socket: created")
    except PermissionError as exc:
        print("socket: PermissionError", exc.errno)
    for kind in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET, socket.SOCK_DGRAM):
        try:
            with socket.socket(socket.AF_UNIX, kind) as sock:
                sock.connect(path)
            print("connect: connected")
        except OSError as exc:
            print("connect:", exc.errno)
    left, right = socket.socketpair()
    left.sendall(b"pair ok")
    print(right.recv(16).decode())
    """
)


def test_no_unix_sockets_but_socketpair(tmp_path):
    server, path = host_unix_server(tmp_path)
    with server:
        result = subprocess.run([*RUN, "--", sys.executable, "-I", "-c", HOSTILE, path], capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            "env True True",
            f"socket: PermissionError {errno.EACCES}",
            *[f"connect: {errno.EACCES}"] * 3,
            "pair ok",
        ]
        assert nothing_arrived(server)


def test_allow_unix_sockets_reaches_host_sockets(tmp_path):
    server, path = host_unix_server(tmp_path)
    guest = textwrap.dedent(
        """
        import os, socket, sys
        print("env", os.environ.get("ARCA_MONITOR") is not None, os.environ.get("ARCA_MONITOR_FD") is not None)
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(sys.argv[1])
            sock.sendall(b"from the sandbox")
        """
    )
    with server:
        result = subprocess.run([*RUN, "--allow-unix-sockets", "--", sys.executable, "-I", "-c", guest, path],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == ["env True True"]
        server.setblocking(True)
        server.settimeout(10)
        conn, _ = server.accept()
        with conn:
            assert conn.recv(64) == b"from the sandbox"


SESSIONS = textwrap.dedent(
    """
    import os, subprocess, sys, trio, arca_control
    port = int(sys.argv[1])
    async def one(name):
        async with arca_control.open_session() as session:
            stream = await session.connect("127.0.0.1", port)
            await stream.send_all(name.encode())
            # One string, one write: the two children share stdout, and with PYTHONUNBUFFERED set a
            # print of several arguments is several writes, which the other child's can split.
            sys.stdout.write(f"{name} {(await stream.receive_some()).decode()}\\n")
            sys.stdout.flush()
    if sys.argv[2] == "parent":
        # Two processes at once: each rings the doorbell it inherited (pass_fds: subprocess closes the rest).
        fd = int(os.environ["ARCA_MONITOR_FD"])
        children = [subprocess.Popen([sys.executable, __file__, str(port), name], pass_fds=(fd,))
                    for name in ("first", "second")]
        sys.exit(max(child.wait() for child in children))
    trio.run(one, sys.argv[2])
    """
)


async def test_open_session_goes_through_the_doorbell_two_processes_at_once(tmp_path):
    """Each child's session is open while the other's is: the host answers neither before both connected."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(30)
    port = server.getsockname()[1]
    script = tmp_path / "sessions.py"
    script.write_text(SESSIONS)
    heard: list[bytes] = []

    async def serve():
        conns = [(await trio.to_thread.run_sync(server.accept))[0] for _ in range(2)]
        for conn in conns:
            with conn:
                name = conn.recv(16)
                heard.append(name)
                conn.sendall(b"hello " + name)

    with server:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            result = await trio.run_process(
                [*RUN, "--allow-connect", f"127.0.0.1:{port}", "--", sys.executable, str(script), str(port),
                 "parent"], capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert sorted(result.stdout.decode().splitlines()) == ["first hello first", "second hello second"]
    assert sorted(heard) == [b"first", b"second"]


async def test_the_monitor_serves_each_socket_rung_and_drops_the_rest():
    monitor_end, guest_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ended = trio.Event()

    async def monitor():
        with monitor_end:
            await serve_doorbell(monitor_end, Config(), Resolver(hosts_file=None, dns=False), Policy.build({}),
                                 AuditLog(None))
        ended.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(monitor)
        # Junk first: a message alone, a pipe, a TCP socket, two sockets at once. None ends the doorbell.
        guest_end.send(b"")
        guest_end.send(DOORBELL_RING)
        read_end, write_end = os.pipe()
        tcp = socket.socket()
        pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        socket.send_fds(guest_end, [DOORBELL_RING], [read_end])
        socket.send_fds(guest_end, [DOORBELL_RING], [tcp.fileno()])
        socket.send_fds(guest_end, [DOORBELL_RING], [pair[0].fileno(), write_end])
        for fd in (read_end, write_end):
            os.close(fd)
        tcp.close()
        pair[0].close()
        with trio.fail_after(10):
            # The pair's end was served (the extra descriptor closed): its session answers a handshake.
            async with doorbell_session(guest_end.fileno()) as first, doorbell_session(guest_end.fileno()) as second:
                assert first.monitor is not None
                assert second.monitor is not None
            pair[1].close()
            guest_end.close()
            await ended.wait()  # every guest end closed, every session over: the doorbell is done


async def test_outside_a_sandbox_a_bad_doorbell_is_an_oserror(monkeypatch):
    read_end, write_end = os.pipe()
    try:
        monkeypatch.setenv("ARCA_MONITOR_FD", str(read_end))
        with pytest.raises(OSError, match="non-socket") as caught:
            async with open_session():
                pytest.fail("a pipe gave a session")
        assert caught.value.errno == errno.ENOTSOCK
        tcp = socket.socket()
        with tcp:
            monkeypatch.setenv("ARCA_MONITOR_FD", str(tcp.fileno()))
            with pytest.raises(OSError, match="no SEQPACKET socket") as caught:
                async with open_session():
                    pytest.fail("a TCP socket gave a session")
            assert caught.value.errno == errno.EPROTOTYPE
            assert tcp.fileno() >= 0  # left open: the doorbell is not the session's to close
    finally:
        os.close(read_end)
        os.close(write_end)


@pytest.fixture
def public() -> Iterator[str]:
    """A directory of the host that the sandbox's user can reach in either mode (nobody's too)."""
    with host_directory("arca-unix-", 0o777) as path:
        yield path


def audited(mode: Mode, *argv: str) -> tuple[list[str], list[dict[str, object]]]:
    """arca-run in ``mode`` with the audit log on stderr: the command's output lines, and the log."""
    result = subprocess.run(mode.run("--audit-log", "-", *argv), env=mode.env, cwd="/", capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines(), [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]


REFUSED = textwrap.dedent(
    """
    import os, socket, sys
    print("pid", os.getpid(), flush=True)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.connect(sys.argv[1])
        print("connected")
    except OSError as exc:
        print("socket", exc.errno)
    left, right = socket.socketpair()
    left.sendall(b"pair ok")
    print(right.recv(16).decode())
    """
)


def test_each_refused_socket_is_one_audit_line(mode, public):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    path = os.path.join(public, "host.sock")
    with server:
        server.bind(path)
        os.chmod(path, 0o777)
        server.listen()
        server.setblocking(False)
        lines, audit = audited(mode, "--", *mode.script(REFUSED, path))
        assert nothing_arrived(server)
    pid = int(lines[0].split()[1])
    assert lines[1:] == [f"socket {errno.EACCES}", "pair ok"]  # and socketpair(SOCK_STREAM) is untouched
    [refused] = [record for record in audit if record["event"] == "seccomp"]
    assert (refused["session"], refused["call"], refused["decision"], refused["errno"]) == (
        0, "socket(AF_UNIX, SOCK_SEQPACKET|SOCK_CLOEXEC)", "denied", "EACCES")
    assert (refused["sandbox_pid"], refused["comm"]) == (pid, os.path.basename(mode.python)[:15])
    assert isinstance(refused["pid"], int)
    assert refused["pid"] != pid  # the host's number: the sandbox is another PID namespace
    assert refused["rule"] == "--allow-unix-sockets"
    assert str(refused["reason"]).startswith("no --allow-unix-sockets: ")


DATAGRAM_PAIR = textwrap.dedent(
    """
    import socket, sys
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    left.send(b"one")
    left.send(b"two")
    right.send(b"back")
    print("messages", right.recv(64).decode(), right.recv(64).decode(), left.recv(64).decode())
    right.settimeout(2)
    try:
        sent = left.sendto(b"x", sys.argv[1])
    except OSError as exc:
        print("sendto", "errno", exc.errno)
    else:
        try:
            print("sendto", sent, "peer got", right.recv(64).decode())
        except TimeoutError:
            print("sendto", sent, "peer got nothing")
    """
)


def test_a_datagram_socketpair_cannot_reach_a_host_datagram_socket(mode, public):
    host = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = os.path.join(public, "host.sock")
    with host:
        host.bind(path)
        os.chmod(path, 0o777)
        host.settimeout(10)
        # The control: without the filter the sandbox's user reaches the host's socket by path.
        lines, _ = audited(mode, "--allow-unix-sockets", "--", *mode.script(DATAGRAM_PAIR, path))
        assert lines == ["messages one two back", "sendto 1 peer got nothing"]
        assert host.recv(16) == b"x"
        # Filtered: the pair is a seqpacket one, whose connected end sends to its peer whatever address is named.
        lines, audit = audited(mode, "--", *mode.script(DATAGRAM_PAIR, path))
        assert lines == ["messages one two back", "sendto 1 peer got x"]
        host.setblocking(False)
        with pytest.raises(BlockingIOError):
            host.recv(16)  # nothing reached the host's socket
    assert [record for record in audit if record["event"] == "seccomp"] == []  # nothing was refused


def _send_listener(channel_fd: int) -> None:
    """In a child: the supervised filter, and its listener sent as the init's command sends it; then exit."""
    from arca_monitor import seccomp

    channel = socket.socket(fileno=channel_fd)
    listener = seccomp.install_supervised()
    socket.send_fds(channel, [encode(Supervise())], [listener])


async def test_the_handle_takes_one_seccomp_listener_and_drops_anything_else():
    assert decode(encode(Supervise())) == Supervise()
    with pytest.raises(MessageError, match="answers no request"):
        decode(encode(Supervise())[:1] + b"\x01\x00\x00\x00")
    monitor_end, init_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    hand(init_end, fake_handoff())
    init_end.send(encode(Ready()))
    with trio.fail_after(30):
        async with open_sandbox(monitor_end) as sandbox:
            read_end, write_end = os.pipe()
            socket.send_fds(init_end, [encode(Supervise())], [read_end])  # no listener: closed, dropped
            init_end.send(encode(Supervise()))  # no descriptor at all: dropped
            for fd in (read_end, write_end):
                os.close(fd)
            code = f"from tests.test_sandbox_unix import _send_listener; _send_listener({init_end.fileno()})"
            for _ in range(2):  # the first is kept; a second is closed and dropped
                await trio.run_process([sys.executable, "-c", code], cwd=ROOT, pass_fds=(init_end.fileno(),))
            await sandbox.supervised.wait()
            assert sandbox.listener is not None
            assert is_listener(sandbox.listener)
            kept = sandbox.listener
            init_end.close()
            await sandbox.ended.wait()
            assert sandbox.listener == kept
        assert sandbox.listener is None  # closed with the handle

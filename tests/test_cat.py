"""arca-cat, the netcat-like guest, against socat as the real peer."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys

import trio

from .conftest import wait_until

CAT = [sys.executable, "-m", "arca_control.cat", "--monitor-arg=--no-dns"]


async def socat_listening(*args: str, pattern: bytes = rb"listening on .*:(\d+)") -> tuple[trio.Process, int]:
    """socat listening on a loopback port; the port it says it got (kernel-chosen for 0)."""
    process = await trio.lowlevel.open_process(["socat", "-d", "-d", *args], stderr=subprocess.PIPE)
    assert process.stderr is not None
    seen = b""
    with trio.fail_after(10):
        while not (found := re.search(pattern, seen)):
            seen += await process.stderr.receive_some(4096)
    return process, int(found.group(1)) if found.groups() else 0


async def test_64_mib_through_an_echo_peer_with_half_close(tmp_path):
    data = os.urandom(64 * 1024 * 1024)
    source = tmp_path / "in.bin"
    source.write_bytes(data)
    # The peer echoes everything, and closes after our EOF: the last bytes come back only
    # if arca-cat's stdin EOF reached socat as a FIN (half-close), while stdout kept going.
    peer, port = await socat_listening("TCP4-LISTEN:0,bind=127.0.0.1", "EXEC:cat")
    async with await trio.open_file(source, "rb") as stdin:
        result = await trio.run_process([*CAT, "connect", "127.0.0.1", str(port)], stdin=stdin.wrapped,
                                        capture_stdout=True, capture_stderr=True, check=False)
    await peer.wait()
    assert result.returncode == 0, result.stderr
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(data).digest()


async def test_listen_mode_receives_a_file_from_a_real_client(tmp_path):
    data = os.urandom(8 * 1024 * 1024)
    source = tmp_path / "send.bin"
    source.write_bytes(data)
    cat = await trio.lowlevel.open_process([*CAT, "listen", "127.0.0.1", "0"], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert cat.stdin is not None
    assert cat.stdout is not None
    assert cat.stderr is not None
    seen = b""
    with trio.fail_after(10):
        while not (found := re.search(rb"listening on 127\.0\.0\.1 port (\d+)", seen)):
            seen += await cat.stderr.receive_some(4096)
    await cat.stdin.aclose()  # nothing to send back: our EOF goes to the client at once
    received = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.run_process, ["socat", "-u", f"OPEN:{source}", f"TCP4:127.0.0.1:{int(found.group(1))}"])
        while chunk := await cat.stdout.receive_some(1 << 20):
            received += chunk
    assert await cat.wait() == 0
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()


async def test_exit_status_tells_refused(tmp_path):
    import socket

    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    result = await trio.run_process([*CAT, "connect", "127.0.0.1", str(port)], stdin=subprocess.DEVNULL,
                                    capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 3
    assert b"refused" in result.stderr.lower()
    usage = await trio.run_process([*CAT, "connect", "127.0.0.1"], check=False, capture_stderr=True)
    assert usage.returncode == 2


async def test_unix_and_udp(tmp_path):
    path = str(tmp_path / "peer.sock")
    peer = await trio.lowlevel.open_process(["socat", f"UNIX-LISTEN:{path}", "EXEC:cat"])
    await wait_until(lambda: os.path.exists(path), seconds=10)
    source = tmp_path / "small.txt"
    source.write_bytes(b"over a unix socket\n")
    async with await trio.open_file(source, "rb") as stdin:
        result = await trio.run_process([*CAT, f"--monitor-arg=--allow-unix={tmp_path}", "--unix", "connect", path],
                                        stdin=stdin.wrapped, capture_stdout=True)
    assert result.stdout == b"over a unix socket\n"
    await peer.wait()

    # socat cannot say which UDP port it got for 0: give it one the kernel just handed out.
    import socket

    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    udp_peer, _ = await socat_listening(f"UDP4-RECVFROM:{port},bind=127.0.0.1", "EXEC:cat", pattern=rb"receiving on")
    async with await trio.open_file(source, "rb") as stdin:
        result = await trio.run_process([*CAT, "--udp", "--wait", "1", "connect", "127.0.0.1", str(port)],
                                        stdin=stdin.wrapped, capture_stdout=True)
    assert result.stdout == b"over a unix socket\n"
    udp_peer.kill()
    await udp_peer.wait()

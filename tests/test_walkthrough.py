"""The README walk-through, claim by claim: arca-run, policy, arca-cat and unmodified programs together."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import trio

RUN = [sys.executable, "-m", "arca_monitor.run"]
CAT = [sys.executable, "-m", "arca_control.cat"]


async def test_a_guest_http_server_reached_by_curl_from_the_host():
    response = b"HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nhello\n"
    guest = await trio.lowlevel.open_process(
        [*RUN, "--allow-listen", "127.0.0.1:*", "--", *CAT, "listen", "127.0.0.1", "0"], stdin=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert guest.stdin is not None
    assert guest.stderr is not None
    curl = shutil.which("curl")
    assert curl is not None
    seen = b""
    with trio.fail_after(20):
        while not (found := re.search(rb"listening on 127\.0\.0\.1 port (\d+)", seen)):
            seen += await guest.stderr.receive_some(4096)
        await guest.stdin.send_all(response)
        await guest.stdin.aclose()
        result = await trio.run_process(
            [curl, "-sS", "--max-time", "10", f"http://127.0.0.1:{int(found.group(1))}/"],
            capture_stdout=True,
        )
        assert result.stdout == b"hello\n"
        assert await guest.wait() == 0


async def test_outbound_allowed_and_denied_by_policy():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve():
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"allowed\n")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.to_thread.run_sync, serve)
        allowed = await trio.run_process(
            [*RUN, "--allow-connect", f"127.0.0.1:{port}", "--", *CAT, "connect", "127.0.0.1", str(port)],
            stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True, check=False,
        )
    denied = await trio.run_process(
        [*RUN, "--allow-connect", f"127.0.0.1:{port}", "--", *CAT, "connect", "127.0.0.1", str(port + 1)],
        stdin=subprocess.DEVNULL, capture_stdout=True, capture_stderr=True, check=False,
    )
    server.close()
    assert allowed.returncode == 0
    assert allowed.stdout == b"allowed\n"
    assert denied.returncode == 4
    assert b"--allow-connect" in denied.stderr


async def test_piping_a_file_through_arca_cat(tmp_path):
    data = os.urandom(4 * 1024 * 1024)
    (tmp_path / "in.bin").write_bytes(data)
    receiver = await trio.lowlevel.open_process(
        [*CAT, "listen", "127.0.0.1", "0"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert receiver.stdout is not None
    assert receiver.stderr is not None
    seen = b""
    with trio.fail_after(20):
        while not (found := re.search(rb"port (\d+)", seen)):
            seen += await receiver.stderr.receive_some(4096)
        received = bytearray()
        async with trio.open_nursery() as nursery:
            async def send() -> None:
                async with await trio.open_file(tmp_path / "in.bin", "rb") as stdin:
                    await trio.run_process([*CAT, "connect", "127.0.0.1", found.group(1).decode()], stdin=stdin.wrapped)
            nursery.start_soon(send)
            while chunk := await receiver.stdout.receive_some(1 << 20):
                received += chunk
        assert await receiver.wait() == 0
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()


async def test_curl_by_name_through_a_name_rule(tmp_path):
    """Step 4: a hosts-file name for the host's loopback, reached by curl through the sandbox's DNS and its rule."""
    (tmp_path / "hello.txt").write_text("hello by name\n")
    (tmp_path / "hosts").write_text("127.0.0.1 files.example.test\n")
    server = await trio.lowlevel.open_process(
        [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    assert server.stdout is not None
    try:
        seen = b""
        with trio.fail_after(20):
            while not (found := re.search(rb"port (\d+)", seen)):
                seen += await server.stdout.receive_some(4096)
        port = int(found.group(1))
        with trio.fail_after(60):
            result = await trio.run_process(
                [*RUN, "--no-dns", "--hosts-file", str(tmp_path / "hosts"), "--allow-connect",
                 f"files.example.test:{port}", "--", "curl", "-s", f"http://files.example.test:{port}/hello.txt"],
                capture_stdout=True, check=False,
            )
    finally:
        server.kill()
        await server.wait()
    assert (result.returncode, result.stdout) == (0, b"hello by name\n")


async def test_a_denied_destination_and_its_audit_line():
    """Step 5: curl fails at once (exit 7 or 56), and the audit log names the missing rule."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        other = port + 1 if port < 65535 else port - 1
        with trio.fail_after(60):
            result = await trio.run_process(
                [*RUN, "--no-dns", "--audit-log", "-", "--allow-connect", f"127.0.0.1:{port}", "--",
                 "curl", "-s", f"http://host.arca.internal:{other}/"],
                capture_stdout=True, capture_stderr=True, check=False,
            )
    assert result.returncode in (7, 56)
    [line] = [json.loads(text) for text in result.stderr.decode().splitlines() if '"intercept"' in text]
    assert (line["session"], line["name"], line["decision"], line["errno"]) == (
        0, "host.arca.internal", "denied", "EACCES")
    assert line["reason"] == (f"denied by policy: no --allow-connect rule for host.arca.internal:{other}"
                              " (127.0.0.1, ::1)")


async def test_a_dev_server_published_to_the_host(tmp_path):
    """Step 6: ``arca-run --publish 0:8000 -- python -m http.server 8000``, then curl at the printed port."""
    page = b"<p>served from the sandbox</p>\n"
    (tmp_path / "index.html").write_bytes(page)
    server = [sys.executable, "-m", "http.server", "8000", "--bind", "127.0.0.1", "--directory", str(tmp_path)]
    guest = await trio.lowlevel.open_process([*RUN, "--publish", "0:8000", "--", *server], stderr=subprocess.PIPE)
    assert guest.stderr is not None
    curl = shutil.which("curl")
    assert curl is not None
    seen = b""
    try:
        with trio.fail_after(30):
            while not (found := re.search(rb"published 127\.0\.0\.1:(\d+) -> sandbox port 8000\n", seen)):
                seen += await guest.stderr.receive_some(4096)
            while True:  # the server may still be starting: the monitor resets until it listens
                result = await trio.run_process(
                    [curl, "-sS", "--fail", "--max-time", "10", f"http://127.0.0.1:{int(found.group(1))}/index.html"],
                    capture_stdout=True, capture_stderr=True, check=False,
                )
                if result.returncode == 0:
                    break
                await trio.sleep(0.05)
        assert result.stdout == page
    finally:
        guest.terminate()
        await guest.wait()

"""``make demo``: a guest that listens, is reached by curl, and connects out, all through a monitor.

What runs:

* an "outside" TCP echo server, plain blocking sockets in a thread, standing
  for any real server the guest wants to reach;
* a monitor, spawned by ``open_session()``;
* the guest: it listens on 127.0.0.1 (port chosen by the kernel), serves one
  HTTP request from a real ``curl`` (a plain socket client if curl is
  missing), then connects out to the echo server and checks the echo.

Every step prints its addresses and byte counts.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import threading
from typing import TYPE_CHECKING

import trio

from . import open_session

if TYPE_CHECKING:
    from .session import ArcaSession
    from .stream import ArcaListener

ECHO_BYTES = 1 << 20


def start_echo_server() -> tuple[socket.socket, threading.Thread]:
    """A real TCP echo server outside the guest, on a kernel-chosen port."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server, thread


async def fetch(url: str) -> bytes:
    """GET ``url`` with curl, the way any real client would reach the guest."""
    curl = shutil.which("curl")
    if curl:
        result = await trio.run_process([curl, "-sS", "--max-time", "10", url], capture_stdout=True)
        return result.stdout
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        await stream.send_all(b"GET / HTTP/1.0\r\nHost: demo\r\n\r\n")
        chunks = []
        while data := await stream.receive_some():
            chunks.append(data)
    return b"".join(chunks).split(b"\r\n\r\n", 1)[-1]


async def serve_one_request(listener: ArcaListener) -> None:
    stream = await listener.accept()
    async with stream:
        request = b""
        while b"\r\n\r\n" not in request:
            data = await stream.receive_some()
            if not data:
                break
            request += data
        first_line = request.split(b"\r\n", 1)[0].decode(errors="replace")
        print(f"guest: accepted {stream.peer[0]}:{stream.peer[1]} -> {stream.local[0]}:{stream.local[1]}"
              f" (connection {stream.connection_id}), read {len(request)} bytes: {first_line!r}")
        body = f"hello from the arca guest, you are {stream.peer[0]}:{stream.peer[1]}\n".encode()
        head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\nContent-Type: text/plain\r\n\r\n".encode()
        await stream.send_all(head + body)
        print(f"guest: answered with {len(head) + len(body)} bytes")


async def echo_through(session: ArcaSession, address: tuple[str, int]) -> None:
    stream = await session.connect(*address)
    payload = os.urandom(ECHO_BYTES)
    received = bytearray()
    async with stream:
        print(f"guest: connected {stream.local[0]}:{stream.local[1]} -> {stream.peer[0]}:{stream.peer[1]}"
              f" (connection {stream.connection_id})")

        async def send() -> None:
            await stream.send_all(payload)
            await stream.send_eof()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            while data := await stream.receive_some():
                received += data
    same = hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    print(f"guest: sent {len(payload)} bytes, received {len(received)} back, sha256 {'matches' if same else 'DIFFERS'}")
    if not same:
        raise SystemExit("demo failed: the echo differs")


async def run() -> None:
    echo_server, echo_thread = start_echo_server()
    echo_host, echo_port = echo_server.getsockname()[:2]
    echo_address = (str(echo_host), int(echo_port))
    print(f"outside: echo server on {echo_address[0]}:{echo_address[1]}")
    async with open_session() as session:
        pid = session.process.pid if session.process is not None else "(attached)"
        version = session.monitor.version if session.monitor is not None else "?"
        print(f"guest: session open, monitor pid {pid}, protocol v{version}")
        listener = await session.listen("127.0.0.1", 0)
        url = f"http://{listener.local[0]}:{listener.local[1]}/"
        print(f"guest: listening on {listener.local[0]}:{listener.local[1]} (port chosen by the kernel)")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_one_request, listener)
            body = await fetch(url)
        print(f"curl: got {len(body)} bytes: {body.decode(errors='replace').strip()!r}")
        await listener.aclose()
        await echo_through(session, echo_address)
    echo_server.close()
    echo_thread.join(timeout=5)
    print("done: the monitor exited and was reaped")


def main() -> None:
    trio.run(run)


if __name__ == "__main__":
    main()

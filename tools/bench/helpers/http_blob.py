"""A local HTTP server for curl: ``GET /N`` sends N bytes, ``PUT`` (or ``POST``) takes a body and counts it.

    http_blob.py ALARM

It prints its kernel-chosen port on 127.0.0.1 and serves until killed, one
thread per connection, one request per connection (``Connection: close``).
The bodies are zeros, 1 MiB per send or receive call, so the server costs
the same for every client: the bench compares curl on the host with curl in
the sandbox against this one server. A PUT is answered ``received N``; a
client that sends ``Expect: 100-continue`` gets its ``100 Continue`` at once.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading

CHUNK = 1 << 20
HEAD_LIMIT = 16384


def read_head(conn: socket.socket) -> tuple[bytes, bytes] | None:
    """The request's head (up to its blank line) and whatever of the body came with it; None if it never ends."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = conn.recv(4096)
        if not more or len(data) > HEAD_LIMIT:
            return None
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def reply(conn: socket.socket, status: str, length: int) -> None:
    conn.sendall(f"HTTP/1.1 {status}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n".encode())


def serve(conn: socket.socket) -> None:
    with conn:
        request = read_head(conn)
        if request is None:
            return
        head, body = request
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
        if method == "GET" and target.lstrip("/").isdigit():
            left = int(target.lstrip("/"))
            reply(conn, "200 OK", left)
            zeros = memoryview(bytes(CHUNK))
            while left:
                sent = min(left, CHUNK)
                conn.sendall(zeros[:sent])
                left -= sent
        elif method in ("PUT", "POST") and headers.get("content-length", "").isdigit():
            if headers.get("expect", "").lower() == "100-continue":
                conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            expected, received = int(headers["content-length"]), len(body)
            buffer = bytearray(CHUNK)
            while received < expected and (count := conn.recv_into(buffer)):
                received += count
            text = f"received {received}\n".encode()
            reply(conn, "200 OK" if received == expected else "400 Bad Request", len(text))
            conn.sendall(text)
        else:
            reply(conn, "404 Not Found", 0)


def main(argv: list[str]) -> None:
    signal.alarm(int(argv[0]))
    server = socket.create_server(("127.0.0.1", 0))
    print(server.getsockname()[1], flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1:])

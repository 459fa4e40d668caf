"""The far end of the programs case: one process, many connections in turn, each either sent to or taken in.

    peer.py ALARM send NBYTES
    peer.py ALARM sink

It prints the port it listens on (127.0.0.1, kernel-chosen), then serves one
connection after another until its alarm or a kill, so that the direct and the
relayed program of a row meet the very same process. ``send``: wait for the
program's go byte, send NBYTES 1 MiB at a time, shut down its side and wait
for the program's close (every byte was taken). ``sink``: send the go byte,
read to the end and print the bytes received and the seconds from the go to
the end, as ``sink.py`` does.
"""

from __future__ import annotations

import signal
import socket
import sys
import time

CHUNK = 1 << 20


def send(conn: socket.socket, nbytes: int, buffer: memoryview) -> None:
    if conn.recv(1) != b"g":
        sys.exit("peer: no go byte from the program")
    left = nbytes
    while left >= CHUNK:
        conn.sendall(buffer)
        left -= CHUNK
    if left:
        conn.sendall(buffer[:left])
    conn.shutdown(socket.SHUT_WR)
    while conn.recv(65536):  # the program's close: every byte was taken
        pass


def sink(conn: socket.socket, buffer: memoryview) -> None:
    total = 0
    conn.sendall(b"g")
    start = time.perf_counter()
    while n := conn.recv_into(buffer):
        total += n
    print(total, time.perf_counter() - start, flush=True)


def main(argv: list[str]) -> None:
    signal.alarm(int(argv[0]))
    mode = argv[1]
    if mode not in ("send", "sink"):
        sys.exit(f"peer: unknown mode {mode!r}")
    server = socket.create_server(("127.0.0.1", 0))
    print(server.getsockname()[1], flush=True)
    buffer = memoryview(bytearray(CHUNK))
    while True:
        conn, _ = server.accept()
        with conn:
            if mode == "send":
                send(conn, int(argv[2]), buffer)
            else:
                sink(conn, buffer)


if __name__ == "__main__":
    main(sys.argv[1:])

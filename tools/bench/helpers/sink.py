"""The receiver: accept one connection, send one "go" byte, then time reading it to its end.

    sink.py ALARM

Prints the port it listens on (127.0.0.1, kernel-chosen), then, once the
sender closes, the bytes received and the seconds it took. The clock starts
only after the go byte, and the senders wait for it: no variant gets bytes
buffered before the clock starts, and every variant is timed the same way,
by this receiver.
"""

from __future__ import annotations

import signal
import socket
import sys
import time


def main(argv: list[str]) -> None:
    signal.alarm(int(argv[0]))
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    print(server.getsockname()[1], flush=True)
    conn, _ = server.accept()
    buffer = memoryview(bytearray(1 << 20))
    total = 0
    conn.sendall(b"g")
    start = time.perf_counter()
    while n := conn.recv_into(buffer):
        total += n
    elapsed = time.perf_counter() - start
    print(total, elapsed, flush=True)
    conn.close()


if __name__ == "__main__":
    main(sys.argv[1:])

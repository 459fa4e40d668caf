"""The sender for downloads that the guest connects to: listen, take one connection, send, close.

    serve_source.py ALARM NBYTES

Prints its port (127.0.0.1, kernel-chosen), accepts one connection, waits for
the guest's go byte, sends NBYTES 1 MiB at a time, shuts down for writing and
waits for the guest to close. Imports nothing of arca, like tools/bench/helpers.
"""

from __future__ import annotations

import signal
import socket
import sys


def main(argv: list[str]) -> None:
    signal.alarm(int(argv[0]))
    left = int(argv[1])
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    print(server.getsockname()[1], flush=True)
    sock, _ = server.accept()
    server.close()
    buffer = memoryview(bytearray(1 << 20))
    if sock.recv(1) != b"g":
        sys.exit("serve_source: no go byte from the guest")
    while left >= len(buffer):
        sock.sendall(buffer)
        left -= len(buffer)
    if left:
        sock.sendall(buffer[:left])
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):
        pass
    sock.close()


if __name__ == "__main__":
    main(sys.argv[1:])

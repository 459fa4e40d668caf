"""The sender: connect, wait for the receiver's go byte, send a count of bytes 1 MiB at a time, close.

    source.py ALARM PORT NBYTES

It waits for the receiver's close before it exits, so every byte was taken.
"""

from __future__ import annotations

import signal
import socket
import sys


def main(argv: list[str]) -> None:
    signal.alarm(int(argv[0]))
    port, left = int(argv[1]), int(argv[2])
    sock = socket.create_connection(("127.0.0.1", port))
    buffer = memoryview(bytearray(1 << 20))
    if sock.recv(1) != b"g":
        sys.exit("source: no go byte from the receiver")
    while left >= len(buffer):
        sock.sendall(buffer)
        left -= len(buffer)
    if left:
        sock.sendall(buffer[:left])
    sock.shutdown(socket.SHUT_WR)
    while sock.recv(65536):  # wait for the receiver's close: every byte was taken
        pass
    sock.close()


if __name__ == "__main__":
    main(sys.argv[1:])

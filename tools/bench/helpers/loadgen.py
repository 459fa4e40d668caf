"""The accept case's load: a few client threads share a fixed count of connect, send 1 byte, read 1 byte, close.

    loadgen.py ALARM PORT COUNT CLIENTS

Prints the connections that succeeded, those that failed, and the seconds it
all took; the first error goes to stderr.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time


class Load:
    """The connections left to make, shared by the client threads, and the errors they met."""

    def __init__(self, count: int) -> None:
        self._lock = threading.Lock()
        self._left = count
        self.errors: list[str] = []

    def take(self) -> bool:
        with self._lock:
            if self._left <= 0:
                return False
            self._left -= 1
            return True

    def client(self, port: int) -> None:
        while self.take():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    sock.sendall(b"x")
                    if sock.recv(1) != b"x":
                        raise OSError("no echo")
            except OSError as exc:
                self.errors.append(repr(exc))


def main(argv: list[str]) -> None:
    signal.alarm(int(argv[0]))
    port, count, clients = int(argv[1]), int(argv[2]), int(argv[3])
    load = Load(count)
    threads = [threading.Thread(target=load.client, args=(port,)) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if load.errors:
        print("loadgen:", len(load.errors), "errors, first:", load.errors[0], file=sys.stderr)
    print(count - len(load.errors), len(load.errors), elapsed, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])

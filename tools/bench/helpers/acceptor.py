"""Accept and close, for the connect case: connects complete in the kernel, this only drains the queue.

    acceptor.py ALARM

Prints the port it listens on (127.0.0.1, kernel-chosen), then accepts until its alarm or a kill.
"""

from __future__ import annotations

import signal
import socket
import sys


def main(argv: list[str]) -> None:
    signal.alarm(int(argv[0]))
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1024)
    print(server.getsockname()[1], flush=True)
    while True:
        server.accept()[0].close()


if __name__ == "__main__":
    main(sys.argv[1:])

"""The cheapest relay there is, as a ceiling for any relay: ``plain_relay.py ALARM TARGET_PORT``.

It prints its kernel-chosen port on 127.0.0.1, and relays each connection it
accepts to 127.0.0.1:TARGET_PORT: two blocking threads per connection, each
splicing one direction socket -> 1 MiB pipe -> socket (no policy, no audit,
no event loop, no wakeups but the kernel's). Case h puts curl on the host
through it beside curl in the sandbox: what arca's relay gets against what
no relay in the data path can beat on this machine.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import sys
import threading

PIPE_SIZE = 1 << 20


def pump(source: socket.socket, sink: socket.socket) -> None:
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        while moved := os.splice(source.fileno(), write_end, PIPE_SIZE, flags=os.SPLICE_F_MOVE):
            while moved:
                moved -= os.splice(read_end, sink.fileno(), moved, flags=os.SPLICE_F_MOVE)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # a reset ends this direction; the other one sees it on its own socket
    finally:
        os.close(read_end)
        os.close(write_end)


def relay(client: socket.socket, target_port: int) -> None:
    with client, socket.create_connection(("127.0.0.1", target_port)) as upstream:
        down = threading.Thread(target=pump, args=(upstream, client))
        down.start()
        pump(client, upstream)
        down.join()


def main(argv: list[str]) -> None:
    signal.alarm(int(argv[0]))
    target_port = int(argv[1])
    server = socket.create_server(("127.0.0.1", 0))
    print(server.getsockname()[1], flush=True)
    while True:
        client, _ = server.accept()
        threading.Thread(target=relay, args=(client, target_port), daemon=True).start()


if __name__ == "__main__":
    main(sys.argv[1:])

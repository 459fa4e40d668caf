"""The socket channel's downstream hop alone: TCP -> AF_UNIX stream socket, copied or spliced.

    .venv/bin/python -m tools.bench.profile.channel_copy [--size MIB] [--rounds N] [--modes copy,splice,splice4]

Measures a candidate of issue 15 without the monitor around it. A sender
process (``helpers/peer.py send``) writes NBYTES into loopback TCP; this process
relays them into one end of an AF_UNIX socketpair (1 MiB send buffer, as
``arca_monitor/channels.py`` sets), and a forked reader takes them from the
other end with ``recv_into``. The relay is blocking and does nothing else, so
the figures are the hop's own cost:

* ``copy``: ``recv_into`` a 1 MiB buffer, then ``sendall`` it (what
  ``connection.copy_down`` does);
* ``splice``: ``splice`` TCP -> a 1 MiB pipe, then ``splice`` pipe -> AF_UNIX
  (the bytes never enter user space);
* ``splice4``: the same with a 4 MiB AF_UNIX send buffer (SO_SNDBUFFORCE), to
  see whether a larger socket buffer than the pipe's 1 MiB helps;
* ``up-copy`` and ``up-splice``: the upstream hop, the other way: a forked
  writer puts 64 KiB chunks into the AF_UNIX socket (as ``send_all`` does),
  the relay moves them into TCP to ``tools/bench/helpers/sink.py``, by
  ``readv`` into 1 MiB and ``send`` (what ``connection.copy_up`` does), or by
  ``splice`` AF_UNIX -> pipe -> TCP.

Each round runs both, interleaved; it prints MB/s and the relay's CPU seconds
per GiB, and the medians.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

PEER = Path(__file__).resolve().parents[1] / "helpers" / "peer.py"
SINK = Path(__file__).resolve().parent.parent / "helpers" / "sink.py"
MIB = 1 << 20
GIB = 1 << 30


def reader(sock: socket.socket, nbytes: int) -> None:
    buffer = bytearray(MIB)
    got = 0
    while got < nbytes and (n := sock.recv_into(buffer)):
        got += n
    os._exit(0 if got == nbytes else 1)


def relay_up(mode: str, nbytes: int) -> tuple[float, float]:
    sink = subprocess.Popen([sys.executable, str(SINK), "600"], stdout=subprocess.PIPE, text=True)
    assert sink.stdout is not None
    tcp = socket.create_connection(("127.0.0.1", int(sink.stdout.readline())))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MIB)
    if tcp.recv(1) != b"g":
        raise RuntimeError("no go byte from the sink")
    child = os.fork()
    if child == 0:
        ours.close()
        tcp.close()
        block = bytes(65536)
        for _ in range(nbytes // len(block)):
            theirs.sendall(block)
        os._exit(0)
    theirs.close()
    cpu = _cpu()
    moved = 0
    if mode == "up-copy":
        buffer = bytearray(MIB)
        view = memoryview(buffer)
        while n := os.readv(ours.fileno(), [buffer]):
            tcp.sendall(view[:n])
            moved += n
    else:
        pipe_read, pipe_write = os.pipe()
        fcntl.fcntl(pipe_write, fcntl.F_SETPIPE_SZ, MIB)
        while n := os.splice(ours.fileno(), pipe_write, MIB):
            left = n
            while left:
                left -= os.splice(pipe_read, tcp.fileno(), left)
            moved += n
        os.close(pipe_read)
        os.close(pipe_write)
    tcp.shutdown(socket.SHUT_WR)
    cpu = _cpu() - cpu
    received, seconds = sink.stdout.readline().split()
    os.waitpid(child, 0)
    tcp.close()
    ours.close()
    sink.wait()
    sink.stdout.close()
    if moved != nbytes or int(received) != nbytes:
        raise RuntimeError(f"{mode}: moved {moved}, the sink got {received} of {nbytes}")
    return nbytes / float(seconds) / 1e6, cpu / (nbytes / GIB)


def relay(mode: str, nbytes: int) -> tuple[float, float]:
    if mode.startswith("up-"):
        return relay_up(mode, nbytes)
    buffer_size = 4 * MIB if mode == "splice4" else MIB
    source = subprocess.Popen([sys.executable, str(PEER), "600", "send", str(nbytes)], stdout=subprocess.PIPE, text=True)
    assert source.stdout is not None
    port = int(source.stdout.readline())
    tcp = socket.create_connection(("127.0.0.1", port))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for end in (ours, theirs):
        end.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_SNDBUFFORCE", 32), buffer_size)
    child = os.fork()
    if child == 0:
        ours.close()
        tcp.close()
        reader(theirs, nbytes)
    theirs.close()
    tcp.sendall(b"g")
    start, cpu = time.perf_counter(), _cpu()
    moved = 0
    if mode == "copy":
        buffer = bytearray(MIB)
        view = memoryview(buffer)
        while n := tcp.recv_into(buffer):
            ours.sendall(view[:n])
            moved += n
    else:
        pipe_read, pipe_write = os.pipe()
        fcntl.fcntl(pipe_write, fcntl.F_SETPIPE_SZ, MIB)
        while n := os.splice(tcp.fileno(), pipe_write, MIB):
            left = n
            while left:
                left -= os.splice(pipe_read, ours.fileno(), left)
            moved += n
        os.close(pipe_read)
        os.close(pipe_write)
    _, status = os.waitpid(child, 0)
    seconds, cpu = time.perf_counter() - start, _cpu() - cpu
    tcp.close()
    ours.close()
    source.kill()  # the peer serves one connection after another: this run's is done
    source.wait()
    source.stdout.close()
    if moved != nbytes or status:
        raise RuntimeError(f"{mode}: moved {moved} of {nbytes}, reader status {status}")
    return nbytes / seconds / 1e6, cpu / (nbytes / GIB)


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB per transfer")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", default="copy,splice")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}")
    runs: dict[str, list[tuple[float, float]]] = {mode: [] for mode in args.modes.split(",")}
    for round_number in range(1, args.rounds + 1):
        for mode, results in runs.items():
            rate, cpu = relay(mode, args.size * MIB)
            results.append((rate, cpu))
            print(f"round {round_number} {mode}: {rate:,.0f} MB/s, relay {cpu:.3f} CPU s/GiB", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")
    for mode, results in runs.items():
        print(f"{mode:7} median {statistics.median(r for r, _ in results):,.0f} MB/s, "
              f"{statistics.median(c for _, c in results):.3f} CPU s/GiB")


if __name__ == "__main__":
    main()

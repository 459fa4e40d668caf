"""What an ordinary program gets, per API, through the monitor and direct: interleaved rounds, medians.

    .venv/bin/python -m tools.bench.profile.paths [--size MIB] [--rounds N] [--only NAME,...] [--list]

Each variant is one program doing one transfer the plain way: downloads read
with ``receive_some(65536)`` or ``receive_some(1 << 20)`` (``recv``, ``read``
in the other APIs), uploads write 64 KiB chunks with ``send_all`` (``sendall``,
``write`` + ``drain``). The peer is a separate process: ``helpers/peer.py send``
(the guest connects and reads) or ``tools/bench/helpers/sink.py`` (the guest
connects and writes; the sink times it). "arca" variants open their own session,
so each starts its own monitor process; "direct" ones use the same API on a
plain socket: trio's ``SocketStream``, ``socket.socket``, asyncio's
``open_connection``. Every round runs every chosen variant once, in order, so
drift in a shared machine hits them alike; the summary gives each variant's
median MB/s, the guest's and the monitor's CPU seconds per GiB, and the ratio
to its direct twin.

To profile one variant, run it alone under py-spy (``make profile-deps`` installs it)::

    .venv/bin/py-spy record --subprocesses --native -o /tmp/p.svg -- \\
        .venv/bin/python -m tools.bench.profile.paths --only trio-arca-down-1m --rounds 1 --size 2048

or ``perf record -g -p PID`` on the pid the program prints (``--hold`` makes it
print the guest's and the monitor's pids and wait a second before starting).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

import arca_control
import arca_control.aio
import arca_control.sync

if TYPE_CHECKING:
    from collections.abc import Callable

HOST = "127.0.0.1"
MIB = 1 << 20
GIB = 1 << 30
UP_CHUNK = 65536
ALARM = 600
HERE = Path(__file__).resolve().parent
PEER = HERE.parent / "helpers" / "peer.py"
SINK = HERE.parent / "helpers" / "sink.py"
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
HOLD = False


@dataclass(frozen=True)
class Result:
    """One transfer: its rate and the CPU the guest and the monitor spent on it."""

    mb_per_s: float
    guest_cpu: float
    monitor_cpu: float | None
    #: Reads the guest made (downloads; 0 for uploads): bytes / reads is the mean chunk it got.
    reads: int = 0


class Peer:
    """The separate sender or sink process: its port, then (sink) its result line."""

    def __init__(self, program: Path, *args: object) -> None:
        self.process = subprocess.Popen([sys.executable, str(program), str(ALARM), *map(str, args)],
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.stdout = self.process.stdout
        self.port = int(self.stdout.readline())
        self.serves_many = program == PEER

    def result(self) -> tuple[int, float]:
        received, seconds = self.stdout.readline().split()
        return int(received), float(seconds)

    def close(self) -> None:
        if self.serves_many:
            self.process.kill()  # helpers/peer.py serves one connection after another: this one is done
        self.process.wait(timeout=60)
        self.stdout.close()


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def monitor_child(exclude: int) -> int | None:
    """The monitor this process spawned: its one child that is not the peer."""
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as children:
            for pid in map(int, children.read().split()):
                if pid != exclude:
                    return pid
    return None


class Clock:
    """Times a transfer and reads both processes' CPU around it."""

    def __init__(self, monitor: int | None) -> None:
        self.monitor = monitor
        if HOLD:
            print(f"guest pid {os.getpid()}, monitor pid {monitor}", flush=True)
            time.sleep(1)
        self.start = time.perf_counter()
        self.cpu = own_cpu()
        self.monitor_cpu = cpu_of(monitor) if monitor else 0.0

    def stop(self, nbytes: int, seconds: float | None = None, reads: int = 0) -> Result:
        elapsed = time.perf_counter() - self.start if seconds is None else seconds
        monitor = cpu_of(self.monitor) - self.monitor_cpu if self.monitor else None
        return Result(nbytes / elapsed / 1e6, own_cpu() - self.cpu, monitor, reads)


# --- trio --------------------------------------------------------------------------------------


async def trio_down(nbytes: int, chunk: int, via: str) -> Result:
    peer = Peer(PEER, "send", nbytes)
    stream: trio.abc.HalfCloseableStream
    try:
        if via == "direct":
            stream = await trio.open_tcp_stream(HOST, peer.port)
            result = await _trio_read(stream, nbytes, chunk, None)
        else:
            async with arca_control.open_session(socket_channel=via == "sock") as session:
                stream = await session.connect(HOST, peer.port)
                pid = session.process.pid if session.process else None
                result = await _trio_read(stream, nbytes, chunk, pid, into=via == "into")
    finally:
        peer.close()
    return result


async def _trio_read(stream: trio.abc.HalfCloseableStream, nbytes: int, chunk: int, monitor: int | None,
                     *, into: bool = False) -> Result:
    await stream.send_all(b"g")
    clock = Clock(monitor)
    received = reads = 0
    if into and isinstance(stream, arca_control.ArcaStream):
        buffer = bytearray(chunk)
        while count := await stream.receive_into(buffer):
            received += count
            reads += 1
    else:
        while data := await stream.receive_some(chunk):
            received += len(data)
            reads += 1
    result = clock.stop(received, reads=reads + 1)
    await stream.aclose()
    if received != nbytes:
        raise RuntimeError(f"got {received} of {nbytes} bytes")
    return result


async def trio_up(nbytes: int, via: str) -> Result:
    peer = Peer(SINK)
    stream: trio.abc.HalfCloseableStream
    try:
        if via == "direct":
            stream = await trio.open_tcp_stream(HOST, peer.port)
            result = await _trio_write(stream, peer, nbytes, None)
        else:
            async with arca_control.open_session(socket_channel=via == "sock") as session:
                stream = await session.connect(HOST, peer.port)
                result = await _trio_write(stream, peer, nbytes, session.process.pid if session.process else None)
    finally:
        peer.close()
    return result


async def _trio_write(stream: trio.abc.HalfCloseableStream, peer: Peer, nbytes: int, monitor: int | None) -> Result:
    if await stream.receive_some(1) != b"g":
        raise RuntimeError("no go byte")
    block = bytes(UP_CHUNK)
    clock = Clock(monitor)
    for _ in range(nbytes // UP_CHUNK):
        await stream.send_all(block)
    await stream.send_eof()
    received, seconds = await trio.to_thread.run_sync(peer.result)
    await stream.aclose()
    return clock.stop(received, seconds)


# --- blocking sockets (arca_control.sync) --------------------------------------------------------


def sync_down(nbytes: int, chunk: int, via: str) -> Result:
    peer = Peer(PEER, "send", nbytes)
    try:
        if via == "direct":
            return _sync_read(socket.create_connection((HOST, peer.port)), nbytes, chunk, None)
        with arca_control.sync.open_session() as session:
            sock = session.create_connection((HOST, peer.port))
            return _sync_read(sock, nbytes, chunk, monitor_child(peer.process.pid))
    finally:
        peer.close()


def _sync_read(sock: socket.socket, nbytes: int, chunk: int, monitor: int | None) -> Result:
    with sock:
        sock.sendall(b"g")
        clock = Clock(monitor)
        received = reads = 0
        while data := sock.recv(chunk):
            received += len(data)
            reads += 1
        result = clock.stop(received, reads=reads + 1)
    if received != nbytes:
        raise RuntimeError(f"got {received} of {nbytes} bytes")
    return result


def sync_up(nbytes: int, via: str) -> Result:
    peer = Peer(SINK)
    try:
        if via == "direct":
            return _sync_write(socket.create_connection((HOST, peer.port)), peer, nbytes, None)
        with arca_control.sync.open_session() as session:
            sock = session.create_connection((HOST, peer.port))
            return _sync_write(sock, peer, nbytes, monitor_child(peer.process.pid))
    finally:
        peer.close()


def _sync_write(sock: socket.socket, peer: Peer, nbytes: int, monitor: int | None) -> Result:
    with sock:
        if sock.recv(1) != b"g":
            raise RuntimeError("no go byte")
        block = bytes(UP_CHUNK)
        clock = Clock(monitor)
        for _ in range(nbytes // UP_CHUNK):
            sock.sendall(block)
        sock.shutdown(socket.SHUT_WR)
        received, seconds = peer.result()
    return clock.stop(received, seconds)


# --- asyncio (arca_control.aio) -----------------------------------------------------------------


async def aio_down(nbytes: int, chunk: int, via: str) -> Result:
    peer = Peer(PEER, "send", nbytes)
    try:
        if via == "direct":
            return await _aio_read(*await asyncio.open_connection(HOST, peer.port), nbytes, chunk, None)
        async with arca_control.aio.open_session() as session:
            reader, writer = await session.open_connection(HOST, peer.port)
            return await _aio_read(reader, writer, nbytes, chunk, monitor_child(peer.process.pid))
    finally:
        peer.close()


async def _aio_read(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, nbytes: int, chunk: int,
                    monitor: int | None) -> Result:
    writer.write(b"g")
    await writer.drain()
    clock = Clock(monitor)
    received = reads = 0
    while data := await reader.read(chunk):
        received += len(data)
        reads += 1
    result = clock.stop(received, reads=reads + 1)
    writer.close()
    await writer.wait_closed()
    if received != nbytes:
        raise RuntimeError(f"got {received} of {nbytes} bytes")
    return result


async def aio_up(nbytes: int, via: str) -> Result:
    peer = Peer(SINK)
    try:
        if via == "direct":
            return await _aio_write(*await asyncio.open_connection(HOST, peer.port), peer, nbytes, None)
        async with arca_control.aio.open_session() as session:
            reader, writer = await session.open_connection(HOST, peer.port)
            return await _aio_write(reader, writer, peer, nbytes, monitor_child(peer.process.pid))
    finally:
        peer.close()


async def _aio_write(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer, nbytes: int,
                     monitor: int | None) -> Result:
    if await reader.read(1) != b"g":
        raise RuntimeError("no go byte")
    block = bytes(UP_CHUNK)
    clock = Clock(monitor)
    for _ in range(nbytes // UP_CHUNK):
        writer.write(block)
        await writer.drain()
    writer.write_eof()
    received, seconds = await asyncio.to_thread(peer.result)
    writer.close()
    await writer.wait_closed()
    return clock.stop(received, seconds)


# --- the variants ---------------------------------------------------------------------------------


def _run_trio_down(nbytes: int, chunk: int, via: str) -> Result:
    return trio.run(trio_down, nbytes, chunk, via)


def _run_aio_down(nbytes: int, chunk: int, via: str) -> Result:
    return asyncio.run(aio_down(nbytes, chunk, via))


def _run_trio_up(nbytes: int, via: str) -> Result:
    return trio.run(trio_up, nbytes, via)


def _run_aio_up(nbytes: int, via: str) -> Result:
    return asyncio.run(aio_up(nbytes, via))


def _variants() -> dict[str, Callable[[int], Result]]:
    out: dict[str, Callable[[int], Result]] = {}
    for name, chunk in (("64k", 65536), ("1m", MIB)):
        for via in ("direct", "arca", "sock"):
            out[f"trio-{via}-down-{name}"] = functools.partial(_run_trio_down, chunk=chunk, via=via)
        for via in ("direct", "arca"):
            out[f"sync-{via}-down-{name}"] = functools.partial(sync_down, chunk=chunk, via=via)
            out[f"aio-{via}-down-{name}"] = functools.partial(_run_aio_down, chunk=chunk, via=via)
    out["trio-into-down-1m"] = functools.partial(_run_trio_down, chunk=MIB, via="into")
    for via in ("direct", "arca", "sock"):
        out[f"trio-{via}-up"] = functools.partial(_run_trio_up, via=via)
    for via in ("direct", "arca"):
        out[f"sync-{via}-up"] = functools.partial(sync_up, via=via)
        out[f"aio-{via}-up"] = functools.partial(_run_aio_up, via=via)
    return out


VARIANTS = _variants()


def twin(name: str) -> str:
    """The direct variant a variant is compared with."""
    api, _, rest = name.split("-", 2)
    return f"{api}-direct-{rest}"


def main() -> None:
    global HOLD
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=int, default=1024, help="MiB per transfer (default 1024)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="", help="comma-separated variant names or prefixes")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--hold", action="store_true", help="print pids and wait 1 s before each transfer")
    args = parser.parse_args()
    HOLD = args.hold
    if args.list:
        print("\n".join(VARIANTS))
        return
    wanted = [w for w in args.only.split(",") if w]
    chosen = [name for name in VARIANTS if not wanted or any(name.startswith(w) for w in wanted)]
    nbytes = args.size * MIB
    print(f"load average {os.getloadavg()[0]:.2f}; {args.size} MiB x {args.rounds} rounds", flush=True)
    runs: dict[str, list[Result]] = {name: [] for name in chosen}
    for round_number in range(1, args.rounds + 1):
        for name in chosen:
            result = VARIANTS[name](nbytes)
            runs[name].append(result)
            print(f"round {round_number} {name}: {result.mb_per_s:,.0f} MB/s", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'variant':24} {'MB/s':>8} {'ratio':>6} {'guest s/GiB':>12} {'monitor s/GiB':>14} {'KiB/read':>9}")
    medians = {name: statistics.median(r.mb_per_s for r in results) for name, results in runs.items()}
    for name, results in runs.items():
        gib = nbytes / GIB
        guest = statistics.median(r.guest_cpu for r in results) / gib
        monitors = [r.monitor_cpu for r in results if r.monitor_cpu is not None]
        monitor = f"{statistics.median(monitors) / gib:.3f}" if monitors else "-"
        base = twin(name)
        ratio = f"{medians[name] / medians[base]:.2f}" if base in medians and base != name else "-"
        reads = statistics.median(r.reads for r in results)
        per_read = f"{nbytes / reads / 1024:,.0f}" if reads else "-"
        print(f"{name:24} {medians[name]:8,.0f} {ratio:>6} {guest:12.3f} {monitor:>14} {per_read:>9}")


if __name__ == "__main__":
    main()

"""Benchmark arca against plain TCP and a socat relay, every case side by side in one run.

Its one job: measure what the monitor's relay, the guest API and the codec cost,
next to the baseline each one should be judged by, and print a table of ratios
against the project's targets (with ``--json FILE``, the same as JSON).

    python tools/bench.py [--quick] [--json FILE] [--cases a,b,...]

Cases (letters or names):

  a download  a separate sender process -> monitor -> guest stream, vs the same
              sender -> a plain Python receiver ("direct"), vs sender -> socat -> receiver
  b upload    guest stream -> monitor -> receiver process, vs the sender -> socat -> receiver
  c cpu       the monitor's CPU seconds per GiB, each direction (from the a and b transfers)
  d connect   session.connect() + aclose round trips, vs trio.open_tcp_stream
  e accept    connections accepted per second through an ArcaListener, vs trio.serve_tcp
  f codec     frames per second decoded and encoded, per message type
  g scale     many concurrent connections through one monitor: open time, RSS and fds

Everything talks to 127.0.0.1 on kernel-chosen ports only. Every load is bounded in
count and in time (trio.fail_after around each step, an alarm in every helper
process). Targets missed are reported, not fatal: the exit status is 0 unless a case
could not run at all.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field

import trio

import arca_control
from arca_control.protocol import wire
from arca_control.protocol.codec import decode, encode
from arca_control.protocol.messages import REGISTRY, ControlEvent, payload_fields

HOST = "127.0.0.1"
MB = 1e6  # throughput is in MB/s, 10^6 bytes per second
GIB = 1 << 30
CHUNK = 1 << 20  # every sender and receiver moves 1 MiB per call
CLOCK_TICK = os.sysconf("SC_CLK_TCK")

CASES = {
    "a": "download",
    "b": "upload",
    "c": "cpu",
    "d": "connect",
    "e": "accept",
    "f": "codec",
    "g": "scale",
}


@dataclass(frozen=True)
class Sizes:
    """How much each case does. ``FULL`` and ``QUICK`` below; the smoke test makes tiny ones."""

    download_bytes: int
    upload_bytes: int
    repeats: int
    connects: int
    accepts: int
    accept_clients: int
    codec_seconds: float  # the whole codec case, shared out over types and directions
    scale_connections: int
    scale_concurrency: int


FULL = Sizes(
    download_bytes=2 * GIB,
    upload_bytes=2 * GIB,
    repeats=3,
    connects=500,
    accepts=3000,
    accept_clients=4,
    codec_seconds=8.0,
    scale_connections=10_000,
    scale_concurrency=256,
)
QUICK = Sizes(
    download_bytes=512 << 20,
    upload_bytes=512 << 20,
    repeats=1,
    connects=100,
    accepts=1000,
    accept_clients=4,
    codec_seconds=2.0,
    scale_connections=5000,
    scale_concurrency=256,
)


# --- helper processes -----------------------------------------------------------
#
# The real peers are separate processes running plain blocking sockets, so the
# bench process (which is also the guest) does not share their CPU time or GIL.
# Each one arms an alarm first: whatever happens to the bench, it cannot outlive it
# by long. The receiver sends one "go" byte and starts its clock only then, and the
# sender waits for that byte: so no variant gets bytes buffered before the clock
# starts, and every variant is timed the same way, by the same receiver.

SINK = r"""
import signal, socket, sys, time
signal.alarm(int(sys.argv[1]))
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
"""

SOURCE = r"""
import signal, socket, sys
signal.alarm(int(sys.argv[1]))
port, left = int(sys.argv[2]), int(sys.argv[3])
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
"""

# Accepts and closes, for the connect case: connects complete in the kernel, this only drains the queue.
ACCEPTOR = r"""
import signal, socket, sys
signal.alarm(int(sys.argv[1]))
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(1024)
print(server.getsockname()[1], flush=True)
while True:
    server.accept()[0].close()
"""

# A few client threads share a fixed count of connect, send 1 byte, read 1 byte, close.
LOADGEN = r"""
import signal, socket, sys, threading, time
signal.alarm(int(sys.argv[1]))
port, count, clients = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
lock = threading.Lock()
left = [count]
errors = []

def take():
    with lock:
        if left[0] <= 0:
            return False
        left[0] -= 1
        return True

def client():
    while take():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"x")
                if sock.recv(1) != b"x":
                    raise OSError("no echo")
        except OSError as exc:
            errors.append(repr(exc))

threads = [threading.Thread(target=client) for _ in range(clients)]
start = time.perf_counter()
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
elapsed = time.perf_counter() - start
if errors:
    print("loadgen:", len(errors), "errors, first:", errors[0], file=sys.stderr)
print(count - len(errors), len(errors), elapsed, flush=True)
"""


def helper(script: str, alarm: float, *args: object) -> list[str]:
    return [sys.executable, "-c", script, str(int(alarm) + 10), *map(str, args)]


class LineReader:
    """Lines from a child's pipe (the port it bound, then its result)."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def line(self) -> str:
        while b"\n" not in self._buffer:
            data = await self._stream.receive_some(4096)
            if not data:
                raise RuntimeError(f"helper process ended without a line (got {bytes(self._buffer)!r})")
            self._buffer += data
        line, _, rest = self._buffer.partition(b"\n")
        self._buffer = bytearray(rest)
        return line.decode()


@asynccontextmanager
async def spawned(argv: list[str], *, read_stderr: bool = False):
    """A child process and a LineReader on its stdout (or stderr); killed and reaped on exit."""
    process = await trio.lowlevel.open_process(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL if read_stderr else subprocess.PIPE,
        stderr=subprocess.PIPE if read_stderr else None,
    )
    pipe = process.stderr if read_stderr else process.stdout
    try:
        yield process, LineReader(pipe)
    finally:
        with trio.CancelScope(shield=True):
            if process.poll() is None:
                process.kill()
            await process.wait()
            await pipe.aclose()


# --- /proc readings -------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), also readable while it is a zombie."""
    with open(f"/proc/{pid}/stat") as stat:
        # The command name may hold spaces and parentheses: split after the last ")".
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def proc_status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} for process {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


# --- statistics -----------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def percentile(values: Iterable[float], fraction: float) -> float:
    """Nearest-rank percentile: p99 of 500 samples is the 495th smallest."""
    ordered = sorted(values)
    rank = max(1, math.ceil(round(len(ordered) * fraction, 9)))
    return ordered[rank - 1]


def progress(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


def transfer_timeout(nbytes: int) -> float:
    # Generous: 100 MB/s is twenty times slower than loopback manages.
    return 20 + nbytes / (100 * MB)


# --- (a), (b), (c): bulk transfers ---------------------------------------------------------


@dataclass
class Transfer:
    """One timed transfer, as the receiver saw it, and the relay's CPU time for it."""

    nbytes: int
    seconds: float
    relay_cpu_seconds: float | None = None

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / MB

    @property
    def cpu_per_gib(self) -> float | None:
        if self.relay_cpu_seconds is None:
            return None
        return self.relay_cpu_seconds / (self.nbytes / GIB)


def _sink_result(line: str, expected: int) -> tuple[int, float]:
    received, seconds = line.split()
    if int(received) != expected:
        raise RuntimeError(f"the receiver got {received} bytes, not {expected}")
    return int(received), float(seconds)


async def sink_port(lines: LineReader) -> int:
    return int(await lines.line())


async def direct_transfer(nbytes: int) -> Transfer:
    """The sender straight to the Python receiver: what loopback TCP gives two Python processes."""
    timeout = transfer_timeout(nbytes)
    with trio.fail_after(timeout):
        async with spawned(helper(SINK, timeout)) as (_, sink):
            port = await sink_port(sink)
            async with spawned(helper(SOURCE, timeout, port, nbytes)) as (source, _):
                received, seconds = _sink_result(await sink.line(), nbytes)
                await source.wait()
    return Transfer(received, seconds)


@asynccontextmanager
async def socat_relay(target_port: int):
    """``socat`` relaying one TCP connection to ``target_port``: yields (process, its port).

    Bidirectional with a 256 KiB buffer, as a userspace relay runs; it listens on
    a kernel-chosen port, which only its log says (-d -d).
    """
    argv = ["socat", "-d", "-d", "-b", "262144", f"TCP4-LISTEN:0,bind={HOST}", f"TCP4:{HOST}:{target_port}"]
    async with spawned(argv, read_stderr=True) as (process, log):
        while True:
            line = await log.line()
            if match := re.search(r"listening on .*:(\d+)\s*$", line):
                break
        yield process, int(match.group(1))


async def socat_transfer(nbytes: int) -> Transfer:
    """The sender through socat to the Python receiver; socat's own CPU time is the relay's."""
    timeout = transfer_timeout(nbytes)
    with trio.fail_after(timeout):
        async with spawned(helper(SINK, timeout)) as (_, sink):
            port = await sink_port(sink)
            async with socat_relay(port) as (socat, relay_port):
                async with spawned(helper(SOURCE, timeout, relay_port, nbytes)) as (source, _):
                    received, seconds = _sink_result(await sink.line(), nbytes)
                    # Its whole life, startup included (a few ms): socat may have exited
                    # already, but it is not reaped yet, so /proc still has it.
                    cpu = cpu_seconds(socat.pid)
                    await source.wait()
    return Transfer(received, seconds, cpu)


async def arca_download(nbytes: int, socket_channel: bool = False) -> Transfer:
    """The sender to a listener in the monitor; the guest reads its stream to the end.

    ``socket_channel``: over the socket channel (one AF_UNIX socket, copied by
    the monitor) instead of the pipes (spliced).
    """
    timeout = transfer_timeout(nbytes)
    with trio.fail_after(timeout):
        async with arca_control.open_session(socket_channel=socket_channel) as session:
            monitor = session.process.pid
            listener = await session.listen(HOST, 0)
            async with spawned(helper(SOURCE, timeout, listener.local.port, nbytes)) as (source, _):
                stream = await listener.accept()
                await stream.send_all(b"g")
                cpu_before, start = cpu_seconds(monitor), time.perf_counter()
                received = 0
                buffer = bytearray(CHUNK)
                # The guest's reading loop, and nothing else: into one buffer, as the
                # direct receiver does with recv_into.
                while count := await stream.receive_into(buffer):
                    received += count
                seconds = time.perf_counter() - start
                cpu = cpu_seconds(monitor) - cpu_before
                await stream.aclose()
                await source.wait()
    if received != nbytes:
        raise RuntimeError(f"the guest got {received} bytes, not {nbytes}")
    return Transfer(received, seconds, cpu)


async def arca_upload(nbytes: int, socket_channel: bool = False) -> Transfer:
    """The guest connects out through the monitor and writes; the Python receiver times it."""
    timeout = transfer_timeout(nbytes)
    buffer = memoryview(bytearray(CHUNK))
    with trio.fail_after(timeout):
        async with arca_control.open_session(socket_channel=socket_channel) as session:
            monitor = session.process.pid
            async with spawned(helper(SINK, timeout)) as (_, sink):
                port = await sink_port(sink)
                stream = await session.connect(HOST, port)
                if await stream.receive_some(1) != b"g":
                    raise RuntimeError("no go byte from the receiver")
                cpu_before = cpu_seconds(monitor)
                left = nbytes
                while left >= CHUNK:
                    await stream.send_all(buffer)
                    left -= CHUNK
                if left:
                    await stream.send_all(buffer[:left])
                await stream.send_eof()
                received, seconds = _sink_result(await sink.line(), nbytes)
                cpu = cpu_seconds(monitor) - cpu_before
                await stream.aclose()
    return Transfer(received, seconds, cpu)


async def transfer_case(name: str, nbytes: int, repeats: int, variants: dict[str, Callable]) -> dict:
    """Every variant once per round, interleaved, so drift in the machine hits all alike."""
    runs: dict[str, list[Transfer]] = {variant: [] for variant in variants}
    for round_number in range(1, repeats + 1):
        for variant, measure in variants.items():
            transfer = await measure(nbytes)
            runs[variant].append(transfer)
            cpu = f", relay CPU {transfer.cpu_per_gib:.3f} s/GiB" if transfer.cpu_per_gib is not None else ""
            progress(f"{name} {round_number}/{repeats} {variant}: {transfer.mb_per_s:.0f} MB/s{cpu}")
    result: dict = {"bytes": nbytes, "repeats": repeats}
    for variant, transfers in runs.items():
        entry = {
            "mb_per_s": [t.mb_per_s for t in transfers],
            "median_mb_per_s": median(t.mb_per_s for t in transfers),
        }
        if transfers[0].cpu_per_gib is not None:
            entry["relay_cpu_s_per_gib"] = [t.cpu_per_gib for t in transfers]
            entry["median_relay_cpu_s_per_gib"] = median(t.cpu_per_gib for t in transfers)
        result[variant] = entry
    return result


async def download_case(sizes: Sizes, baselines: bool = True) -> dict:
    variants = {"arca": arca_download, "arca_socket": functools.partial(arca_download, socket_channel=True)}
    if baselines:
        variants = {"direct": direct_transfer, "socat": socat_transfer, **variants}
    return await transfer_case("download", sizes.download_bytes, sizes.repeats, variants)


async def upload_case(sizes: Sizes, baselines: bool = True) -> dict:
    variants = {"arca": arca_upload, "arca_socket": functools.partial(arca_upload, socket_channel=True)}
    if baselines:
        variants = {"direct": direct_transfer, "socat": socat_transfer, **variants}
    return await transfer_case("upload", sizes.upload_bytes, sizes.repeats, variants)


# --- (d) connect ------------------------------------------------------------------------------


async def connect_case(sizes: Sizes) -> dict:
    """Sequential connect + close round trips, arca and direct interleaved, to one listener."""
    arca_ms: list[float] = []
    direct_ms: list[float] = []
    with trio.fail_after(60 + sizes.connects * 0.1):
        async with spawned(helper(ACCEPTOR, 60 + sizes.connects * 0.1)) as (_, acceptor):
            port = await sink_port(acceptor)
            async with arca_control.open_session() as session:
                for _ in range(sizes.connects):
                    start = time.perf_counter()
                    stream = await session.connect(HOST, port)
                    await stream.aclose()
                    arca_ms.append((time.perf_counter() - start) * 1000)

                    start = time.perf_counter()
                    stream = await trio.open_tcp_stream(HOST, port)
                    await stream.aclose()
                    direct_ms.append((time.perf_counter() - start) * 1000)
    result = {"connects": sizes.connects}
    for variant, samples in (("arca", arca_ms), ("direct", direct_ms)):
        result[variant] = {"median_ms": median(samples), "p99_ms": percentile(samples, 0.99), "max_ms": max(samples)}
    progress(f"connect: arca median {result['arca']['median_ms']:.3f} ms, direct {result['direct']['median_ms']:.3f} ms")
    return result


# --- (e) accept -------------------------------------------------------------------------------


async def echo_one_byte(stream: trio.abc.Stream) -> None:
    """The accept case's handler, the same for both servers."""
    try:
        if data := await stream.receive_some(1):
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


async def run_loadgen(port: int, sizes: Sizes, timeout: float) -> float:
    """Run the client load generator against ``port``; connections per second."""
    async with spawned(helper(LOADGEN, timeout, port, sizes.accepts, sizes.accept_clients)) as (loadgen, out):
        done, failed, seconds = (await out.line()).split()
        await loadgen.wait()
    if int(failed):
        raise RuntimeError(f"{failed} of {sizes.accepts} load generator connections failed (see stderr)")
    return int(done) / float(seconds)


#: Accepts an ArcaListener keeps outstanding for serve_listeners.
ACCEPT_PREFETCH = 8

async def arca_accept_rate(sizes: Sizes, timeout: float) -> float:
    async with arca_control.open_session() as session:
        # A server keeps a few Accepts outstanding, as the kernel keeps a backlog.
        listener = await session.listen(HOST, 0, backlog=1024, prefetch=ACCEPT_PREFETCH)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, echo_one_byte, [listener])
            rate = await run_loadgen(listener.local.port, sizes, timeout)
            nursery.cancel_scope.cancel()
    return rate


async def direct_accept_rate(sizes: Sizes, timeout: float) -> float:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, echo_one_byte, 0, host=HOST))
        rate = await run_loadgen(listeners[0].socket.getsockname()[1], sizes, timeout)
        nursery.cancel_scope.cancel()
    return rate


async def accept_case(sizes: Sizes) -> dict:
    timeout = 30 + sizes.accepts / 100  # 100 accepts/s would already be absurdly slow
    rates: dict[str, list[float]] = {"arca": [], "direct": []}
    for round_number in range(1, sizes.repeats + 1):
        for variant, measure in (("direct", direct_accept_rate), ("arca", arca_accept_rate)):
            with trio.fail_after(timeout):
                rates[variant].append(await measure(sizes, timeout))
            progress(f"accept {round_number}/{sizes.repeats} {variant}: {rates[variant][-1]:.0f} conn/s")
    return {
        "connections": sizes.accepts,
        "clients": sizes.accept_clients,
        **{variant: {"per_s": values, "median_per_s": median(values)} for variant, values in rates.items()},
    }


# --- (f) codec --------------------------------------------------------------------------------

def sample_message(cls):
    """A valid message of ``cls`` with every field set to its field type's sample value."""
    values = {f.name: wire.declared(f).sample for f in payload_fields(cls)}
    request_id = 0 if issubclass(cls, ControlEvent) else 0x0A0B0C0D
    return cls(request_id=request_id, **values)


def calls_per_second(fn: Callable[[], object], seconds: float) -> float:
    """Call ``fn`` in batches until ``seconds`` have passed (checking the clock per batch only)."""
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(64):
            fn()
        calls += 64
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - start)


def codec_case(sizes: Sizes) -> dict:
    """Frames per second through ``decode`` and ``encode``, per message type, on valid frames."""
    per_run = sizes.codec_seconds / (2 * len(REGISTRY))
    types = {}
    for kind, cls in sorted(REGISTRY.items()):
        msg = sample_message(cls)
        frame = encode(msg)
        if decode(frame) != msg:
            raise RuntimeError(f"{cls.__name__} does not round-trip: {msg!r}")
        types[cls.__name__] = {
            "type": int(kind),
            "frame_bytes": len(frame),
            "parse_per_s": calls_per_second(functools.partial(decode, frame), per_run),
            "build_per_s": calls_per_second(functools.partial(encode, msg), per_run),
        }
    result: dict = {"types": types}
    for op in ("parse", "build"):
        rates = {name: t[f"{op}_per_s"] for name, t in types.items()}
        slowest = min(rates, key=rates.get)
        result[op] = {"min_per_s": rates[slowest], "slowest": slowest, "mean_per_s": statistics.fmean(rates.values())}
    progress(f"codec: parse min {result['parse']['min_per_s']:.0f}/s ({result['parse']['slowest']}), "
             f"mean {result['parse']['mean_per_s']:.0f}/s")
    return result


# --- (g) scale --------------------------------------------------------------------------------

#: Descriptors per relayed connection: the monitor holds the socket, the rx pipe's write end
#: and the tx socket's read end; the bench holds the other two ends and the echo server's socket.
FDS_PER_CONNECTION = 3
#: A connection being handed over holds all four channel ends in the monitor until ConnectOk
#: is sent: two more each, for as many as are connecting at once.
FDS_PER_HANDOVER = 2
FD_RESERVE = 256  # the interpreter, trio, the control channel, helper pipes


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE (inherited by the monitor we spawn) as far as allowed; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted > hard:
        try:  # only with CAP_SYS_RESOURCE
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            pass
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def echo_all(stream: trio.abc.Stream) -> None:
    """The scale case's external server: echo until EOF."""
    try:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


async def open_many(count: int, concurrency: int, connect: Callable) -> tuple[list, float]:
    """``count`` connections, at most ``concurrency`` connecting at once; and the seconds it took."""
    limiter = trio.CapacityLimiter(concurrency)
    streams = []

    async def open_one() -> None:
        async with limiter:
            streams.append(await connect())

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(open_one)
    return streams, time.perf_counter() - start


async def echo_on_each(streams: list, concurrency: int) -> float:
    """Send a small message on every stream and read it back; the seconds it took."""
    message = b"arca scale echo!"
    limiter = trio.CapacityLimiter(concurrency)

    async def echo_one(stream) -> None:
        async with limiter:
            await stream.send_all(message)
            got = b""
            while len(got) < len(message):
                data = await stream.receive_some(len(message) - len(got))
                if not data:
                    raise RuntimeError("a scale connection ended before its echo")
                got += data
            if got != message:
                raise RuntimeError(f"a scale connection echoed {got!r}")

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for stream in streams:
            nursery.start_soon(echo_one, stream)
    return time.perf_counter() - start


async def wait_until(predicate: Callable[[], bool], seconds: float, interval: float = 0.05) -> bool:
    """Poll ``predicate`` (a /proc reading: nothing to wait on) at ``interval`` until true or timeout."""
    with trio.move_on_after(seconds):
        while not predicate():
            await trio.sleep(interval)
        return True
    return False


async def scale_case(sizes: Sizes) -> dict:
    """Many concurrent connections through one monitor, to a plain trio echo server in this process."""
    requested = sizes.scale_connections
    reserve = FD_RESERVE + FDS_PER_HANDOVER * sizes.scale_concurrency
    limit = raise_fd_limit(requested * FDS_PER_CONNECTION + reserve)
    count = min(requested, (limit - reserve) // FDS_PER_CONNECTION)
    note = "" if count == requested else (
        f"{count} of {requested} connections: RLIMIT_NOFILE is {limit} (hard), and the monitor needs "
        f"{FDS_PER_CONNECTION} fds per connection, {FDS_PER_CONNECTION + FDS_PER_HANDOVER} while handing one over"
    )
    if note:
        progress(f"scale: {note}")
    result: dict = {"requested": requested, "connections": count, "fd_limit": limit, "note": note}
    with trio.fail_after(120 + count / 50):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, echo_all, 0, host=HOST))
            port = listeners[0].socket.getsockname()[1]
            async with arca_control.open_session() as session:
                monitor = session.process.pid
                idle = {"rss_kib": proc_status_kib(monitor, "VmRSS"), "fds": fd_count(monitor)}
                streams, open_s = await open_many(
                    count, sizes.scale_concurrency, functools.partial(session.connect, HOST, port)
                )
                echo_s = await echo_on_each(streams, sizes.scale_concurrency)
                # All open, all echoed: the peak.
                peak = {
                    "rss_kib": proc_status_kib(monitor, "VmRSS"),
                    "hwm_kib": proc_status_kib(monitor, "VmHWM"),
                    "fds": fd_count(monitor),
                }
                start = time.perf_counter()
                for stream in streams:
                    await stream.aclose()
                streams.clear()
                drained = await wait_until(lambda: fd_count(monitor) <= idle["fds"], 60)
                close_s = time.perf_counter() - start
            # The same count opened directly, as the baseline for the open time.
            direct, direct_open_s = await open_many(
                count, sizes.scale_concurrency, functools.partial(trio.open_tcp_stream, HOST, port)
            )
            for stream in direct:
                await stream.aclose()
            nursery.cancel_scope.cancel()
    result.update(
        open_s=open_s, echo_s=echo_s, close_s=close_s, drained=drained,
        direct_open_s=direct_open_s, idle=idle, peak=peak,
    )
    progress(f"scale: {count} connections opened in {open_s:.2f} s (direct {direct_open_s:.2f} s), "
             f"monitor RSS {peak['rss_kib'] / 1024:.1f} MiB, {peak['fds']} fds")
    return result


# --- running the cases --------------------------------------------------------------------------


async def run_cases(sizes: Sizes, cases: Iterable[str]) -> dict:
    """Run the chosen cases (letters); a case that fails is recorded, and the others still run."""
    cases = set(cases)
    steps: list[tuple[str, Callable]] = []
    # The CPU figures come from the arca transfers; asked for alone, run only those.
    if "a" in cases or "c" in cases:
        steps.append(("download", functools.partial(download_case, sizes, "a" in cases)))
    if "b" in cases or "c" in cases:
        steps.append(("upload", functools.partial(upload_case, sizes, "b" in cases)))
    if "d" in cases:
        steps.append(("connect", functools.partial(connect_case, sizes)))
    if "e" in cases:
        steps.append(("accept", functools.partial(accept_case, sizes)))
    if "f" in cases:
        steps.append(("codec", None))
    if "g" in cases:
        steps.append(("scale", functools.partial(scale_case, sizes)))
    results: dict = {}
    for name, step in steps:
        print(f"[{name}]", file=sys.stderr, flush=True)
        try:
            if step is None:  # pure CPU, no I/O: nothing for trio to do meanwhile
                results[name] = codec_case(sizes)
            else:
                results[name] = await step()
        except Exception as exc:
            progress(f"{name} FAILED: {exc!r}")
            results[name] = {"error": repr(exc)}
    return results


@dataclass(frozen=True)
class Target:
    """What a row must reach: its ratio (``of="ratio"``) or its measured value, ``>=`` or ``<=`` a limit."""

    op: str
    limit: float
    of: str = "ratio"
    unit: str = ""

    def met(self, measured: float | None, ratio: float | None) -> bool | None:
        value = ratio if self.of == "ratio" else measured
        if value is None:
            return None
        return value >= self.limit if self.op == ">=" else value <= self.limit

    def __str__(self) -> str:
        sign = "≥" if self.op == ">=" else "≤"
        return f"{sign} {self.limit:g}×" if self.of == "ratio" else f"{sign} {_number(self.limit)} {self.unit}".rstrip()


@dataclass
class Row:
    case: str
    measured: float | None
    baseline: float | None
    unit: str
    target: Target | None = None
    note: str = ""
    ratio: float | None = field(init=False)
    met: bool | None = field(init=False)

    def __post_init__(self) -> None:
        self.ratio = self.measured / self.baseline if self.measured is not None and self.baseline else None
        self.met = self.target.met(self.measured, self.ratio) if self.target else None

    def as_json(self) -> dict:
        out = asdict(self)
        out["target"] = str(self.target) if self.target else None
        return out


def _get(results: dict, name: str) -> dict | None:
    entry = results.get(name)
    return entry if entry and "error" not in entry else None


def transfer_rows(results: dict, cases: set[str]) -> list[Row]:
    rows = []
    down, up = _get(results, "download"), _get(results, "upload")
    if down and "a" in cases:
        arca = down["arca"]["median_mb_per_s"]
        rows.append(Row("a download vs direct TCP", arca, down["direct"]["median_mb_per_s"], "MB/s", Target(">=", 0.9)))
        rows.append(Row("a download vs socat relay", arca, down["socat"]["median_mb_per_s"], "MB/s", Target(">=", 1.5)))
    if up and "b" in cases:
        arca = up["arca"]["median_mb_per_s"]
        rows.append(Row("b upload vs socat relay", arca, up["socat"]["median_mb_per_s"], "MB/s", Target(">=", 1.0)))
        rows.append(Row("b upload vs direct TCP", arca, up["direct"]["median_mb_per_s"], "MB/s", note="info"))
    # The socket channel (PROTOCOL.md section 5): what compatibility costs, for users to choose.
    for letter, name, entry in (("a", "download", down), ("b", "upload", up)):
        if entry and letter in cases and "arca_socket" in entry:
            rows.append(Row(f"{letter} {name}, socket channel vs pipes", entry["arca_socket"]["median_mb_per_s"],
                            entry["arca"]["median_mb_per_s"], "MB/s", note="info"))
            rows.append(Row(f"{letter} {name}, socket channel vs direct", entry["arca_socket"]["median_mb_per_s"],
                            entry["direct"]["median_mb_per_s"], "MB/s", note="info"))
    if "c" in cases:
        for name, entry, target in (
            ("download", down, Target("<=", 0.2, of="measured", unit="s/GiB")),
            ("upload", up, None),
        ):
            if entry:
                socat = entry.get("socat", {}).get("median_relay_cpu_s_per_gib")
                rows.append(Row(f"c monitor CPU {name} (vs socat)", entry["arca"]["median_relay_cpu_s_per_gib"],
                                socat, "s/GiB", target, note="" if target else "info"))
                if "arca_socket" in entry:
                    rows.append(Row(f"c monitor CPU {name}, socket channel (vs socat)",
                                    entry["arca_socket"]["median_relay_cpu_s_per_gib"], socat, "s/GiB", note="info"))
    return rows


def other_rows(results: dict) -> list[Row]:
    rows = []
    if connect := _get(results, "connect"):
        arca, direct = connect["arca"], connect["direct"]
        rows.append(Row("d connect+close median", arca["median_ms"], direct["median_ms"], "ms", Target("<=", 2.0)))
        rows.append(Row("d connect+close p99", arca["p99_ms"], direct["p99_ms"], "ms", note="info"))
    if accept := _get(results, "accept"):
        rows.append(Row("e accept rate", accept["arca"]["median_per_s"], accept["direct"]["median_per_s"],
                        "conn/s", Target(">=", 0.5)))
    if codec := _get(results, "codec"):
        parse, build = codec["parse"], codec["build"]
        rows.append(Row("f codec parse, slowest type", parse["min_per_s"], None, "frames/s",
                        Target(">=", 100_000, of="measured", unit="/s"), note=parse["slowest"]))
        rows.append(Row("f codec parse, mean of types", parse["mean_per_s"], None, "frames/s",
                        Target(">=", 100_000, of="measured", unit="/s")))
        rows.append(Row("f codec build, slowest type", build["min_per_s"], None, "frames/s", note=build["slowest"]))
        rows.append(Row("f codec build, mean of types", build["mean_per_s"], None, "frames/s", note="info"))
    if scale := _get(results, "scale"):
        n = scale["connections"]
        rows.append(Row(f"g open {n} conns (vs direct)", scale["open_s"], scale["direct_open_s"], "s", note="info"))
        rows.append(Row(f"g monitor RSS at {n} (vs idle)", scale["peak"]["rss_kib"] / 1024,
                        scale["idle"]["rss_kib"] / 1024, "MiB", Target("<=", 100, of="measured", unit="MiB")))
        if n < scale["requested"]:
            # The target is for the requested count: extrapolate linearly from the idle monitor.
            per_conn = (scale["peak"]["rss_kib"] - scale["idle"]["rss_kib"]) / n
            at_requested = (scale["idle"]["rss_kib"] + per_conn * scale["requested"]) / 1024
            rows.append(Row(f"g monitor RSS at {scale['requested']}, extrapolated", at_requested,
                            scale["idle"]["rss_kib"] / 1024, "MiB", Target("<=", 100, of="measured", unit="MiB")))
        rows.append(Row(f"g echo once on all {n}", scale["echo_s"], None, "s", note="info"))
        rows.append(Row(f"g monitor fds at {n} (vs idle)", scale["peak"]["fds"], scale["idle"]["fds"], "fds",
                        note="info"))
        rows.append(Row(f"g close {n} conns, monitor drained", scale["close_s"], None, "s",
                        note="info" if scale["drained"] else "NOT DRAINED in 60 s"))
    return rows


def build_rows(results: dict, cases: Iterable[str] = CASES) -> list[Row]:
    cases = set(cases)
    rows = transfer_rows(results, cases) + other_rows(results)
    for name, entry in results.items():
        if "error" in entry:
            rows.append(Row(f"{name} FAILED", None, None, "", note=entry["error"]))
    return rows


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    if value == int(value) and abs(value) < 1e6:
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def format_table(rows: list[Row]) -> str:
    header = ("case", "measured", "baseline", "ratio", "target", "met")
    lines = []
    for row in rows:
        met = "-" if row.met is None else ("yes" if row.met else "NO")
        lines.append((
            row.case,
            f"{_number(row.measured)} {row.unit}".strip() if row.measured is not None else "-",
            f"{_number(row.baseline)} {row.unit}".strip() if row.baseline is not None else "-",
            (f"{row.ratio:.2f}×" if row.ratio < 100 else f"{row.ratio:.0f}×") if row.ratio is not None else "-",
            str(row.target) if row.target else "-",
            met + (f"  ({row.note})" if row.note and row.note != "info" else ""),
        ))
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header) - 1)]

    def render(cells) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + "  " + cells[-1]

    return "\n".join([render(header), render(["-" * w for w in widths] + ["---"]), *map(render, lines)])


def metadata(sizes: Sizes, quick: bool) -> dict:
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": quick,
        "python": platform.python_version(),
        "trio": trio.__version__,
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "socat": shutil.which("socat"),
        "sizes": asdict(sizes),
    }


def write_json(path: str | os.PathLike, meta: dict, results: dict, rows: list[Row]) -> None:
    document = {"meta": meta, "results": results, "rows": [row.as_json() for row in rows]}
    with open(path, "w") as out:
        json.dump(document, out, indent=2, allow_nan=False)
        out.write("\n")


def parse_cases(text: str) -> list[str]:
    """``a,b`` or ``download,upload`` (or a mix) to case letters, in order."""
    names = {name: letter for letter, name in CASES.items()}
    letters = []
    for item in filter(None, (part.strip().lower() for part in text.split(","))):
        letter = item if item in CASES else names.get(item)
        if letter is None:
            raise argparse.ArgumentTypeError(f"unknown case {item!r}; choose from {', '.join(CASES)} or "
                                             f"{', '.join(CASES.values())}")
        letters.append(letter)
    return sorted(set(letters))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--quick", action="store_true", help="smaller loads, under a minute")
    p.add_argument("--json", metavar="FILE", help="also write the results and the table as JSON")
    p.add_argument("--cases", type=parse_cases, default=sorted(CASES), metavar="a,b,...",
                   help="which cases to run (default: all)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if shutil.which("socat") is None and {"a", "b"} & set(args.cases):
        print("socat is not installed: the socat baselines will fail (apt-get install socat)", file=sys.stderr)
    results = trio.run(run_cases, sizes, args.cases)
    rows = build_rows(results, args.cases)
    print()
    print(format_table(rows))
    missed = [row.case for row in rows if row.met is False]
    failed = [name for name, entry in results.items() if "error" in entry]
    print()
    print(f"targets met: {sum(row.met is True for row in rows)} of {sum(row.met is not None for row in rows)}"
          + (f"; missed: {', '.join(missed)}" if missed else ""))
    if failed:
        print(f"cases that could not run: {', '.join(failed)}")
    if args.json:
        write_json(args.json, metadata(sizes, args.quick), results, rows)
        print(f"results written to {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

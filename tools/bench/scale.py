"""Case g: many concurrent connections through one monitor, to a plain trio echo server in this process.

It measures how long opening them takes (next to opening as many directly),
what the monitor holds at the peak (RSS, descriptors per connection), an echo
on every one, and how fast the monitor is back to idle once they close; once
on the socket channel (two monitor fds per connection) and once on pipes
(three).

Where RLIMIT_NOFILE (raised to its hard limit here and in the monitor) does
not allow the requested count, the run opens as many as fit and its ``note``
says how many and why; running out of fds anyway (EMFILE, ENFILE) stops it
where it got to, with the error in the note, rather than failing the case.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import functools
import os
import resource
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import trio

import arca_control

from .base import HOST, Sizes, progress
from .processes import fd_count, monitor_pid, proc_status_kib

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

class Channel(enum.Enum):
    """The guest's data channel kinds: pipes (trio's default) and the socket channel (``sync``, ``aio``, ``install()``)."""

    PIPES = "pipes"
    SOCKET = "socket"


@dataclass(frozen=True)
class FdCost:
    """Descriptors per relayed connection, in the monitor and in this process."""

    #: The monitor: the TCP socket and its channel ends (pipes: rx's write end and tx's read
    #: end; socket channel: its end of the socketpair, one fd for both directions).
    monitor: int
    #: Held besides, while a connection is handed over: the guest's ends, until ConnectOk is sent.
    handover: int
    #: This process: the guest's channel ends (pipes: two; socket channel: one) and the echo
    #: server's socket. The direct baseline needs two (client and server), never more.
    bench: int


COSTS = {
    Channel.PIPES: FdCost(monitor=3, handover=2, bench=3),
    Channel.SOCKET: FdCost(monitor=2, handover=1, bench=2),
}
#: Descriptors kept free in each process beyond what is counted, for whatever trio or the interpreter opens.
FD_MARGIN = 32
#: The errors that say a process (or the system) has no descriptors left: the run stops there.
OUT_OF_FDS = frozenset({errno.EMFILE, errno.ENFILE})


@dataclass(frozen=True)
class Idle:
    """The monitor before any connection."""

    rss_kib: int
    fds: int


@dataclass(frozen=True)
class Peak:
    """The monitor with every connection open and echoed."""

    rss_kib: int
    hwm_kib: int
    fds: int


@dataclass(frozen=True)
class ScaleResult:
    """One run of the case, on one channel kind: how many connections it reached, and what they cost.

    The top-level result is the pipe channel's (trio's default); ``socket_channel`` holds the
    socket channel's run of the same case.
    """

    requested: int
    #: The count reached: all that were requested, or as many as the fd limit allows.
    connections: int
    fd_limit: int
    #: Why ``connections`` is short of ``requested``; empty when it is not.
    note: str
    open_s: float
    echo_s: float
    close_s: float
    drained: bool
    direct_open_s: float
    idle: Idle
    peak: Peak
    channel: str = Channel.PIPES.value
    #: Measured: (the monitor's fds at the peak - idle) / connections.
    fds_per_connection: float = 0.0
    socket_channel: ScaleResult | None = None

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def raise_fd_limit(wanted: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit (inherited by the monitor we spawn, which raises its own too)
    to ``wanted`` where allowed (only with CAP_SYS_RESOURCE), else to the hard limit; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if wanted > hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        except (ValueError, OSError):
            pass
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass(frozen=True)
class Fit:
    """How many connections fit both processes' fd limit: ``bulk`` opened ``concurrency`` at a time,
    then the rest of ``total`` one at a time (a connection being handed over holds more), and why
    ``total`` falls short of what was requested, if it does."""

    bulk: int
    total: int
    note: str


def fitting(requested: int, limit: int, cost: FdCost, concurrency: int, monitor_idle: int,
            bench_idle: int) -> Fit:
    monitor_free = limit - monitor_idle - FD_MARGIN
    bench_room = (limit - bench_idle - FD_MARGIN) // cost.bench
    monitor_room = (monitor_free - cost.handover) // cost.monitor
    total = max(0, min(requested, monitor_room, bench_room))
    bulk = max(0, min(total, (monitor_free - cost.handover * concurrency) // cost.monitor))
    if total == requested:
        return Fit(bulk, total, "")
    who = (f"the monitor needs {cost.monitor} fds per connection ({cost.monitor + cost.handover} while handing "
           f"one over) beside its {monitor_idle}") if monitor_room <= bench_room else (
           f"this process needs {cost.bench} per connection (the guest's ends and the echo server's socket) "
           f"beside its {bench_idle}")
    return Fit(bulk, total, f"{total} of {requested} connections: RLIMIT_NOFILE is {limit} (the hard limit), "
                            f"and {who}")


async def echo_all(stream: trio.abc.Stream) -> None:
    """The scale case's external server: echo until EOF."""
    try:
        while data := await stream.receive_some(65536):
            await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await stream.aclose()


@dataclass
class Opened:
    """What :func:`open_many` opened, how long it took, and the error that stopped it early, if one did."""

    streams: list[trio.abc.Stream]
    seconds: float
    stopped_by: OSError | None = None


async def open_many(
    count: int, concurrency: int, connect: Callable[[], Awaitable[trio.abc.Stream]]
) -> Opened:
    """``count`` connections, at most ``concurrency`` connecting at once.

    Out of descriptors (EMFILE, ENFILE, in this process or the monitor) it stops
    opening more and says so in ``stopped_by``; any other error is raised.
    """
    limiter = trio.CapacityLimiter(concurrency)
    opened = Opened([], 0.0)

    async def open_one() -> None:
        async with limiter:
            if opened.stopped_by is not None:
                return
            try:
                opened.streams.append(await connect())
            except OSError as exc:
                if exc.errno not in OUT_OF_FDS:
                    raise
                opened.stopped_by = opened.stopped_by or exc

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(open_one)
    opened.seconds = time.perf_counter() - start
    return opened


async def echo_on_each(streams: list[trio.abc.Stream], concurrency: int) -> float:
    """Send a small message on every stream and read it back; the seconds it took."""
    message = b"arca scale echo!"
    limiter = trio.CapacityLimiter(concurrency)

    async def echo_one(stream: trio.abc.Stream) -> None:
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
    """Poll ``predicate`` (a /proc reading: there is no event to wait on) every ``interval`` until true or timeout."""
    with trio.move_on_after(seconds):
        while True:
            if predicate():
                return True
            await trio.sleep(interval)
    return False


async def scale_case(sizes: Sizes) -> ScaleResult:
    """Many concurrent connections through one monitor, on each channel kind: the pipes' run, with the socket channel's."""
    limit = raise_fd_limit(sizes.scale_connections * COSTS[Channel.PIPES].monitor + 1024)
    socket_run = await scale_run(sizes, Channel.SOCKET, limit)
    pipes_run = await scale_run(sizes, Channel.PIPES, limit)
    return dataclasses.replace(pipes_run, socket_channel=socket_run)


async def scale_run(sizes: Sizes, channel: Channel, limit: int) -> ScaleResult:
    """As many of ``sizes.scale_connections`` as fit, over ``channel``, to a plain trio echo server in this process."""
    requested, concurrency, cost = sizes.scale_connections, sizes.scale_concurrency, COSTS[channel]
    name = f"scale, {channel.value}"
    with trio.fail_after(120 + requested / 50):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, echo_all, 0, host=HOST))
            port = listeners[0].socket.getsockname()[1]
            async with arca_control.open_session(socket_channel=channel is Channel.SOCKET) as session:
                monitor = monitor_pid(session)
                idle = Idle(rss_kib=proc_status_kib(monitor, "VmRSS"), fds=fd_count(monitor))
                bench_idle = fd_count(os.getpid())
                fit = fitting(requested, limit, cost, concurrency, idle.fds, bench_idle)
                note = fit.note
                if note:
                    progress(f"{name}: {note}")
                connect = functools.partial(session.connect, HOST, port)
                opened = await open_many(fit.bulk, concurrency, connect)
                if opened.stopped_by is None and fit.total > fit.bulk:
                    rest = await open_many(fit.total - fit.bulk, 1, connect)
                    opened = Opened(opened.streams + rest.streams, opened.seconds + rest.seconds, rest.stopped_by)
                streams = opened.streams
                if opened.stopped_by is not None:
                    note = (f"{len(streams)} of {requested} connections: opening more failed with "
                            f"{opened.stopped_by!r}" + (f"; {note}" if note else ""))
                    progress(f"{name}: {note}")
                count = len(streams)
                echo_s = await echo_on_each(streams, concurrency)
                # All open, all echoed: the peak.
                peak = Peak(
                    rss_kib=proc_status_kib(monitor, "VmRSS"),
                    hwm_kib=proc_status_kib(monitor, "VmHWM"),
                    fds=fd_count(monitor),
                )
                start = time.perf_counter()
                for stream in streams:
                    await stream.aclose()
                streams.clear()
                drained = await wait_until(lambda: fd_count(monitor) <= idle.fds, 60)
                close_s = time.perf_counter() - start
            # The echo server's sockets close once it reads their EOF: wait, so that the baseline has their fds.
            await wait_until(lambda: fd_count(os.getpid()) <= bench_idle, 60)
            # The same count opened directly, as the baseline for the open time.
            direct = await open_many(count, concurrency, functools.partial(trio.open_tcp_stream, HOST, port))
            for stream in direct.streams:
                await stream.aclose()
            nursery.cancel_scope.cancel()
    per_connection = (peak.fds - idle.fds) / count if count else 0.0
    progress(f"{name}: {count} connections opened in {opened.seconds:.2f} s (direct {direct.seconds:.2f} s), "
             f"monitor RSS {peak.rss_kib / 1024:.1f} MiB, {peak.fds} fds ({per_connection:.2f} per connection)")
    return ScaleResult(
        requested=requested, connections=count, fd_limit=limit, note=note, open_s=opened.seconds, echo_s=echo_s,
        close_s=close_s, drained=drained, direct_open_s=direct.seconds, idle=idle, peak=peak,
        channel=channel.value, fds_per_connection=per_connection,
    )

"""Case g: many concurrent connections through one monitor, to a plain trio echo server in this process.

It measures how long opening them takes (next to opening as many directly),
what the monitor holds at the peak (RSS, descriptors), an echo on every one,
and how fast the monitor is back to idle once they close.
"""

from __future__ import annotations

import functools
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

#: Descriptors per relayed connection: the monitor holds the socket, the rx pipe's write end
#: and the tx socket's read end; the bench holds the other two ends and the echo server's socket.
FDS_PER_CONNECTION = 3
#: A connection being handed over holds all four channel ends in the monitor until ConnectOk
#: is sent: two more each, for as many as are connecting at once.
FDS_PER_HANDOVER = 2
FD_RESERVE = 256  # the interpreter, trio, the control channel, helper pipes


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
    requested: int
    connections: int
    fd_limit: int
    note: str
    open_s: float
    echo_s: float
    close_s: float
    drained: bool
    direct_open_s: float
    idle: Idle
    peak: Peak

    def as_json(self) -> dict[str, object]:
        return asdict(self)


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


async def open_many(
    count: int, concurrency: int, connect: Callable[[], Awaitable[trio.abc.Stream]]
) -> tuple[list[trio.abc.Stream], float]:
    """``count`` connections, at most ``concurrency`` connecting at once; and the seconds it took."""
    limiter = trio.CapacityLimiter(concurrency)
    streams: list[trio.abc.Stream] = []

    async def open_one() -> None:
        async with limiter:
            streams.append(await connect())

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(open_one)
    return streams, time.perf_counter() - start


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
    with trio.fail_after(120 + count / 50):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(functools.partial(trio.serve_tcp, echo_all, 0, host=HOST))
            port = listeners[0].socket.getsockname()[1]
            async with arca_control.open_session() as session:
                monitor = monitor_pid(session)
                idle = Idle(rss_kib=proc_status_kib(monitor, "VmRSS"), fds=fd_count(monitor))
                streams, open_s = await open_many(
                    count, sizes.scale_concurrency, functools.partial(session.connect, HOST, port)
                )
                echo_s = await echo_on_each(streams, sizes.scale_concurrency)
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
            # The same count opened directly, as the baseline for the open time.
            direct, direct_open_s = await open_many(
                count, sizes.scale_concurrency, functools.partial(trio.open_tcp_stream, HOST, port)
            )
            for stream in direct:
                await stream.aclose()
            nursery.cancel_scope.cancel()
    progress(f"scale: {count} connections opened in {open_s:.2f} s (direct {direct_open_s:.2f} s), "
             f"monitor RSS {peak.rss_kib / 1024:.1f} MiB, {peak.fds} fds")
    return ScaleResult(
        requested=requested, connections=count, fd_limit=limit, note=note, open_s=open_s, echo_s=echo_s,
        close_s=close_s, drained=drained, direct_open_s=direct_open_s, idle=idle, peak=peak,
    )

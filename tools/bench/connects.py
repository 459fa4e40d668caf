"""Cases d and e: connections made through the monitor (connect round trips) and taken by it (accepts per second).

Each is measured next to the same thing done directly with trio, against the
same peer: a helper process that accepts and closes (d), or that connects,
sends a byte and reads it back (e, ``helpers/loadgen.py``).
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass

import trio

import arca_control

from .base import HOST, Sizes, median, percentile, progress
from .processes import ACCEPTOR, LOADGEN, helper, spawned
from .transfers import sink_port

#: Accepts an ArcaListener keeps outstanding for serve_listeners.
ACCEPT_PREFETCH = 8


@dataclass(frozen=True)
class Latency:
    """Round trips of one variant, in milliseconds."""

    median_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, samples: list[float]) -> Latency:
        return cls(median(samples), percentile(samples, 0.99), max(samples))


@dataclass(frozen=True)
class ConnectResult:
    connects: int
    arca: Latency
    direct: Latency

    def as_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Rate:
    """Connections per second of one variant, in each round."""

    per_s: list[float]

    @property
    def median_per_s(self) -> float:
        return median(self.per_s)


@dataclass(frozen=True)
class AcceptResult:
    connections: int
    clients: int
    arca: Rate
    direct: Rate

    def as_json(self) -> dict[str, object]:
        variants = {name: {"per_s": rate.per_s, "median_per_s": rate.median_per_s}
                    for name, rate in (("arca", self.arca), ("direct", self.direct))}
        return {"connections": self.connections, "clients": self.clients, **variants}


# --- (d) connect ------------------------------------------------------------------------------


async def connect_case(sizes: Sizes) -> ConnectResult:
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
                    direct = await trio.open_tcp_stream(HOST, port)
                    await direct.aclose()
                    direct_ms.append((time.perf_counter() - start) * 1000)
    result = ConnectResult(sizes.connects, Latency.of(arca_ms), Latency.of(direct_ms))
    progress(f"connect: arca median {result.arca.median_ms:.3f} ms, direct {result.direct.median_ms:.3f} ms")
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


async def run_loadgen(port: int, sizes: Sizes, alarm: float) -> float:
    """Run the client load generator against ``port``; connections per second."""
    async with spawned(helper(LOADGEN, alarm, port, sizes.accepts, sizes.accept_clients)) as (loadgen, out):
        done, failed, seconds = (await out.line()).split()
        await loadgen.wait()
    if int(failed):
        raise RuntimeError(f"{failed} of {sizes.accepts} load generator connections failed (see stderr)")
    return int(done) / float(seconds)


async def arca_accept_rate(sizes: Sizes, alarm: float) -> float:
    async with arca_control.open_session() as session:
        # A server keeps a few Accepts outstanding, as the kernel keeps a backlog.
        listener = await session.listen(HOST, 0, backlog=1024, prefetch=ACCEPT_PREFETCH)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, echo_one_byte, [listener])
            rate = await run_loadgen(listener.local.port, sizes, alarm)
            nursery.cancel_scope.cancel()
    return rate


async def direct_accept_rate(sizes: Sizes, alarm: float) -> float:
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(trio.serve_tcp, echo_one_byte, 0, host=HOST))
        rate = await run_loadgen(listeners[0].socket.getsockname()[1], sizes, alarm)
        nursery.cancel_scope.cancel()
    return rate


async def accept_case(sizes: Sizes) -> AcceptResult:
    timeout = 30 + sizes.accepts / 100  # 100 accepts/s would already be absurdly slow
    rates: dict[str, list[float]] = {"arca": [], "direct": []}
    for round_number in range(1, sizes.repeats + 1):
        for variant, measure in (("direct", direct_accept_rate), ("arca", arca_accept_rate)):
            with trio.fail_after(timeout):
                rates[variant].append(await measure(sizes, timeout))
            progress(f"accept {round_number}/{sizes.repeats} {variant}: {rates[variant][-1]:.0f} conn/s")
    return AcceptResult(sizes.accepts, sizes.accept_clients, Rate(rates["arca"]), Rate(rates["direct"]))

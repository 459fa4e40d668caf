"""Cases a, b and c: bulk transfers through the monitor, next to plain TCP and a socat relay, and the relay's CPU.

Every transfer is timed by the same receiver (``helpers/sink.py``), from its
go byte to the sender's close; the relay's CPU time (the monitor's, or
socat's) is read from /proc around it.
"""

from __future__ import annotations

import functools
import re
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import trio

import arca_control

from .base import CHUNK, GIB, HOST, MB, Sizes, median, progress, transfer_timeout
from .processes import SINK, SOURCE, LineReader, cpu_seconds, helper, monitor_pid, spawned

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    #: A way to move a count of bytes once, timed.
    Variant = Callable[[int], Awaitable["Transfer"]]


class ThroughArca(Protocol):
    """A transfer through the monitor, over pipes or (``socket_channel``) over the socket channel."""

    def __call__(self, nbytes: int, socket_channel: bool = False) -> Awaitable[Transfer]: ...


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class VariantResult:
    """Every round of one variant of a transfer."""

    transfers: tuple[Transfer, ...]

    @property
    def median_mb_per_s(self) -> float:
        return median(t.mb_per_s for t in self.transfers)

    @property
    def relay_cpu_s_per_gib(self) -> list[float] | None:
        """The relay's CPU per GiB in each round; None for a variant without a relay."""
        values = [t.cpu_per_gib for t in self.transfers]
        return [v for v in values if v is not None] if None not in values else None

    @property
    def median_relay_cpu_s_per_gib(self) -> float | None:
        values = self.relay_cpu_s_per_gib
        return median(values) if values is not None else None

    def as_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "mb_per_s": [t.mb_per_s for t in self.transfers],
            "median_mb_per_s": self.median_mb_per_s,
        }
        if self.relay_cpu_s_per_gib is not None:
            out["relay_cpu_s_per_gib"] = self.relay_cpu_s_per_gib
            out["median_relay_cpu_s_per_gib"] = self.median_relay_cpu_s_per_gib
        return out


@dataclass(frozen=True)
class TransferResult:
    """One direction's transfers: each variant (direct, socat, arca, arca_socket) over the rounds."""

    nbytes: int
    repeats: int
    variants: dict[str, VariantResult]

    def as_json(self) -> dict[str, object]:
        return {"bytes": self.nbytes, "repeats": self.repeats,
                **{name: variant.as_json() for name, variant in self.variants.items()}}


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
async def socat_relay(target_port: int) -> AsyncIterator[tuple[trio.Process, int]]:
    """``socat`` relaying one TCP connection to ``target_port``: yields (process, its port).

    Bidirectional with a 256 KiB buffer, as a userspace relay runs; it listens on
    a kernel-chosen port, which only its log says (-d -d).
    """
    argv = ["socat", "-d", "-d", "-b", "262144", f"TCP4-LISTEN:0,bind={HOST}", f"TCP4:{HOST}:{target_port}"]
    async with spawned(argv, read_stderr=True) as (process, log):
        while not (match := re.search(r"listening on .*:(\d+)\s*$", await log.line())):
            pass
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
            monitor = monitor_pid(session)
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
            monitor = monitor_pid(session)
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


async def transfer_case(name: str, nbytes: int, repeats: int, variants: dict[str, Variant]) -> TransferResult:
    """Every variant once per round, interleaved, so drift in the machine hits all alike."""
    runs: dict[str, list[Transfer]] = {variant: [] for variant in variants}
    for round_number in range(1, repeats + 1):
        for variant, measure in variants.items():
            transfer = await measure(nbytes)
            runs[variant].append(transfer)
            cpu = f", relay CPU {transfer.cpu_per_gib:.3f} s/GiB" if transfer.cpu_per_gib is not None else ""
            progress(f"{name} {round_number}/{repeats} {variant}: {transfer.mb_per_s:.0f} MB/s{cpu}")
    return TransferResult(nbytes, repeats, {variant: VariantResult(tuple(t)) for variant, t in runs.items()})


def variants_of(arca: ThroughArca, baselines: bool) -> dict[str, Variant]:
    """A direction's variants: ``arca`` over pipes and over the socket channel, and the baselines if asked for."""
    variants: dict[str, Variant] = {"arca": arca, "arca_socket": functools.partial(arca, socket_channel=True)}
    if baselines:
        variants = {"direct": direct_transfer, "socat": socat_transfer, **variants}
    return variants


async def download_case(sizes: Sizes, baselines: bool = True) -> TransferResult:
    return await transfer_case("download", sizes.download_bytes, sizes.repeats, variants_of(arca_download, baselines))


async def upload_case(sizes: Sizes, baselines: bool = True) -> TransferResult:
    return await transfer_case("upload", sizes.upload_bytes, sizes.repeats, variants_of(arca_upload, baselines))

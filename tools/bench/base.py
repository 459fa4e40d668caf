"""What every bench case shares: where it connects, its units, how much it does, and its statistics."""

from __future__ import annotations

import math
import statistics
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

HOST = "127.0.0.1"
MB = 1e6  # throughput is in MB/s, 10^6 bytes per second
GIB = 1 << 30
CHUNK = 1 << 20  # every sender and receiver moves 1 MiB per call

#: The cases, by letter.
CASES = {
    "a": "download",
    "b": "upload",
    "c": "cpu",
    "d": "connect",
    "e": "accept",
    "f": "codec",
    "g": "scale",
    "h": "curl",
    "i": "programs",
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
    curl_bytes: int  # each way, curl on the host and in the sandbox
    program_bytes: int  # each row of the programs case, each way of making the connection


# The full run's targets are judged on medians of 5 rounds (issue 15).
FULL = Sizes(
    download_bytes=GIB,
    upload_bytes=GIB,
    repeats=5,
    connects=500,
    accepts=3000,
    accept_clients=4,
    codec_seconds=8.0,
    scale_connections=10_000,
    scale_concurrency=256,
    curl_bytes=GIB,
    program_bytes=512 << 20,
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
    curl_bytes=256 << 20,
    program_bytes=128 << 20,
)


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

"""The bench's verdict: one row per figure (measured, baseline, ratio, target, met), as a table or as JSON.

The targets are issue 15's: every API path at least 0.9x the same API direct,
both ways; the socket channel at least 0.8x; the monitor's CPU at most 0.15
s/GiB down and 0.25 s/GiB up; a connect round trip at most 1.5x trio's;
accepts at least 0.7x ``trio.serve_tcp``'s; the codec's slowest type parsed
at least 200,000 times a second.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal

from .base import CASES
from .scale import COSTS, Channel

if TYPE_CHECKING:
    import os
    from collections.abc import Iterable, Sequence

    from .run import Results
    from .scale import ScaleResult
    from .transfers import TransferResult

TIMES = "\N{MULTIPLICATION SIGN}"


@dataclass(frozen=True)
class Target:
    """What a row must reach: its ratio (``of="ratio"``) or its measured value, ``>=`` or ``<=`` a limit."""

    op: Literal[">=", "<="]
    limit: float
    of: Literal["ratio", "measured"] = "ratio"
    unit: str = ""

    def met(self, measured: float | None, ratio: float | None) -> bool | None:
        value = ratio if self.of == "ratio" else measured
        if value is None:
            return None
        return value >= self.limit if self.op == ">=" else value <= self.limit

    def __str__(self) -> str:
        sign = "≥" if self.op == ">=" else "≤"
        if self.of == "ratio":
            return f"{sign} {self.limit:g}{TIMES}"
        return f"{sign} {number(self.limit)} {self.unit}".rstrip()


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

    def as_json(self) -> dict[str, object]:
        out = asdict(self)
        out["target"] = str(self.target) if self.target else None
        return out


def transfer_rows(results: Results, cases: set[str]) -> list[Row]:
    rows = []
    down, up = results.download, results.upload
    if down and "a" in cases:
        arca = down.variants["arca"].median_mb_per_s
        rows.append(Row("a download vs direct TCP", arca, down.variants["direct"].median_mb_per_s, "MB/s",
                        Target(">=", 0.9)))
        rows.append(Row("a download vs socat relay", arca, down.variants["socat"].median_mb_per_s, "MB/s",
                        Target(">=", 1.5)))
    if up and "b" in cases:
        arca = up.variants["arca"].median_mb_per_s
        rows.append(Row("b upload vs socat relay", arca, up.variants["socat"].median_mb_per_s, "MB/s",
                        Target(">=", 1.0)))
        rows.append(Row("b upload vs direct TCP", arca, up.variants["direct"].median_mb_per_s, "MB/s",
                        Target(">=", 0.9)))
    # The socket channel (PROTOCOL.md section 5): what compatibility costs, for users to choose.
    for letter, name, entry in (("a", "download", down), ("b", "upload", up)):
        if entry and letter in cases and "arca_socket" in entry.variants:
            socket = entry.variants["arca_socket"].median_mb_per_s
            rows.append(Row(f"{letter} {name}, socket channel vs pipes", socket,
                            entry.variants["arca"].median_mb_per_s, "MB/s", note="info"))
            rows.append(Row(f"{letter} {name}, socket channel vs direct", socket,
                            entry.variants["direct"].median_mb_per_s, "MB/s", Target(">=", 0.8)))
    if "c" in cases:
        cpu: tuple[tuple[str, TransferResult | None, Target | None], ...] = (
            ("download", down, Target("<=", 0.15, of="measured", unit="s/GiB")),
            ("upload", up, Target("<=", 0.25, of="measured", unit="s/GiB")),
        )
        for name, entry, target in cpu:
            if entry:
                socat = entry.variants["socat"].median_relay_cpu_s_per_gib if "socat" in entry.variants else None
                rows.append(Row(f"c monitor CPU {name} (vs socat)", entry.variants["arca"].median_relay_cpu_s_per_gib,
                                socat, "s/GiB", target, note="" if target else "info"))
                if "arca_socket" in entry.variants:
                    rows.append(Row(f"c monitor CPU {name}, socket channel (vs socat)",
                                    entry.variants["arca_socket"].median_relay_cpu_s_per_gib, socat, "s/GiB",
                                    note="info"))
    return rows


def other_rows(results: Results) -> list[Row]:
    rows = []
    if connect := results.connect:
        arca, direct = connect.arca, connect.direct
        rows.append(Row("d connect+close median", arca.median_ms, direct.median_ms, "ms", Target("<=", 1.5)))
        rows.append(Row("d connect+close p99", arca.p99_ms, direct.p99_ms, "ms", note="info"))
    if accept := results.accept:
        rows.append(Row("e accept rate", accept.arca.median_per_s, accept.direct.median_per_s, "conn/s",
                        Target(">=", 0.7)))
    if codec := results.codec:
        parse, build = codec.parse, codec.build
        rows.append(Row("f codec parse, slowest type", parse.min_per_s, None, "frames/s",
                        Target(">=", 200_000, of="measured", unit="/s"), note=parse.slowest))
        rows.append(Row("f codec parse, mean of types", parse.mean_per_s, None, "frames/s",
                        Target(">=", 200_000, of="measured", unit="/s")))
        rows.append(Row("f codec build, slowest type", build.min_per_s, None, "frames/s", note=build.slowest))
        rows.append(Row("f codec build, mean of types", build.mean_per_s, None, "frames/s", note="info"))
    if scale := results.scale:
        rows.extend(scale_rows(scale))
        if scale.socket_channel:
            rows.extend(scale_rows(scale.socket_channel))
    return rows


def scale_rows(scale: ScaleResult) -> list[Row]:
    """Case g on one channel kind: the count reached (and why, if short), open time, RSS, fds per connection."""
    g = f"g {scale.channel}:"
    n, idle, peak = scale.connections, scale.idle, scale.peak
    rows = [
        Row(f"{g} connections reached", n, scale.requested, "conns", note=scale.note or "all requested"),
        Row(f"{g} open {n} conns (vs direct)", scale.open_s, scale.direct_open_s, "s", note="info"),
        Row(f"{g} monitor RSS at {n} (vs idle)", peak.rss_kib / 1024, idle.rss_kib / 1024, "MiB",
            Target("<=", 100, of="measured", unit="MiB")),
    ]
    if 0 < n < scale.requested:
        # The target is for the requested count: extrapolate linearly from the idle monitor.
        per_conn = (peak.rss_kib - idle.rss_kib) / n
        at_requested = (idle.rss_kib + per_conn * scale.requested) / 1024
        rows.append(Row(f"{g} monitor RSS at {scale.requested}, extrapolated", at_requested,
                        idle.rss_kib / 1024, "MiB", Target("<=", 100, of="measured", unit="MiB")))
    rows.append(Row(f"{g} echo once on all {n}", scale.echo_s, None, "s", note="info"))
    rows.append(Row(f"{g} monitor fds at {n} (vs idle)", peak.fds, idle.fds, "fds", note="info"))
    rows.append(Row(f"{g} monitor fds per connection", scale.fds_per_connection, None, "fds",
                    Target("<=", COSTS[Channel(scale.channel)].monitor, of="measured", unit="fds")))
    rows.append(Row(f"{g} close {n} conns, monitor drained", scale.close_s, None, "s",
                    note="info" if scale.drained else "NOT DRAINED in 60 s"))
    return rows


def curl_rows(results: Results) -> list[Row]:
    """Case h: curl in the sandbox against curl on the host, each way, and the monitor's CPU for it."""
    rows = []
    if curl := results.curl:
        for name, entry in (("download", curl.download), ("upload", curl.upload)):
            arca = entry.variants["arca"]
            rows.append(Row(f"h curl {name} in the sandbox vs on the host", arca.median_mb_per_s,
                            entry.variants["direct"].median_mb_per_s, "MB/s", Target(">=", 0.9)))
            # The ceiling: the same curl on the host through the cheapest relay there is (helpers/plain_relay.py).
            rows.append(Row(f"h curl {name} via a plain relay vs on the host", entry.variants["plain_relay"].median_mb_per_s,
                            entry.variants["direct"].median_mb_per_s, "MB/s", note="ceiling"))
            rows.append(Row(f"h monitor CPU, curl {name}", arca.median_relay_cpu_s_per_gib, None, "s/GiB",
                            note="info"))
    return rows


def program_rows(results: Results) -> list[Row]:
    """Case i: each ordinary program through the monitor against the same program direct."""
    rows = []
    if programs := results.programs:
        for row in programs.rows:
            variants = row.transfers.variants
            rows.append(Row(f"i {row.program.label}", variants["arca"].median_mb_per_s,
                            variants["direct"].median_mb_per_s, "MB/s", Target(">=", 0.9)))
    return rows


def build_rows(results: Results, cases: Iterable[str] = CASES) -> list[Row]:
    chosen = set(cases)
    rows = transfer_rows(results, chosen) + other_rows(results) + curl_rows(results) + program_rows(results)
    rows += [Row(f"{name} FAILED", None, None, "", note=error) for name, error in results.failed.items()]
    return rows


def number(value: float | None) -> str:
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
            f"{number(row.measured)} {row.unit}".strip() if row.measured is not None else "-",
            f"{number(row.baseline)} {row.unit}".strip() if row.baseline is not None else "-",
            (f"{row.ratio:.2f}{TIMES}" if row.ratio < 100 else f"{row.ratio:.0f}{TIMES}") if row.ratio is not None else "-",
            str(row.target) if row.target else "-",
            met + (f"  ({row.note})" if row.note and row.note != "info" else ""),
        ))
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header) - 1)]

    def render(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=False)) + "  " + cells[-1]

    return "\n".join([render(header), render(["-" * w for w in widths] + ["---"]), *map(render, lines)])


def write_json(path: str | os.PathLike[str], meta: dict[str, object], results: Results, rows: list[Row]) -> None:
    document = {"meta": meta, "results": results.as_json(), "rows": [row.as_json() for row in rows]}
    with open(path, "w") as out:
        json.dump(document, out, indent=2, allow_nan=False)
        out.write("\n")

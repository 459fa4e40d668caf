"""Benchmark arca against plain TCP and a socat relay, every case side by side in one run.

Its one job: measure what the monitor's relay, the guest API and the codec cost,
next to the baseline each one should be judged by, and print a table of ratios
against the project's targets (with ``--json FILE``, the same as JSON).

    python -m tools.bench [--quick] [--json FILE] [--cases a,b,...]

Cases (letters or names):

  a download  a separate sender process -> monitor -> guest stream, vs the same
              sender -> a plain Python receiver ("direct"), vs sender -> socat -> receiver
  b upload    guest stream -> monitor -> receiver process, vs the sender -> socat -> receiver
  c cpu       the monitor's CPU seconds per GiB, each direction (from the a and b transfers)
  d connect   session.connect() + aclose round trips, vs trio.open_tcp_stream
  e accept    connections accepted per second through an ArcaListener, vs trio.serve_tcp
  f codec     frames per second decoded and encoded, per message type
  g scale     many concurrent connections through one monitor: open time, RSS and fds
  h curl      curl under arca-run (to host.arca.internal) vs curl on the host, from one local
              HTTP server, download and upload; the monitor's CPU seconds per GiB
  i programs  what ordinary programs get: trio (receive_some of 64 KiB and 1 MiB, send_all of
              64 KiB), asyncio streams (arca_control.aio) and blocking sockets (arca_control.sync),
              each way, each the same program in its own process with its connection made
              direct or through a monitor, against one peer process per row

Everything talks to 127.0.0.1 on kernel-chosen ports only. Every load is bounded in
count and in time (trio.fail_after around each step, an alarm in every helper
process). Every row with a target prints it (report.py says whose they are).
Targets missed are reported, not fatal: the exit status is 0 unless a case could
not run at all.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict

import trio

from .base import CASES, FULL, QUICK, Sizes
from .report import build_rows, format_table, write_json
from .run import run_cases


def metadata(sizes: Sizes, quick: bool) -> dict[str, object]:
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
    doc = __doc__ or ""
    p = argparse.ArgumentParser(prog="python -m tools.bench", description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=doc.split("\n\n", 2)[2])
    p.add_argument("--quick", action="store_true", help="smaller loads, under a minute")
    p.add_argument("--json", metavar="FILE", help="also write the results and the table as JSON")
    p.add_argument("--cases", type=parse_cases, default=sorted(CASES), metavar="a,b,...",
                   help="which cases to run (default: all)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    cases: list[str] = args.cases
    if shutil.which("socat") is None and {"a", "b"} & set(cases):
        print("socat is not installed: the socat baselines will fail (apt-get install socat)", file=sys.stderr)
    results = trio.run(run_cases, sizes, cases)
    rows = build_rows(results, cases)
    print()
    print(format_table(rows))
    missed = [row.case for row in rows if row.met is False]
    print()
    print(f"targets met: {sum(row.met is True for row in rows)} of {sum(row.met is not None for row in rows)}"
          + (f"; missed: {', '.join(missed)}" if missed else ""))
    if results.failed:
        print(f"cases that could not run: {', '.join(results.failed)}")
    if args.json:
        write_json(args.json, metadata(sizes, args.quick), results, rows)
        print(f"results written to {args.json}")
    return 1 if results.failed else 0

"""Summarise a py-spy raw profile (``py-spy record --format raw``): per process, where the samples are.

    .venv/bin/python -m tools.bench.profile.stacks PROFILE.txt [--top N] [--match TEXT]

For each process (py-spy's ``--subprocesses`` puts a ``process PID:"cmdline"``
frame at the top of each stack), prints its sample count, then the frames with
the most samples on top of the stack ("self"), and the functions with the most
samples anywhere in the stack ("total"), each as a percentage of that
process's samples. Frames are named without line numbers, so one function's
lines count together. ``--match`` keeps only frames whose name contains TEXT; ``--within`` counts
only stacks with a frame containing TEXT (``_trio_read`` for the guest's
reading loop, ``RelayEngine.run`` for the monitor's relay), so that start-up
(imports) does not dilute the transfer.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict

_LINE = re.compile(r":\d+\)$")


def frame_name(frame: str) -> str:
    """``func (file.py:123)`` -> ``func (file.py)``; native frames as they are."""
    return _LINE.sub(")", frame)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--match", default="")
    parser.add_argument("--within", action="append", default=[],
                        help="count only stacks with a frame containing this (may repeat: any of them)")
    args = parser.parse_args()
    samples: Counter[str] = Counter()
    own: defaultdict[str, Counter[str]] = defaultdict(Counter)
    total: defaultdict[str, Counter[str]] = defaultdict(Counter)
    with open(args.profile) as profile:
        for line in profile:
            stack, _, count_text = line.rstrip("\n").rpartition(" ")
            count = int(count_text)
            frames = stack.split(";")
            if args.within and not any(w in stack for w in args.within):
                continue
            processes = [i for i, f in enumerate(frames) if f.startswith("process ")]
            process = frames[processes[-1]][:90] if processes else "?"
            frames = [frame_name(f) for f in frames[processes[-1] + 1 if processes else 0:]]
            samples[process] += count
            if frames:
                own[process][frames[-1]] += count
            for name in set(frames):
                total[process][name] += count
    for process, count in samples.most_common():
        print(f"\n{process}: {count} samples")
        for title, table in (("self", own[process]), ("total", total[process])):
            print(f"  {title}:")
            shown = [(n, c) for n, c in table.most_common() if args.match in n][: args.top]
            for name, hits in shown:
                print(f"    {hits / count:6.1%}  {name}")


if __name__ == "__main__":
    main()

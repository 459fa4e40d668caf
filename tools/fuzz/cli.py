"""Fuzz the arca control channel: find frames that break the code reading untrusted bytes.

The one job of this tool is to throw valid, mutated and garbage frames at the
frame parser (``codec`` mode, in-process) and at a real monitor process (``live``
mode), and to report, save and replay every input that breaks the contract:

* ``decode(data)`` raises a ``ProtocolError`` subclass, or returns a message
  that encodes back to exactly ``data``; nothing else, ever.
* ``FrameDecoder`` fed the same bytes one at a time yields exactly the frames
  ``decode`` accepts, in order, and raises only ``ProtocolError``.
* The monitor answers every bad frame with an Error (or closes the session
  cleanly), keeps answering valid requests correctly, never hangs, crashes or
  leaks a descriptor, and never logs a traceback.

Valid messages come from the codec's own schema (``messages.REGISTRY`` and the
field type of each payload field), so a new message type is fuzzed without
touching this tool. Only loopback addresses are ever contacted.
"""

from __future__ import annotations

import argparse
import importlib
import random
import sys
from pathlib import Path

from .codec_mode import check_codec, run_codec
from .live import run_live
from .run import DEFAULT_CORPUS, Options, Run


def run_atheris(options: Options, corpus_dirs: list[str]) -> int:
    """Coverage-guided fuzzing of the codec target with atheris (libFuzzer), if it is installed."""
    try:
        # An optional tool, imported by name: it has no type stubs, and most machines lack it.
        atheris = importlib.import_module("atheris")
    except ImportError:
        print("atheris is not installed: `pip install atheris` (Linux, CPython with clang), then rerun.",
              file=sys.stderr)
        return 2
    run = Run("atheris", options)

    def one_input(data: bytes) -> None:
        problems = check_codec(data)
        if problems:
            run.finding(data, problems)
            raise AssertionError("; ".join(problems))  # libFuzzer stops and keeps its own crash file

    atheris.instrument_all()
    flags = [f"-seed={options.seed}"]
    if options.count is not None:
        flags.append(f"-runs={options.count}")
    if options.seconds:
        flags.append(f"-max_total_time={int(options.seconds)}")
    atheris.Setup([sys.argv[0], *flags, *corpus_dirs], one_input)  # directories: its starting corpus
    atheris.Fuzz()
    return 0


def replay_paths(items: list[str]) -> list[Path]:
    paths = []
    for item in map(Path, items):
        paths += sorted(item.glob("*.bin")) if item.is_dir() else [item]
    return paths


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tools.fuzz",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 no violation, 1 a violation was found (details on stdout), 2 usage error "
               "or atheris missing.\nExamples:\n  python -m tools.fuzz codec --seconds 60\n"
               "  python -m tools.fuzz live --count 2000 --seed 7\n"
               "  python -m tools.fuzz codec --replay tools/fuzz/corpus/regression",
    )
    p.add_argument("mode", choices=["codec", "live"], help=(
        "codec: in-process; valid frames of every message type, mutated (bit flips, truncation, inserted and "
        "deleted bytes, lying header and text lengths, swapped type bytes, out-of-range fields, bad request ids, "
        "bad UTF-8, concatenated and split frames, garbage), each checked with decode and a byte-at-a-time "
        "FrameDecoder. live: a real monitor (one --fd session, then many sessions of one --socket monitor) gets "
        "mutated frames between valid requests; every answer, session close, fd count and its stderr are checked. "
        "Only loopback addresses are ever contacted."))
    p.add_argument("--seed", type=int, default=random.SystemRandom().randrange(1 << 32),
                   help="random seed; the same seed and --count give the same cases (default: random, printed)")
    p.add_argument("--count", type=int, help="cases to run: inputs in codec mode, frames sent in live mode "
                   "(default: 10000 codec, 1000 live, unless --seconds is given)")
    p.add_argument("--seconds", type=float, help="time budget; the run stops at whichever of --count and --seconds "
                   "comes first")
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="directory for failing cases, saved as "
                   "MODE-HASH.bin (live ones with a MODE-HASH.txt transcript) (default: %(default)s)")
    p.add_argument("--replay", nargs="+", metavar="FILE", help="instead of generating, run these saved cases (a "
                   "directory means its *.bin) through the MODE's target: codec checks, or one live session each")
    p.add_argument("--max-protocol-errors", type=int, default=16, metavar="N", help="live: the monitor's "
                   "--max-protocol-errors, and when the model expects it to close a session (default: %(default)s)")
    p.add_argument("--atheris", action="store_true", help="codec: coverage-guided fuzzing of the same target with "
                   "atheris (libFuzzer), if installed; --replay DIR... are its corpus directories. Exit 2 if atheris "
                   "is missing")
    p.add_argument("--quiet", action="store_true", help="no progress line (it is shown only on a terminal, "
                   "updated in place at most 4 times a second); the summary is still printed")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.atheris and args.mode != "codec":
        parser().error("--atheris works with codec mode only")
    count: int | None = args.count
    if count is None and args.seconds is None:
        count = 10000 if args.mode == "codec" else 1000
    options = Options(
        mode=args.mode, seed=args.seed, count=count, seconds=args.seconds, corpus=Path(args.corpus),
        max_protocol_errors=args.max_protocol_errors, quiet=args.quiet,
    )
    replay: list[str] = args.replay or []
    print(f"seed: {options.seed} (rerun with --seed {options.seed})", flush=True)
    rng = random.Random(options.seed)
    if args.atheris:
        return run_atheris(options, replay)
    if replay:
        paths = replay_paths(replay)
        return run_codec(options, rng, paths) if options.mode == "codec" else run_live(options, rng, paths)
    return run_codec(options, rng) if options.mode == "codec" else run_live(options, rng)

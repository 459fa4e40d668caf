"""One fuzzing run's bookkeeping: its options, counters, findings (reported, saved to replay), progress and summary."""

from __future__ import annotations

import collections
import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

#: Where a run saves what it finds, unless told otherwise.
DEFAULT_CORPUS = Path(__file__).resolve().parent / "corpus" / "found"
MAX_SAVED = 50  # findings shown and saved per run; one bug tends to produce thousands of them


@dataclass(frozen=True)
class Options:
    """What the command line asked for (``cli.parser``)."""

    mode: Literal["codec", "live"]
    seed: int
    #: Cases to run: inputs in codec mode, frames sent in live mode (None: until ``seconds``).
    count: int | None
    seconds: float | None
    corpus: Path
    max_protocol_errors: int
    quiet: bool


class Run:
    """Counters, findings and the progress line of one fuzzing run."""

    def __init__(self, mode: str, options: Options) -> None:
        self.mode, self.corpus = mode, options.corpus
        self.start = time.monotonic()
        self.deadline = self.start + options.seconds if options.seconds else None
        self.limit = options.count
        self.cases = 0
        self.counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.findings = 0
        self.saved: list[Path] = []
        self.show_progress = sys.stderr.isatty() and not options.quiet
        self._last_progress = 0.0

    def more(self) -> bool:
        if self.limit is not None and self.cases >= self.limit:
            return False
        return self.deadline is None or time.monotonic() < self.deadline

    def finding(self, data: bytes, problems: list[str], transcript: str = "", save: bool = True) -> None:
        """Report a violation; save ``data`` as MODE-HASH.bin to replay, and the transcript beside it."""
        self.findings += 1
        path = self.corpus / f"{self.mode}-{hashlib.sha256(data).hexdigest()[:16]}.bin"
        where = ""
        if save and len(self.saved) < MAX_SAVED and path not in self.saved:
            self.corpus.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            if transcript:
                path.with_suffix(".txt").write_text(transcript)
            self.saved.append(path)
            where = f" (saved as {path})"
        self.clear_progress()
        if self.findings <= MAX_SAVED:
            print(f"VIOLATION on {data[:64].hex(' ')}{' ...' if len(data) > 64 else ''}{where}")
            print("".join(f"  - {problem}\n" for problem in problems), end="")
        elif self.findings == MAX_SAVED + 1:
            print(f"(more than {MAX_SAVED} violations: the rest are only counted)")

    def progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.show_progress and (force or now - self._last_progress >= 0.25):
            self._last_progress = now
            rate = self.cases / max(now - self.start, 1e-9)
            sys.stderr.write(f"\r[{self.mode}] {self.cases} cases, {rate:.0f}/s, {self.findings} findings ")
            sys.stderr.flush()

    def clear_progress(self) -> None:
        if self.show_progress:
            sys.stderr.write("\r\x1b[K")

    def summary(self, seed: int) -> int:
        self.progress(force=True)
        self.clear_progress()
        elapsed = time.monotonic() - self.start
        print(f"mode: {self.mode}\nseed: {seed}\ncases: {self.cases}\nelapsed: {elapsed:.1f} s "
              f"({self.cases / max(elapsed, 1e-9):.0f} cases/s)")
        for title, counter in sorted(self.counts.items()):
            print(f"{title}: " + ", ".join(f"{k} {v}" for k, v in sorted(counter.items())))
        print(f"findings: {self.findings}")
        return 1 if self.findings else 0

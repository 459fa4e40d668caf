"""Running the chosen cases, one after another; a case that fails is recorded, and the others still run."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .base import progress
from .codec import CodecResult, codec_case
from .connects import AcceptResult, ConnectResult, accept_case, connect_case
from .curl import CurlResult, curl_case
from .programs import ProgramsResult, programs_case
from .scale import ScaleResult, scale_case
from .transfers import TransferResult, download_case, upload_case

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from .base import Sizes


#: What one case found.
CaseResult = TransferResult | ConnectResult | AcceptResult | CodecResult | ScaleResult | CurlResult | ProgramsResult


@dataclass
class Results:
    """What a run found: each case's result (None if it did not run), and the cases that failed, with why."""

    download: TransferResult | None = None
    upload: TransferResult | None = None
    connect: ConnectResult | None = None
    accept: AcceptResult | None = None
    codec: CodecResult | None = None
    scale: ScaleResult | None = None
    curl: CurlResult | None = None
    programs: ProgramsResult | None = None
    #: The cases that could not run: the exception each raised (its repr).
    failed: dict[str, str] = field(default_factory=dict)

    def entries(
        self,
    ) -> dict[str, CaseResult]:
        """The result of every case that ran, by name, in the order they run."""
        named: tuple[tuple[str, CaseResult | None], ...] = (
            ("download", self.download), ("upload", self.upload), ("connect", self.connect),
            ("accept", self.accept), ("codec", self.codec), ("scale", self.scale), ("curl", self.curl),
            ("programs", self.programs),
        )
        return {name: result for name, result in named if result is not None}

    def as_json(self) -> dict[str, object]:
        """Each case in run order: its JSON object, or ``{"error": ...}`` if it failed."""
        done = self.entries()
        return {
            name: done[name].as_json() if name in done else {"error": self.failed[name]}
            for name in ("download", "upload", "connect", "accept", "codec", "scale", "curl", "programs")
            if name in done or name in self.failed
        }


async def run_cases(sizes: Sizes, cases: Iterable[str]) -> Results:
    """Run the chosen cases (letters)."""
    chosen = set(cases)
    results = Results()

    async def download() -> None:
        results.download = await download_case(sizes, "a" in chosen)

    async def upload() -> None:
        results.upload = await upload_case(sizes, "b" in chosen)

    async def connect() -> None:
        results.connect = await connect_case(sizes)

    async def accept() -> None:
        results.accept = await accept_case(sizes)

    async def codec() -> None:
        results.codec = codec_case(sizes)  # pure CPU, no I/O: nothing for trio to do meanwhile

    async def scale() -> None:
        results.scale = await scale_case(sizes)

    async def curl() -> None:
        results.curl = await curl_case(sizes)

    async def programs() -> None:
        results.programs = await programs_case(sizes)

    steps: list[tuple[str, Callable[[], Awaitable[None]]]] = []
    # The CPU figures come from the arca transfers; asked for alone, run only those.
    if "a" in chosen or "c" in chosen:
        steps.append(("download", download))
    if "b" in chosen or "c" in chosen:
        steps.append(("upload", upload))
    if "d" in chosen:
        steps.append(("connect", connect))
    if "e" in chosen:
        steps.append(("accept", accept))
    if "f" in chosen:
        steps.append(("codec", codec))
    if "g" in chosen:
        steps.append(("scale", scale))
    if "h" in chosen:
        steps.append(("curl", curl))
    if "i" in chosen:
        steps.append(("programs", programs))
    for name, step in steps:
        print(f"[{name}]", file=sys.stderr, flush=True)
        try:
            await step()
        except Exception as exc:
            progress(f"{name} FAILED: {exc!r}")
            results.failed[name] = repr(exc)
    return results

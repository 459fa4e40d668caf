"""Case f: frames per second through the codec's ``decode`` and ``encode``, per message type, on valid frames.

Each message is built from its field types' sample values (``FieldType.sample``
in ``arca_control.protocol.wire``), so a new message type is measured without
touching this file.
"""

from __future__ import annotations

import functools
import statistics
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from arca_control.protocol.codec import decode, encode
from arca_control.protocol.messages import REGISTRY, ControlEvent, Message, payload_fields
from arca_control.protocol.wire import declared

from .base import Sizes, progress

if TYPE_CHECKING:
    from collections.abc import Callable


@dataclass(frozen=True)
class TypeRates:
    """One message type's frame and how fast it goes each way."""

    type: int
    frame_bytes: int
    parse_per_s: float
    build_per_s: float


@dataclass(frozen=True)
class Summary:
    """One direction over every type: the slowest, and the mean."""

    min_per_s: float
    slowest: str
    mean_per_s: float

    @classmethod
    def of(cls, rates: dict[str, float]) -> Summary:
        slowest = min(rates, key=rates.__getitem__)
        return cls(rates[slowest], slowest, statistics.fmean(rates.values()))


@dataclass(frozen=True)
class CodecResult:
    types: dict[str, TypeRates]
    parse: Summary
    build: Summary

    def as_json(self) -> dict[str, object]:
        return asdict(self)


def sample_message(cls: type[Message]) -> Message:
    """A valid message of ``cls`` with every field set to its field type's sample value."""
    values = {f.name: declared(f).sample for f in payload_fields(cls)}
    request_id = 0 if issubclass(cls, ControlEvent) else 0x0A0B0C0D
    return cls(request_id=request_id, **values)


def calls_per_second(fn: Callable[[], object], seconds: float) -> float:
    """Call ``fn`` in batches until ``seconds`` have passed (checking the clock per batch only)."""
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(64):
            fn()
        calls += 64
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - start)


def codec_case(sizes: Sizes) -> CodecResult:
    """Frames per second through ``decode`` and ``encode``, per message type, on valid frames."""
    per_run = sizes.codec_seconds / (2 * len(REGISTRY))
    types = {}
    for kind, cls in sorted(REGISTRY.items()):
        msg = sample_message(cls)
        frame = encode(msg)
        if decode(frame) != msg:
            raise RuntimeError(f"{cls.__name__} does not round-trip: {msg!r}")
        types[cls.__name__] = TypeRates(
            type=int(kind),
            frame_bytes=len(frame),
            parse_per_s=calls_per_second(functools.partial(decode, frame), per_run),
            build_per_s=calls_per_second(functools.partial(encode, msg), per_run),
        )
    result = CodecResult(
        types,
        parse=Summary.of({name: t.parse_per_s for name, t in types.items()}),
        build=Summary.of({name: t.build_per_s for name, t in types.items()}),
    )
    progress(f"codec: parse min {result.parse.min_per_s:.0f}/s ({result.parse.slowest}), "
             f"mean {result.parse.mean_per_s:.0f}/s")
    return result

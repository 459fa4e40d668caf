"""Valid messages from the schema: every message type, every field drawn from its field type's declaration.

Each payload field names its ``wire.FieldType``, which offers edge values and a
random draw, so a new message or field type is fuzzed without touching this tool.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from arca_control.protocol import wire
from arca_control.protocol.messages import REGISTRY, ControlEvent, ControlRequest, Message, payload_fields
from arca_control.protocol.wire import HEADER_SIZE

if TYPE_CHECKING:
    import random

HEADER = struct.Struct("<BHI")  # type, length, request_id: PROTOCOL.md section 2
ALL_TYPES = sorted(REGISTRY.values(), key=lambda cls: cls.TYPE)
REQUEST_TYPES = [cls for cls in ALL_TYPES if issubclass(cls, ControlRequest)]
TEXT_TYPES = [cls for cls in ALL_TYPES if any(wire.declared(f) is wire.TEXT for f in payload_fields(cls))]


def random_value(rng: random.Random, kind: wire.FieldType[object]) -> object:
    """A valid value of a field type: one of its edges half the time, else one it draws."""
    return rng.choice(kind.edges) if rng.random() < 0.5 else kind.draw(rng)


def random_message(rng: random.Random, cls: type[Message]) -> Message:
    values = {f.name: random_value(rng, wire.declared(f)) for f in payload_fields(cls)}
    request_id = 0 if issubclass(cls, ControlEvent) else rng.choice([1, 0xFFFFFFFF, rng.randint(1, 0xFFFFFFFF)])
    return cls(request_id=request_id, **values)


def field_spans(msg: Message) -> list[tuple[wire.FieldType[object], int, int]]:
    """(field type, start, end) of each payload field inside the frame of ``msg``."""
    spans, offset = [], HEADER_SIZE
    for f in payload_fields(type(msg)):
        kind = wire.declared(f)
        size = len(kind.write(getattr(msg, f.name)))
        spans.append((kind, offset, offset + size))
        offset += size
    return spans


def text_start(msg: Message) -> int:
    """Where the (first) text field of ``msg`` starts in its frame: its u8 length byte."""
    return next(start for kind, start, _ in field_spans(msg) if kind is wire.TEXT)

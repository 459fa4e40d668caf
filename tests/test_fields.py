"""Each wire field type's one declaration holds together.

Its fast reader and writer agree with its construct layout, byte for byte, on
its edges, its sample and its random draws; it takes the size it says; every
encoding it calls invalid is refused by both, with the same error class, alone
and inside a real frame; and its draws repeat for a seed (the fuzzer's cases
replay by seed).
"""

from __future__ import annotations

import random

import pytest
from construct import Struct
from hypothesis import given
from hypothesis import strategies as st

from arca_control.protocol import errors, wire
from arca_control.protocol.codec import decode, decode_with_construct, encode
from arca_control.protocol.messages import REGISTRY, ControlEvent, Message, payload_fields
from arca_control.protocol.wire import HEADER_SIZE, HEADER_STRUCT, FieldType, declared

from .strategies import values_of

#: Every field type some message declares, in a stable order.
USED = sorted({declared(f) for cls in REGISTRY.values() for f in payload_fields(cls)}, key=lambda kind: kind.name)
ids = [kind.name for kind in USED]


def test_every_declared_type_is_used_by_a_message():
    declared_here = {value for value in vars(wire).values() if isinstance(value, FieldType)}
    assert declared_here == set(USED)
    assert len({kind.name for kind in USED}) == len(USED)


def construct_bytes(kind: FieldType[object], value: object) -> bytes:
    """``value`` built by the construct layout, inside a Struct as the codec builds it (from a dict of any values)."""
    return Struct("value" / kind.construct).build({"value": value})


def check_value(kind: FieldType[object], value: object) -> None:
    data = kind.write(value)
    assert data == construct_bytes(kind, value)
    assert kind.read(data, 0) == (value, len(data))
    # A reader stops at its field's end, whatever follows.
    assert kind.read(b"\x07" + data + b"\xff" * 8, 1) == (value, 1 + len(data))
    assert kind.construct.parse(data) == value
    if kind.size is not None:
        assert len(data) == kind.size


@pytest.mark.parametrize("kind", USED, ids=ids)
def test_edges_and_sample_agree_with_construct(kind):
    assert kind.edges
    assert len(set(kind.edges)) == len(kind.edges)
    for value in (*kind.edges, kind.sample):
        check_value(kind, value)


@pytest.mark.parametrize("kind", USED, ids=ids)
@given(data=st.data())
def test_drawn_values_agree_with_construct(kind, data):
    check_value(kind, data.draw(values_of(kind)))


@pytest.mark.parametrize("kind", USED, ids=ids)
def test_draws_repeat_for_a_seed(kind):
    first, second = random.Random(20240601), random.Random(20240601)
    assert [kind.draw(first) for _ in range(50)] == [kind.draw(second) for _ in range(50)]


def carrier(kind: FieldType[object]) -> tuple[type[Message], str]:
    """The first message type with a field of ``kind``, and that field's name."""
    return next((cls, f.name) for cls in REGISTRY.values() for f in payload_fields(cls) if declared(f) is kind)


def with_field_replaced(kind: FieldType[object], encoding: bytes) -> bytes:
    """A frame of the carrier message whose ``kind`` field is ``encoding`` instead (header length fixed)."""
    cls, name = carrier(kind)
    values = {f.name: declared(f).sample for f in payload_fields(cls)}
    msg = cls(request_id=0 if issubclass(cls, ControlEvent) else 1, **values)
    payload = b""
    for f in payload_fields(cls):
        payload += encoding if f.name == name else declared(f).write(values[f.name])
    assert len(encode(msg)) == HEADER_SIZE + sum(len(declared(f).write(values[f.name])) for f in payload_fields(cls))
    return HEADER_STRUCT.pack(cls.TYPE, len(payload), msg.request_id) + payload


def outcome(parse, data: bytes) -> type[errors.ProtocolError] | None:
    try:
        parse(data)
    except errors.ProtocolError as exc:
        return type(exc)
    return None


@pytest.mark.parametrize("kind", [kind for kind in USED if kind.invalid], ids=lambda kind: kind.name)
def test_invalid_encodings_are_refused_alike(kind):
    refusals = (errors.InvalidField, errors.UnsupportedVersion)
    for encoding in kind.invalid:
        for tail in (b"", b"\x00" * 8, b"\xff" * 8):
            with pytest.raises(refusals):
                kind.read(encoding + tail, 0)
        frame = with_field_replaced(kind, encoding)
        verdict = outcome(decode, frame)
        assert verdict in refusals, encoding
        assert outcome(decode_with_construct, frame) is verdict, encoding


@pytest.mark.parametrize("kind", [kind for kind in USED if kind.enum is not None], ids=lambda kind: kind.name)
def test_one_byte_enums_take_exactly_their_values(kind):
    assert kind.size == 1
    assert len(kind.edges) + len(kind.invalid) == 256
    assert {kind.write(value) for value in kind.edges}.isdisjoint(kind.invalid)

"""The fast path and the construct schema are interchangeable: same bytes, same messages, same errors."""

from __future__ import annotations

import dataclasses
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arca_control.protocol import errors
from arca_control.protocol.codec import decode, decode_with_construct, encode, encode_with_construct
from arca_control.protocol.messages import AcceptOk, ConnectionEnd, Hello, Listen, ListenErr, Message
from arca_control.protocol.wire import HEADER, HEADER_STRUCT, Endpoint

from .strategies import messages

M = TypeVar("M", bound=Message)


def wrongly_typed(msg: M, **values: object) -> M:
    """``msg`` with fields set to values its annotations rule out, as an untyped caller can pass them."""
    copy = dataclasses.replace(msg)
    for name, value in values.items():
        object.__setattr__(copy, name, value)
    return copy


def outcome(parse, data: bytes):
    try:
        return parse(data)
    except errors.ProtocolError as exc:
        return type(exc)


@given(messages)
def test_same_bytes_for_every_message(msg):
    assert encode(msg) == encode_with_construct(msg)
    assert decode(encode(msg)) == decode_with_construct(encode(msg)) == msg


@settings(max_examples=2000)
@given(messages, st.data())
def test_same_verdict_on_mutated_frames(msg, data):
    frame = bytearray(encode(msg))
    for _ in range(data.draw(st.integers(1, 3))):
        choice = data.draw(st.sampled_from(["flip", "cut", "grow", "set"]))
        if choice == "flip" and frame:
            i = data.draw(st.integers(0, len(frame) - 1))
            frame[i] ^= 1 << data.draw(st.integers(0, 7))
        elif choice == "cut" and frame:
            del frame[data.draw(st.integers(0, len(frame) - 1)) :]
        elif choice == "grow":
            frame += data.draw(st.binary(min_size=1, max_size=4))
        elif frame:
            frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(st.integers(0, 255))
    mutated = bytes(frame)
    assert outcome(decode, mutated) == outcome(decode_with_construct, mutated)


@settings(max_examples=1000)
@given(st.binary(max_size=40))
def test_same_verdict_on_garbage(data):
    assert outcome(decode, data) == outcome(decode_with_construct, data)


@pytest.mark.parametrize(
    "msg",
    [
        # Endpoint refuses these itself (tests/test_endpoint.py); a plain pair reaches both encoders.
        wrongly_typed(Listen(request_id=1, endpoint=Endpoint("127.0.0.1", 80)), endpoint=("127.0.0.1", 70000)),
        wrongly_typed(Listen(request_id=1, endpoint=Endpoint("127.0.0.1", 80)), endpoint=("127.1", 80)),
        wrongly_typed(Listen(request_id=1, endpoint=Endpoint("127.0.0.1", 80)), endpoint=("localhost", 80)),
        wrongly_typed(Listen(request_id=1, endpoint=Endpoint("127.0.0.1", 80)), endpoint=("127.0.0.1",)),
        # A host that is not text, though ipaddress would take it as an IPv4 address.
        wrongly_typed(Listen(request_id=1, endpoint=Endpoint("127.0.0.1", 80)), endpoint=(0x7F000001, 80)),
        wrongly_typed(Listen(request_id=1, endpoint=Endpoint("127.0.0.1", 80)), backlog=1.5),
        Hello(request_id=1, version=2),
        ConnectionEnd(connection_id=1, status=99999),
        ListenErr(request_id=1, errno=0),
        wrongly_typed(ListenErr(request_id=1, errno=98), message=b"bytes"),
        ListenErr(request_id=1, errno=98, message="\ud800"),  # a lone surrogate: no UTF-8 for it
        AcceptOk(request_id=1, connection_id=2**32, local=Endpoint("127.0.0.1", 1), peer=Endpoint("127.0.0.1", 2)),
    ],
)
def test_both_refuse_what_does_not_fit(msg):
    with pytest.raises(errors.LocalProtocolError):
        encode(msg)
    with pytest.raises(errors.LocalProtocolError):
        encode_with_construct(msg)


@given(st.integers(0, 255), st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF))
def test_header_layouts_agree(kind, length, request_id):
    built = HEADER.build({"type": kind, "length": length, "request_id": request_id})
    assert built == HEADER_STRUCT.pack(kind, length, request_id)
    assert tuple(HEADER.parse(built).values())[1:] == (kind, length, request_id)

"""The codec: round trips for every message, and typed errors for every kind of bad input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from arca_control.protocol import errors
from arca_control.protocol.codec import NEED_DATA, FrameDecoder, decode, encode
from arca_control.protocol.messages import (
    REGISTRY,
    AcceptOk,
    ConnectionEnd,
    Hello,
    Listen,
    ListenErr,
    Message,
)
from arca_control.protocol.wire import DEFAULT_MAX_PAYLOAD, ENDPOINT, HEADER_SIZE, Endpoint

from .strategies import message_of, messages
from .test_fastpath import wrongly_typed


@pytest.mark.parametrize("cls", list(REGISTRY.values()), ids=lambda c: c.__name__)
@given(data=st.data())
def test_every_message_round_trips(cls, data):
    msg = data.draw(message_of(cls))
    frame = encode(msg)
    assert decode(frame) == msg
    assert encode(decode(frame)) == frame
    type_, length, request_id = struct.unpack_from("<BHI", frame)
    assert (type_, length, request_id) == (cls.TYPE, len(frame) - HEADER_SIZE, msg.request_id)


@given(st.lists(messages, max_size=8), st.data())
def test_incremental_decoder_takes_any_split(msgs, data):
    stream = b"".join(encode(m) for m in msgs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = FrameDecoder()
    out: list[Message] = []
    start = 0
    for cut in [*cuts, len(stream)]:
        if cut > start:  # an empty feed would mean end of stream
            decoder.feed(stream[start:cut])
            start = cut
        out.extend(decoder)
    decoder.feed(b"")
    assert list(decoder) == []
    assert out == msgs


@given(messages)
def test_decoder_byte_at_a_time(msg):
    frame = encode(msg)
    decoder = FrameDecoder()
    for i in range(len(frame) - 1):
        decoder.feed(frame[i : i + 1])
        assert decoder.next_message() is NEED_DATA
    decoder.feed(frame[-1:])
    assert decoder.next_message() == msg
    assert decoder.buffered == 0


@settings(max_examples=500)
@given(st.binary(max_size=64))
def test_garbage_raises_only_protocol_error_or_round_trips(data):
    try:
        msg = decode(data)
    except errors.RemoteProtocolError:
        return
    assert encode(msg) == data


@settings(max_examples=300)
@given(messages, st.data())
def test_mutated_frames_keep_the_invariant(msg, data):
    frame = bytearray(encode(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i] = data.draw(st.integers(0, 255))
    try:
        decoded = decode(bytes(frame))
    except errors.RemoteProtocolError:
        return
    assert encode(decoded) == bytes(frame)


LISTEN = encode(Listen(request_id=7, endpoint=Endpoint("127.0.0.1", 80)))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", errors.TruncatedFrame),
        (LISTEN[:6], errors.TruncatedFrame),
        (LISTEN[:-1], errors.TruncatedFrame),
        (LISTEN + b"\x00", errors.TrailingBytes),
        (bytes([0x7E]) + LISTEN[1:], errors.UnknownMessageType),
        (LISTEN[:1] + struct.pack("<H", DEFAULT_MAX_PAYLOAD + 1) + LISTEN[3:], errors.OversizedFrame),
        # the length covers one byte more than the payload's fields use
        (LISTEN[:1] + struct.pack("<H", len(LISTEN) - HEADER_SIZE + 1) + LISTEN[3:] + b"\x00", errors.TrailingBytes),
        (LISTEN[:HEADER_SIZE] + b"\x02" + LISTEN[HEADER_SIZE + 1 :], errors.InvalidField),  # family 2
        (LISTEN[:3] + b"\x00\x00\x00\x00" + LISTEN[HEADER_SIZE:], errors.InvalidField),  # request id 0
        (encode(Hello(request_id=1))[:HEADER_SIZE] + b"\x02" + encode(Hello(request_id=1))[HEADER_SIZE + 1 :],
         errors.UnsupportedVersion),
    ],
)
def test_malformed_input_gets_its_typed_error(data, error):
    with pytest.raises(error) as caught:
        decode(bytes(data))
    assert isinstance(caught.value, OSError)
    assert caught.value.errno == error.errno_code


def test_error_keeps_the_request_id_when_the_header_is_readable():
    with pytest.raises(errors.TruncatedFrame) as caught:
        decode(LISTEN[:-2])
    assert caught.value.request_id == 7


def test_field_errors():
    end = bytearray(encode(ConnectionEnd(connection_id=1, status=0)))
    end[-2:] = struct.pack("<H", 60000)  # no such errno
    with pytest.raises(errors.InvalidField):
        decode(bytes(end))
    err = bytearray(encode(ListenErr(request_id=1, errno=98, message="in use")))
    err[HEADER_SIZE + 2] = 200  # the text's length byte lies
    with pytest.raises(errors.InvalidField):
        decode(bytes(err))
    err = bytearray(encode(ListenErr(request_id=1, errno=98, message="ab")))
    err[-2:] = b"\xff\xfe"  # not UTF-8
    with pytest.raises(errors.InvalidField):
        decode(bytes(err))


def test_oversize_is_refused_from_the_header_alone():
    decoder = FrameDecoder(max_payload=16)
    decoder.feed(b"\x02\xff\xff\x01\x00\x00\x00")
    with pytest.raises(errors.OversizedFrame):
        decoder.next_message()
    with pytest.raises(errors.OversizedFrame):  # the stream is lost for good
        decoder.next_message()


def test_eof_inside_a_frame_is_truncation():
    decoder = FrameDecoder()
    decoder.feed(LISTEN[:10])
    assert decoder.next_message() is NEED_DATA
    decoder.feed(b"")
    with pytest.raises(errors.TruncatedFrame):
        decoder.next_message()


@pytest.mark.parametrize(
    "msg",
    [
        # Endpoint refuses these itself (tests/test_endpoint.py); a plain pair reaches the encoder.
        wrongly_typed(Listen(request_id=1, endpoint=Endpoint("127.0.0.1", 80)), endpoint=("127.0.0.1", 70000)),
        wrongly_typed(Listen(request_id=1, endpoint=Endpoint("127.0.0.1", 80)), endpoint=("localhost", 80)),
        Listen(request_id=0, endpoint=Endpoint("127.0.0.1", 80)),
        Listen(request_id=2**32, endpoint=Endpoint("127.0.0.1", 80)),
        ConnectionEnd(request_id=5, connection_id=1),
        ListenErr(request_id=1, errno=0),
        ListenErr(request_id=1, errno=1, message="x" * 256),
        AcceptOk(request_id=1, connection_id=-1, local=Endpoint("127.0.0.1", 1), peer=Endpoint("127.0.0.1", 2)),
    ],
)
def test_encoding_a_bad_message_is_a_local_error(msg):
    with pytest.raises(errors.LocalProtocolError):
        encode(msg)


def test_error_reply_text_is_cut_to_fit():
    reply = ListenErr.make(1, 98, "é" * 200)
    assert len(reply.message.encode()) <= 255
    assert decode(encode(reply)) == reply


def test_endpoint_equals_socket_address_tuples():
    assert Endpoint("127.0.0.1", 80) == ("127.0.0.1", 80)
    # A plain (host, port) tuple encodes as its Endpoint does (the field's writer is the message encoder's).
    assert ENDPOINT.write(("10.1.2.3", 9)) == ENDPOINT.write(Endpoint("10.1.2.3", 9))
    listen = decode(encode(Listen(request_id=1, endpoint=Endpoint("10.1.2.3", 9))))
    assert isinstance(listen, Listen)
    assert listen.endpoint == ("10.1.2.3", 9)

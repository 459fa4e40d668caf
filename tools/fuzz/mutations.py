"""Mutations: ways to turn a valid frame into one that is wrong in a particular way (or two, stacked).

Byte mutations work on any bytes (flip, cut, insert, lie in the header);
message mutations know the message (a field out of range, a lying text length,
bad UTF-8, frames concatenated or split, garbage, a frame past the size limit).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from arca_control.protocol import codec, wire
from arca_control.protocol.wire import DEFAULT_MAX_PAYLOAD, HEADER_SIZE

from .schema import ALL_TYPES, HEADER, TEXT_TYPES, field_spans, random_message, text_start

if TYPE_CHECKING:
    import random

    from arca_control.protocol.messages import Message

INVALID_TYPE_BYTES = [0x00, 0x07, 0x7F, 0x80, 0x89, 0xBE, 0xC0, 0xC2, 0xFF]
BAD_UTF8 = [b"\xc3\x28", b"\xff", b"\xed\xa0\x80", b"\xc0\x80", b"\xe2\x82", b"ok\x80", b"\xf4\x90\x80\x80"]


def set_header(data: bytes, **changes: int) -> bytes:
    if len(data) < HEADER_SIZE:
        return data
    header = dict(zip(("type", "length", "request_id"), HEADER.unpack_from(data), strict=True))
    header.update(changes)
    return HEADER.pack(header["type"], header["length"], header["request_id"]) + data[HEADER_SIZE:]


def bit_flip(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4) if out else 0):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))] if data else data


def insert_bytes(rng: random.Random, data: bytes) -> bytes:
    at = rng.randint(0, len(data))
    return data[:at] + rng.randbytes(rng.randint(1, 8)) + data[at:]


def delete_bytes(rng: random.Random, data: bytes) -> bytes:
    at = rng.randint(0, len(data))
    return data[:at] + data[at + rng.randint(1, 8):]


def lie_length(rng: random.Random, data: bytes) -> bytes:
    real = len(data) - HEADER_SIZE
    length = rng.choice([real + 1, real - 1, real + rng.randint(2, 40), 0, DEFAULT_MAX_PAYLOAD,
                         DEFAULT_MAX_PAYLOAD + 1, 0xFFFF, rng.randint(0, 0xFFFF)])
    return set_header(data, length=length % 0x10000)


def swap_type(rng: random.Random, data: bytes) -> bytes:
    valid = [cls.TYPE for cls in ALL_TYPES]
    return set_header(data, type=rng.choice([rng.choice(valid), rng.choice(INVALID_TYPE_BYTES), rng.randrange(256)]))


def bad_request_id(rng: random.Random, data: bytes) -> bytes:
    if len(data) < HEADER_SIZE:
        return data
    current = HEADER.unpack_from(data)[2]
    # Zero on a request or reply, nonzero on an event; both are InvalidField.
    return set_header(data, request_id=rng.choice([1, 0xFFFFFFFF, rng.getrandbits(32)]) if current == 0 else 0)


def bad_field(rng: random.Random, msg: Message) -> bytes:
    """One field overwritten, in place, by an encoding its type refuses, or by the start of one of its edge values.

    An edge of another shape mislabels what follows (an IPv6 family byte on an IPv4 address, a text
    length longer than the text); for plain integers, which have no invalid value, the edges are the bounds.
    """
    data = bytearray(codec.encode(msg))
    spans = field_spans(msg)
    if not spans:  # a message with no payload (Stats): its only "field" is the length
        return set_header(bytes(data) + b"\x00", length=1)
    kind, start, end = rng.choice(spans)
    choices = kind.invalid if kind.invalid and rng.random() < 0.75 else edge_encodings(kind)
    replacement = rng.choice(choices)[: end - start]
    data[start : start + len(replacement)] = replacement
    return bytes(data)


@functools.cache
def edge_encodings(kind: wire.FieldType[object]) -> tuple[bytes, ...]:
    return tuple(kind.write(value) for value in kind.edges)


def text_message(rng: random.Random, msg: Message) -> Message:
    return msg if type(msg) in TEXT_TYPES else random_message(rng, rng.choice(TEXT_TYPES))


def lie_text(rng: random.Random, msg: Message) -> bytes:
    """The inner text's u8 length says more or fewer bytes than the payload holds."""
    msg = text_message(rng, msg)
    data = bytearray(codec.encode(msg))
    start = text_start(msg)
    n = data[start]
    data[start] = rng.choice([n + 1, n - 1, n + rng.randint(2, 20), 0, 255, rng.randrange(256)]) % 256
    return bytes(data)


def bad_utf8(rng: random.Random, msg: Message) -> bytes:
    """A text whose length bytes are all honest but whose bytes are not UTF-8."""
    msg = text_message(rng, msg)
    data = codec.encode(msg)
    start = text_start(msg)
    text = data[start + 1 : start + 1 + data[start]]
    at = rng.randint(0, len(text))
    text = (text[:at] + rng.choice(BAD_UTF8) + text[at:])[:255]
    payload = data[HEADER_SIZE:start] + bytes([len(text)]) + text + data[start + 1 + data[start]:]
    return set_header(data[:HEADER_SIZE], length=len(payload)) + payload


def random_payload(rng: random.Random, msg: Message) -> bytes:
    data = codec.encode(msg)
    return data[:HEADER_SIZE] + rng.randbytes(len(data) - HEADER_SIZE)


def concat(rng: random.Random, msg: Message) -> bytes:
    others = [random_message(rng, rng.choice(ALL_TYPES)) for _ in range(rng.randint(1, 3))]
    frames = [codec.encode(m) for m in (msg, *others)]
    if rng.random() < 0.3:  # one bad frame inside the stream
        at = rng.randrange(len(frames))
        frames[at] = BYTE_MUTATIONS[rng.choice(list(BYTE_MUTATIONS))](rng, frames[at])
    return b"".join(frames)


def split(rng: random.Random, msg: Message) -> bytes:
    """A window of a stream of frames that starts or ends inside one of them."""
    first = len(codec.encode(msg))
    stream = codec.encode(msg) + b"".join(codec.encode(random_message(rng, rng.choice(ALL_TYPES))) for _ in range(2))
    start = rng.randint(0, first - 1)
    return stream[start : rng.randint(start, len(stream))]


def garbage(rng: random.Random, msg: Message) -> bytes:
    data = rng.randbytes(rng.choice([0, 1, 6, 7, rng.randint(0, 64)]))
    return bytes([msg.TYPE]) + data[1:] if data and rng.random() < 0.5 else data


def huge(rng: random.Random, msg: Message) -> bytes:
    """Past the payload limit: a monitor's receive buffer cuts this (MSG_TRUNC)."""
    return codec.encode(msg) + bytes(rng.randint(DEFAULT_MAX_PAYLOAD, 2 * DEFAULT_MAX_PAYLOAD))


BYTE_MUTATIONS = {f.__name__: f for f in (bit_flip, truncate, insert_bytes, delete_bytes, lie_length, swap_type,
                                         bad_request_id)}
MESSAGE_MUTATIONS = {f.__name__: f for f in (bad_field, lie_text, bad_utf8, random_payload, concat, split, garbage,
                                            huge)}
MUTATIONS = ["valid", *BYTE_MUTATIONS, *MESSAGE_MUTATIONS]


def mutate(rng: random.Random, msg: Message) -> tuple[list[str], bytes]:
    """A mutation of the frame of ``msg``, sometimes two stacked; the names of those applied."""
    name = rng.choice(MUTATIONS)
    if name == "valid":
        return [name], codec.encode(msg)
    data = BYTE_MUTATIONS[name](rng, codec.encode(msg)) if name in BYTE_MUTATIONS else MESSAGE_MUTATIONS[name](rng, msg)
    names = [name]
    if rng.random() < 0.2:
        names.append(rng.choice(list(BYTE_MUTATIONS)))
        data = BYTE_MUTATIONS[names[-1]](rng, data)
    return names, data

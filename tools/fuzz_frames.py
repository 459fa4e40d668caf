#!/usr/bin/env python3
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
wire type of each payload field), so a new message type is fuzzed without
touching this file. Only loopback addresses are ever contacted.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import enum
import errno
import functools
import hashlib
import ipaddress
import itertools
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from arca_control.protocol import codec, errors, wire
from arca_control.protocol.messages import (
    REGISTRY, Abort, Accept, AcceptErr, AcceptOk, Cancel, CloseListener, CloseListenerOk, Connect, ConnectErr,
    ConnectionEnd, ControlEvent, ControlRequest, Error, Hello, HelloOk, Listen, ListenErr, ListenOk,
    GetOption, Message, Resolve, ResolveOk, SetOption, Stats, StatsOk, UdpBind, UdpClose, payload_fields,
)
from arca_control.protocol.wire import DEFAULT_MAX_PAYLOAD, HEADER_SIZE, LENGTH_FIELD_MAX, Capability, Endpoint, FamilyFilter, ListenFlags, OptionTarget, SockType

HEADER = struct.Struct("<BHI")  # type, length, request_id: PROTOCOL.md section 2
ALL_TYPES = sorted(REGISTRY.values(), key=lambda cls: cls.TYPE)
REQUEST_TYPES = [cls for cls in ALL_TYPES if issubclass(cls, ControlRequest)]
TEXT_TYPES = [cls for cls in ALL_TYPES if any(wire.declared(f) is wire.TEXT for f in payload_fields(cls))]
INVALID_TYPE_BYTES = [0x00, 0x07, 0x7F, 0x80, 0x89, 0xBE, 0xC0, 0xC2, 0xFF]
BAD_UTF8 = [b"\xc3\x28", b"\xff", b"\xed\xa0\x80", b"\xc0\x80", b"\xe2\x82", b"ok\x80", b"\xf4\x90\x80\x80"]
DEFAULT_CORPUS = Path(__file__).resolve().parent / "corpus" / "found"
MAX_SAVED = 50  # findings shown and saved per run; one bug tends to produce thousands of them


# --- valid messages, from the schema ------------------------------------------------


def random_value(rng: random.Random, kind: wire.FieldType[object]) -> object:
    """A valid value of a field type: one of its edges half the time, else one it draws."""
    return rng.choice(kind.edges) if rng.random() < 0.5 else kind.draw(rng)


def random_message(rng: random.Random, cls: type[Message]) -> Message:
    values = {f.name: random_value(rng, wire.declared(f)) for f in payload_fields(cls)}
    request_id = 0 if issubclass(cls, ControlEvent) else rng.choice([1, 0xFFFFFFFF, rng.randint(1, 0xFFFFFFFF)])
    return cls(request_id=request_id, **values)


def field_spans(msg: Message) -> list[tuple[object, int, int]]:
    """(wire type, start, end) of each payload field inside the frame of ``msg``."""
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


# --- mutations ------------------------------------------------------------------------


def set_header(data: bytes, **changes: int) -> bytes:
    if len(data) < HEADER_SIZE:
        return data
    header = dict(zip(("type", "length", "request_id"), HEADER.unpack_from(data)))
    header.update(changes)
    return HEADER.pack(header["type"], header["length"], header["request_id"]) + data[HEADER_SIZE:]


def bit_flip(rng, data):
    out = bytearray(data)
    for _ in range(rng.randint(1, 4) if out else 0):
        out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def truncate(rng, data):
    return data[: rng.randrange(len(data))] if data else data


def insert_bytes(rng, data):
    at = rng.randint(0, len(data))
    return data[:at] + rng.randbytes(rng.randint(1, 8)) + data[at:]


def delete_bytes(rng, data):
    at = rng.randint(0, len(data))
    return data[:at] + data[at + rng.randint(1, 8):]


def lie_length(rng, data):
    real = len(data) - HEADER_SIZE
    length = rng.choice([real + 1, real - 1, real + rng.randint(2, 40), 0, DEFAULT_MAX_PAYLOAD,
                         DEFAULT_MAX_PAYLOAD + 1, 0xFFFF, rng.randint(0, 0xFFFF)])
    return set_header(data, length=length % 0x10000)


def swap_type(rng, data):
    valid = [cls.TYPE for cls in ALL_TYPES]
    return set_header(data, type=rng.choice([rng.choice(valid), rng.choice(INVALID_TYPE_BYTES), rng.randrange(256)]))


def bad_request_id(rng, data):
    if len(data) < HEADER_SIZE:
        return data
    current = HEADER.unpack_from(data)[2]
    # Zero on a request or reply, nonzero on an event; both are InvalidField.
    return set_header(data, request_id=rng.choice([1, 0xFFFFFFFF, rng.getrandbits(32)]) if current == 0 else 0)


def bad_field(rng, msg):
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


def text_message(rng, msg):
    return msg if type(msg) in TEXT_TYPES else random_message(rng, rng.choice(TEXT_TYPES))


def lie_text(rng, msg):
    """The inner text's u8 length says more or fewer bytes than the payload holds."""
    msg = text_message(rng, msg)
    data = bytearray(codec.encode(msg))
    start = text_start(msg)
    n = data[start]
    data[start] = rng.choice([n + 1, n - 1, n + rng.randint(2, 20), 0, 255, rng.randrange(256)]) % 256
    return bytes(data)


def bad_utf8(rng, msg):
    """A text whose length bytes are all honest but whose bytes are not UTF-8."""
    msg = text_message(rng, msg)
    data = codec.encode(msg)
    start = text_start(msg)
    text = data[start + 1 : start + 1 + data[start]]
    at = rng.randint(0, len(text))
    text = (text[:at] + rng.choice(BAD_UTF8) + text[at:])[:255]
    payload = data[HEADER_SIZE:start] + bytes([len(text)]) + text + data[start + 1 + data[start]:]
    return set_header(data[:HEADER_SIZE], length=len(payload)) + payload


def random_payload(rng, msg):
    data = codec.encode(msg)
    return data[:HEADER_SIZE] + rng.randbytes(len(data) - HEADER_SIZE)


def concat(rng, msg):
    others = [random_message(rng, rng.choice(ALL_TYPES)) for _ in range(rng.randint(1, 3))]
    frames = [codec.encode(m) for m in (msg, *others)]
    if rng.random() < 0.3:  # one bad frame inside the stream
        at = rng.randrange(len(frames))
        frames[at] = BYTE_MUTATIONS[rng.choice(list(BYTE_MUTATIONS))](rng, frames[at])
    return b"".join(frames)


def split(rng, msg):
    """A window of a stream of frames that starts or ends inside one of them."""
    first = len(codec.encode(msg))
    stream = codec.encode(msg) + b"".join(codec.encode(random_message(rng, rng.choice(ALL_TYPES))) for _ in range(2))
    start = rng.randint(0, first - 1)
    return stream[start : rng.randint(start, len(stream))]


def garbage(rng, msg):
    data = rng.randbytes(rng.choice([0, 1, 6, 7, rng.randint(0, 64)]))
    return bytes([msg.TYPE]) + data[1:] if data and rng.random() < 0.5 else data


def huge(rng, msg):
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
    if name in BYTE_MUTATIONS:
        data = BYTE_MUTATIONS[name](rng, codec.encode(msg))
    else:
        data = MESSAGE_MUTATIONS[name](rng, msg)
    names = [name]
    if rng.random() < 0.2:
        names.append(rng.choice(list(BYTE_MUTATIONS)))
        data = BYTE_MUTATIONS[names[-1]](rng, data)
    return names, data


# --- the codec target -----------------------------------------------------------------


def check_codec(data: bytes, outcomes: collections.Counter | None = None) -> list[str]:
    """Every way ``data`` breaks the codec's contract; empty if it keeps it."""
    problems: list[str] = []
    whole = decode_whole(data, DEFAULT_MAX_PAYLOAD, problems, outcomes)
    decode_whole(data, LENGTH_FIELD_MAX, problems, None)  # the guest's limit for frames from its monitor
    try:
        expected, expected_error = split_frames(data)
    except Exception as exc:  # decode of one whole frame inside data broke the contract
        return problems + [f"decode of a frame inside the input raised {exc!r}"]
    check_incremental(data, whole, expected, expected_error, problems)
    return problems


#: An endpoint's size follows its family byte (PROTOCOL.md section 3); the other field types of a
#: fixed size say it themselves (FieldType.size); text is a u8 count and that many bytes.
ENDPOINT_SIZES = {1: 7, 2: 23}  # and AF_UNIX (4): family, a u8-length path, port


def valid_unix(field: bytes) -> bool:
    """An AF_UNIX endpoint: UTF-8, absolute or empty, no NUL, at most 107 bytes, port 0 (PROTOCOL.md section 3)."""
    path, port = field[2:-2], field[-2:]
    try:
        text = path.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return (text == "" or text.startswith("/")) and "\0" not in text and len(path) <= wire.UNIX_PATH_MAX and port == b"\0\0"


def valid_u8(enum_type: type[enum.Enum], value: int) -> bool:
    """Is ``value`` one of the enum's values (for flags: any mix of its bits)?"""
    if issubclass(enum_type, enum.Flag):
        return value & ~sum(m.value for m in enum_type) == 0
    return value in {m.value for m in enum_type}


def spec_verdict(data: bytes, limit: int) -> type[errors.ProtocolError] | None:
    """The error class PROTOCOL.md's decoding order (section 2) gives ``data``, None for a valid frame.

    Worked out from the spec's tables, without the codec, so that decode's choice of class is checked too.
    """
    if len(data) < HEADER_SIZE:
        return errors.TruncatedFrame
    kind, length, request_id = HEADER.unpack_from(data)
    cls = REGISTRY.get(kind)
    if length > limit:
        return errors.OversizedFrame
    if cls is None:
        return errors.UnknownMessageType
    if (request_id == 0) != issubclass(cls, ControlEvent):
        return errors.InvalidField
    if len(data) != HEADER_SIZE + length:
        return errors.TruncatedFrame if len(data) < HEADER_SIZE + length else errors.TrailingBytes
    payload, pos = data[HEADER_SIZE:], 0
    for f in payload_fields(cls):
        verdict, pos = field_verdict(wire.declared(f), payload, pos)
        if verdict is not None:
            return verdict
    return errors.TrailingBytes if pos < len(payload) else None


def field_verdict(kind, payload: bytes, pos: int) -> tuple[type[errors.ProtocolError] | None, int]:
    """The error one field at ``pos`` gives (None if it is valid), and where the next field starts."""
    if kind is wire.ADDRESS_LIST:  # a u8 count, then (socket type, endpoint) pairs
        if pos >= len(payload):
            return errors.InvalidField, pos
        count, pos = payload[pos], pos + 1
        for _ in range(count):
            for part in (wire.SOCK_TYPE, wire.ENDPOINT):
                verdict, pos = field_verdict(part, payload, pos)
                if verdict is not None:
                    return verdict, pos
        return None, pos
    if kind is wire.TEXT:
        size = 1 + (payload[pos] if pos < len(payload) else 0)
    elif kind is wire.COUNTS:  # a u8 count of (u16, u32) pairs
        size = 1 + 6 * (payload[pos] if pos < len(payload) else 0)
    elif kind is wire.ENDPOINT:
        if pos >= len(payload):
            return errors.InvalidField, pos
        if payload[pos] == wire.AddressFamily.UNIX:
            size = 2 + (payload[pos + 1] if pos + 1 < len(payload) else 0) + 2
        else:
            size = ENDPOINT_SIZES.get(payload[pos])
        if size is None:
            return errors.InvalidField, pos  # an unknown family
    else:
        size = kind.size
    if pos + size > len(payload):
        return errors.InvalidField, pos  # the field runs past the payload's end
    field, pos = payload[pos : pos + size], pos + size
    value = int.from_bytes(field[:2], "little")
    if kind is wire.VERSION and value != wire.PROTOCOL_VERSION:
        return errors.UnsupportedVersion, pos
    if (kind is wire.ERRNO and value not in errno.errorcode) or (
        kind is wire.END_STATUS and value != 0 and value not in errno.errorcode
    ) or (kind.enum is not None and not valid_u8(kind.enum, field[0])) or (
        kind is wire.ENDPOINT and field[0] == wire.AddressFamily.UNIX and not valid_unix(field)
    ):
        return errors.InvalidField, pos
    if kind is wire.TEXT:
        try:
            field[1:].decode("utf-8")
        except UnicodeDecodeError:
            return errors.InvalidField, pos
    return None, pos


def decode_whole(data, limit, problems, outcomes):
    verdict = spec_verdict(data, limit)
    try:
        msg = codec.decode(data, max_payload=limit)
    except errors.ProtocolError as exc:
        if outcomes is not None:
            outcomes[type(exc).__name__] += 1
        if type(exc) is not verdict:
            problems.append(f"decode(max_payload={limit}) raised {exc!r}; PROTOCOL.md says {verdict}")
        return None
    except Exception as exc:
        problems.append(f"decode(max_payload={limit}) raised {exc!r}")
        return None
    if outcomes is not None:
        outcomes["ok"] += 1
    if verdict is not None:
        problems.append(f"decode(max_payload={limit}) accepted {msg!r}; PROTOCOL.md says {verdict.__name__}")
    try:
        again = codec.encode(msg)
    except Exception as exc:
        problems.append(f"decode(max_payload={limit}) gave {msg!r}, which encode refuses: {exc!r}")
        return msg
    if again != data:
        problems.append(f"decode(max_payload={limit}) gave {msg!r}, which encodes to {again.hex(' ')}")
    return msg


def split_frames(data: bytes) -> tuple[list[Message], type[errors.ProtocolError] | None]:
    """The oracle for FrameDecoder: each whole frame in turn through ``decode``.

    Returns the messages before the first bad or unfinished frame, and the
    error class FrameDecoder must raise there: decode's for a whole frame; for
    one cut by the end of the input, a header check's as soon as the header is
    complete, else TruncatedFrame (which is what ``spec_verdict`` of the rest says).
    """
    messages, pos = [], 0
    while pos < len(data):
        header = codec.peek_header(data[pos:])
        if header is None or pos + HEADER_SIZE + header[1] > len(data):
            return messages, spec_verdict(data[pos:], DEFAULT_MAX_PAYLOAD)
        end = pos + HEADER_SIZE + header[1]
        try:
            messages.append(codec.decode(data[pos:end]))
        except errors.ProtocolError as exc:
            return messages, type(exc)
        pos = end
    return messages, None


def check_incremental(data, whole, expected, expected_error, problems):
    decoder, got, error = codec.FrameDecoder(), [], None
    try:
        for i in range(len(data)):
            decoder.feed(data[i : i + 1])
            got.extend(decoder)
        decoder.feed(b"")
        got.extend(decoder)
    except errors.ProtocolError as exc:
        error = exc
    except Exception as exc:
        problems.append(f"FrameDecoder raised {exc!r} after yielding {got!r}")
        return
    if error is not None:
        try:
            decoder.next_message()
            problems.append("FrameDecoder did not raise its error again")
        except errors.ProtocolError as again:
            if again is not error:
                problems.append(f"FrameDecoder raised {again!r} after {error!r}")
        except Exception as exc:
            problems.append(f"FrameDecoder raised {exc!r} after {error!r}")
    try:
        consumed = b"".join(codec.encode(m) for m in got)
    except Exception as exc:
        problems.append(f"FrameDecoder yielded a message encode refuses: {exc!r}")
        return
    if data[: len(consumed)] != consumed:
        problems.append(f"FrameDecoder yielded {got!r}, which is not what the input starts with")
    if got != expected:
        problems.append(f"FrameDecoder yielded {got!r}, decode of each frame gave {expected!r}")
    if type(error) is not (expected_error or type(None)):
        want = expected_error.__name__ if expected_error else "nothing"
        problems.append(f"FrameDecoder raised {error!r}; decode of each frame in turn says {want}")
    if whole is not None and (got != [whole] or error is not None):
        problems.append(f"decode gave {whole!r}, FrameDecoder yielded {got!r} and raised {error!r}")


# --- bookkeeping: findings, progress, summary -------------------------------------------


class Run:
    """Counters, findings and the progress line of one fuzzing run."""

    def __init__(self, mode: str, args: argparse.Namespace) -> None:
        self.mode, self.corpus = mode, Path(args.corpus)
        self.start = time.monotonic()
        self.deadline = self.start + args.seconds if args.seconds else None
        self.limit = args.count
        self.cases = 0
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.findings = 0
        self.saved: list[Path] = []
        self.show_progress = sys.stderr.isatty() and not args.quiet
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


# --- codec mode -------------------------------------------------------------------------


def run_codec(args, rng: random.Random, replay: list[Path] = ()) -> int:
    run = Run("codec", args)
    try:
        while run.more() if not replay else run.cases < len(replay):
            if replay:
                data, source = replay[run.cases].read_bytes(), [f"replayed from {replay[run.cases]}"]
            else:
                msg = random_message(rng, ALL_TYPES[run.cases % len(ALL_TYPES)])  # every type in turn
                names, data = mutate(rng, msg)
                run.counts["mutations"].update(names)
                source = []
            problems = check_codec(data, run.counts["decode"])
            if problems:
                run.finding(data, source + problems, save=not replay)
            run.cases += 1
            run.progress()
    except KeyboardInterrupt:
        print("interrupted")
    return run.summary(args.seed)


# --- live mode: a model of the monitor, from PROTOCOL.md section 4 ----------------------


class Violation(Exception):
    """The monitor did something PROTOCOL.md rules out."""


class Expect:
    """What the monitor must do with one frame: reply (id, types, errno, check), close, or neither."""

    def __init__(self, reply_id=None, types=(), code=None, close=False, check=None, before=()) -> None:
        self.reply_id, self.types, self.code, self.close, self.check = reply_id, types, code, close, check
        self.before = before  # replies that must come first, in this order
        self.frame = b""  # the frame this is the answer to


class Model:
    """The state one monitor session must be in, and so the answer each frame must get."""

    def __init__(self, max_errors: int, refused: Endpoint, stalled: Endpoint) -> None:
        self.max_errors, self.refused, self.stalled = max_errors, refused, stalled
        self.ready = self.tcp = self.udp = self.closed = False
        self.errors = 0
        self.listeners: dict[int, Endpoint] = {}
        self.next_listener = 1
        #: Accepts (request id -> listener id) and Connects (-> None) not answered yet, oldest first.
        self.pending: dict[int, int | None] = {}

    def expect(self, data: bytes, fds: int = 0) -> Expect:
        if not data and not fds:
            self.closed = True  # a zero-length message reads as EOF
            return Expect(close=True)
        try:
            if len(data) > HEADER_SIZE + DEFAULT_MAX_PAYLOAD:  # cut by the monitor's receive buffer
                raise errors.OversizedFrame("cut", request_id=HEADER.unpack_from(data)[2])
            msg = codec.decode(data)
            if fds or not isinstance(msg, ControlRequest) or self.ready == isinstance(msg, Hello):
                raise errors.UnexpectedMessage("not allowed here", request_id=msg.request_id)
        except errors.ProtocolError as exc:
            self.errors += 1
            close = not self.ready or self.errors >= self.max_errors or not exc.request_id
            self.closed |= close
            return Expect(exc.request_id or None, (Error,), exc.errno, close)
        return self.expect_request(msg)

    def expect_request(self, msg: ControlRequest) -> Expect:
        rid = msg.request_id
        if isinstance(msg, Hello):
            self.ready, self.tcp = True, Capability.TCP in msg.capabilities
            self.udp = Capability.UDP in msg.capabilities
            granted = msg.capabilities & wire.SUPPORTED_CAPABILITIES
            return Expect(rid, (HelloOk,),
                          check=lambda r: r.capabilities == granted and r.max_payload == DEFAULT_MAX_PAYLOAD)
        if isinstance(msg, Cancel):
            if msg.target not in self.pending:
                return Expect()  # never answered, and nothing to withdraw
            listener = self.pending.pop(msg.target)
            return Expect(msg.target, (ConnectErr if listener is None else AcceptErr,), errno.ECANCELED)
        needs_udp = isinstance(msg, (UdpBind, UdpClose)) or (
            isinstance(msg, (SetOption, GetOption)) and msg.target is OptionTarget.DATAGRAM
        )
        if not (self.udp if needs_udp else self.tcp):
            return Expect(rid, (Error,), errno.EOPNOTSUPP)
        if rid in self.pending:
            return Expect(rid, (Error,), errno.EBUSY)
        if isinstance(msg, Listen):
            ok_only = msg.endpoint == Endpoint("127.0.0.1", 0)  # nothing can refuse that
            return Expect(rid, (ListenOk,) if ok_only else (ListenOk, ListenErr),
                          check=lambda r: self.listened(r, msg.endpoint))
        if isinstance(msg, Accept) and msg.listener_id not in self.listeners:
            return Expect(rid, (AcceptErr,), errno.EBADF)
        stalls = isinstance(msg, Connect) and msg.endpoint == self.stalled and not msg.timeout_ms
        if isinstance(msg, Accept) or stalls:
            self.pending[rid] = getattr(msg, "listener_id", None)  # answered later: a connection, or Cancel
            return Expect()
        if isinstance(msg, Connect):
            assert msg.endpoint in (self.refused, self.stalled), "only our own loopback ports are contacted"
            codes = {errno.ETIMEDOUT} if msg.endpoint == self.stalled else {errno.ECONNREFUSED}
            if 0 < msg.timeout_ms < 1000:  # a deadline that short may pass before even a refusal is seen
                codes.add(errno.ETIMEDOUT)
            return Expect(rid, (ConnectErr,), check=lambda r: r.errno in codes)
        if isinstance(msg, Stats):
            return Expect(rid, (StatsOk,))
        if isinstance(msg, Resolve):  # make_safe made it a literal
            want = ((SockType.STREAM, Endpoint("127.0.0.1", msg.port)),)
            return Expect(rid, (ResolveOk,), check=lambda r: r.addresses == want)
        if isinstance(msg, (Abort, SetOption, GetOption, UdpClose)):
            return Expect(rid, (Error,), errno.EBADF)  # make_safe aimed them at nothing that exists
        if msg.listener_id in self.listeners:  # CloseListener: its queued Accepts fail first, in order
            del self.listeners[msg.listener_id]
            queued = [r for r, listener in self.pending.items() if listener == msg.listener_id]
            for r in queued:
                del self.pending[r]
            return Expect(rid, (CloseListenerOk,), check=lambda r: r.listener_id == msg.listener_id,
                          before=[Expect(r, (AcceptErr,), errno.EBADF) for r in queued])
        return Expect(rid, (Error,), errno.EBADF)

    def listened(self, reply, asked: Endpoint) -> bool:
        if isinstance(reply, ListenErr):
            return True
        ok = reply.listener_id == self.next_listener and reply.local.host == asked.host
        ok &= reply.local.port == asked.port if asked.port else reply.local.port != 0
        self.listeners[reply.listener_id] = reply.local
        self.next_listener += 1
        if reply.local.port == self.refused.port:  # the kernel handed out our free port again
            self.refused = free_port()
        return ok

    def make_safe(self, data: bytes) -> tuple[bytes, Message | None]:
        """``data`` with any Listen or Connect in it kept on loopback and off our ports; what it decodes to."""
        try:
            msg = codec.decode(data) if len(data) <= HEADER_SIZE + DEFAULT_MAX_PAYLOAD else None
        except errors.ProtocolError:
            return data, None  # the monitor rejects it just the same, unread
        if isinstance(msg, Connect):  # to our refused port: nothing outside is ever contacted
            msg = Connect(request_id=msg.request_id, endpoint=self.refused, timeout_ms=msg.timeout_ms)
        elif isinstance(msg, Listen):
            host, port = msg.endpoint
            # ::1 and 127.0.0.0/8 only; and no scope id, which the kernel ignores on them.
            host = host.split("%")[0]
            if wire.is_unix_path(host):  # no socket files made in random places
                host, port = "127.0.0.1", 0
            elif not ipaddress.ip_address(host).is_loopback:
                host = "127.0.0.1"
            port = 0 if port in (self.refused.port, self.stalled.port) else port
            # V6ONLY stays only where it means something (an IPv4 listener would refuse it).
            flags = msg.flags if ":" in host else ListenFlags(0)
            msg = Listen(request_id=msg.request_id, endpoint=Endpoint(host, port), backlog=msg.backlog, flags=flags)
        elif isinstance(msg, Accept) and msg.listener_id in self.listeners:
            msg = Accept(request_id=msg.request_id, listener_id=0xFFFFFFFF)  # it would wait for a connection
        elif isinstance(msg, Abort):  # never at a connection of ours
            msg = Abort(request_id=msg.request_id, connection_id=0xFFFFFFFF)
        elif isinstance(msg, (SetOption, GetOption)):  # options on our own sockets are tested elsewhere
            msg = dataclasses.replace(msg, target_id=0xFFFFFFFF)
        elif isinstance(msg, (UdpBind, UdpClose)):  # UDP sockets are tested elsewhere
            msg = UdpClose(request_id=msg.request_id, socket_id=0xFFFFFFFF)
        elif isinstance(msg, Resolve):  # a literal: answered without any lookup, and predictable
            msg = Resolve(request_id=msg.request_id, name="127.0.0.1", port=msg.port, family=FamilyFilter.IPV4,
                          socktype=SockType.STREAM)
        return (data if msg is None else codec.encode(msg)), msg


class LiveSession:
    """One guest session driven frame by frame, every answer checked against the model."""

    TIMEOUT = 5.0

    def __init__(self, sock: socket.socket, model: Model, run: Run, rng: random.Random) -> None:
        self.sock, self.model, self.run, self.rng = sock, model, run, rng
        self.sock.settimeout(self.TIMEOUT)
        self.transcript: list[str] = []
        self.connections: set[int] = set()
        self.next_id = 1
        self.last = b""  # the frame saved if the monitor misbehaves

    def request_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def send(self, data: bytes, kind: str, fds=()) -> Expect:
        expect = self.model.expect(data, len(fds))
        expect.frame = data
        self.transcript.append(f"-> [{kind}] {data[:80].hex(' ')}" + f" with {len(fds)} fds" * bool(fds))
        self.run.counts["frames"][kind] += 1
        self.run.cases += 1
        self.run.progress()
        if fds:
            socket.send_fds(self.sock, [data], list(fds))
        else:
            self.sock.send(data)
        return expect

    def receive(self, keep_fds: list | None = None) -> Message | None:
        """The next frame from the monitor (None at EOF); its descriptors go to ``keep_fds`` or are closed."""
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, HEADER_SIZE + LENGTH_FIELD_MAX, 4, socket.MSG_CMSG_CLOEXEC)
            except TimeoutError:
                raise Violation(f"no answer within {self.TIMEOUT:g} s: the monitor hangs") from None
            if keep_fds is not None:
                keep_fds.extend(fds)
            try:
                if not data and not fds:
                    self.transcript.append("<- EOF")
                    return None
                msg = codec.decode(data, max_payload=LENGTH_FIELD_MAX)
                if len(fds) != msg.FDS:
                    raise Violation(f"{msg!r} came with {len(fds)} descriptors")
            except errors.ProtocolError as exc:
                raise Violation(f"the monitor sent a bad frame {data.hex(' ')}: {exc!r}") from None
            finally:
                for fd in fds if keep_fds is None else ():
                    os.close(fd)
            self.transcript.append(f"<- {msg!r}")
            self.run.counts["replies"][type(msg).__name__] += 1
            if not (isinstance(msg, ConnectionEnd) and msg.connection_id in self.connections):
                return msg  # (a connection of an earlier probe ending answers nothing)

    def check(self, expect: Expect, keep_fds: list | None = None) -> Message | None:
        reply, self.last = None, expect.frame or self.last
        for earlier in expect.before:
            self.check(earlier)
        if expect.reply_id is not None:
            want = f"{'/'.join(t.__name__ for t in expect.types)} for id {expect.reply_id}"
            reply = self.receive(keep_fds)
            if reply is None or reply.request_id != expect.reply_id or not isinstance(reply, expect.types):
                raise Violation(f"got {reply or 'EOF'!r}, expected {want}")
            if expect.code is not None and reply.errno != expect.code:
                raise Violation(f"got {reply!r}, expected {want} with errno {errno.errorcode[expect.code]}")
            if expect.check is not None and not expect.check(reply):
                raise Violation(f"wrong contents in {reply!r}")
        if expect.close and (extra := self.receive()) is not None:
            raise Violation(f"got {extra!r} where the session should have closed")
        return reply

    def mutated(self, cls=None) -> tuple[bytes, Message | None]:
        for _ in range(4):  # mostly frames that leave the session open, so more of them reach one session
            kind = cls or (self.rng.choice(REQUEST_TYPES) if self.rng.random() < 0.7 else self.rng.choice(ALL_TYPES))
            names, data = mutate(self.rng, random_message(self.rng, kind))
            if len(data) >= HEADER_SIZE and HEADER.unpack_from(data)[2] != 0:
                break
        self.run.counts["mutations"].update(names)
        return self.model.make_safe(data)

    def burst(self) -> None:
        """Mutated frames sent back to back: inline replies must come in request order."""
        expects = []
        for _ in range(self.rng.randint(2, 6)):
            data, msg = self.mutated()
            # A Connect's reply comes from a task of its own, in any order; a listener a Listen
            # opens is known only from its reply, too late for the frames after it here.
            if isinstance(msg, (Connect, Listen)):
                data = codec.encode(Accept(request_id=self.request_id(), listener_id=0)) + b"x"
            expects.append(self.send(data, "burst"))
            if self.model.closed:
                break
        for expect in expects:
            self.check(expect)

    def probe(self) -> None:
        """A valid request whose answer is known; some wait, to be cancelled or to accept a connection."""
        m, rid = self.model, self.request_id()
        listener = self.rng.choice(list(m.listeners)) if m.listeners else 0xFFFFFFFF
        probes = {
            "listen": Listen(request_id=rid, endpoint=Endpoint("127.0.0.1", 0)),
            "accept_unknown": Accept(request_id=rid, listener_id=0xFFFFFFFF),
            "connect_refused": Connect(request_id=rid, endpoint=m.refused, timeout_ms=5000),
            "connect_timeout": Connect(request_id=rid, endpoint=m.stalled, timeout_ms=self.rng.randint(1, 50)),
            "connect_cancel": Connect(request_id=rid, endpoint=m.stalled),
            "cancel_unknown": Cancel(request_id=rid, target=self.rng.getrandbits(32) | 1 << 31),
            "fds": Accept(request_id=rid, listener_id=0xFFFFFFFF),
        }
        if m.listeners:
            probes.update(close_listener=CloseListener(request_id=rid, listener_id=listener),
                          accept_cancel=Accept(request_id=rid, listener_id=listener),
                          accept_connect=Accept(request_id=rid, listener_id=listener))
        kind = self.rng.choice(sorted(probes))
        frame = codec.encode(probes[kind])
        if kind == "fds":  # refused, and the monitor must not keep them (the fd count shows it)
            with open(os.devnull) as junk:
                data = self.rng.choice([frame, b"", frame[:3]])
                self.check(self.send(data, kind, [junk.fileno()] * self.rng.randint(1, 5)))
            return
        self.check(self.send(frame, kind))
        if kind == "accept_connect":
            self.connect_to(listener)
        elif rid in m.pending and self.rng.random() < 0.8:  # else it stays pending, maybe to the session's end
            if self.rng.random() < 0.5:  # the id of a pending request may not be reused
                self.check(self.send(codec.encode(Accept(request_id=rid, listener_id=0xFFFFFFFF)), "same_id"))
            self.check(self.send(codec.encode(Cancel(request_id=self.request_id(), target=rid)), kind))

    def connect_to(self, listener: int) -> None:
        """Connect a real client: the oldest Accept queued on ``listener`` gets it; bytes go both ways."""
        fds: list[int] = []
        rid = next(r for r, queued_on in self.model.pending.items() if queued_on == listener)
        with socket.create_connection(self.model.listeners[listener], timeout=self.TIMEOUT) as client:
            try:
                # Connection ids count 1, 2, ... per session; only these round trips make connections here.
                wanted = (len(self.connections) + 1, self.model.listeners[listener], Endpoint.from_sockaddr(client.getsockname()))
                expect = Expect(rid, (AcceptOk,), check=lambda r: (r.connection_id, r.local, r.peer) == wanted)
                reply = self.check(expect, fds)
                del self.model.pending[rid]
                self.connections.add(reply.connection_id)
                client.sendall(b"ping")
                if not select.select([fds[0]], [], [], self.TIMEOUT)[0] or os.read(fds[0], 16) != b"ping":
                    raise Violation("bytes sent to an accepted connection did not reach its rx pipe")
                os.write(fds[-1], b"pong")  # tx; on the socket channel the one socket is both
                if client.recv(16) != b"pong":
                    raise Violation("bytes written to tx did not reach the peer")
            finally:
                for fd in fds:
                    os.close(fd)


def free_port() -> Endpoint:
    """A loopback port nobody listens on: bind one, then let it go."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return Endpoint(*probe.getsockname())


def stalled_listener() -> tuple[socket.socket, socket.socket]:
    """A loopback listener whose accept queue is full, so connects to it neither succeed nor fail."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    return listener, socket.create_connection(listener.getsockname(), timeout=5)


def run_session(sock: socket.socket, kind: str, run: Run, rng: random.Random, args, stalled: Endpoint,
                replay: bytes | None = None) -> LiveSession:
    """One session of ``kind`` (normal, handshake, limit); a violation is recorded as a finding."""
    model = Model(args.max_protocol_errors, free_port(), stalled)
    session = LiveSession(sock, model, run, rng)
    try:
        if kind == "handshake":  # the first frame itself is fuzzed
            session.check(session.send(session.mutated(rng.choice([Hello] * 3 + REQUEST_TYPES))[0], kind))
        else:
            # Half the sessions ask for the socket channel, so both kinds of connection are fuzzed.
            channels = rng.choice([wire.DEFAULT_CAPABILITIES, wire.DEFAULT_CAPABILITIES | Capability.SOCKET_CHANNEL])
            session.check(session.send(codec.encode(Hello(request_id=1, capabilities=channels)), "hello"))
        if replay is not None and not model.closed:
            session.check(session.send(model.make_safe(replay)[0], "replay"))
        steps = 0 if replay is not None else rng.randint(4, 24)
        while not model.closed and (kind == "limit" or steps > 0) and run.more():
            steps -= 1
            choice = rng.random()
            if kind == "limit" and choice < 0.7:  # a bad frame with an id to answer
                bad = codec.encode(Accept(request_id=session.request_id(), listener_id=1)) + b"x"
                session.check(session.send(bad, "trailing"))
            elif choice < 0.45:
                session.check(session.send(session.mutated()[0], "mutated"))
            elif choice < 0.6:
                session.burst()
            else:
                session.probe()
        if not model.closed and model.ready:
            session.probe()  # after everything, a valid request still gets its answer
        if not model.closed:
            sock.shutdown(socket.SHUT_WR)  # our EOF: the monitor must close its end, sending nothing more
            if (extra := session.receive()) is not None:
                raise Violation(f"got {extra!r} after our EOF")
        run.counts["sessions"][kind + " (closed by monitor)" * model.closed] += 1
    except (Violation, OSError) as exc:
        run.finding(session.last, [f"{kind} session: {exc!r}"], "\n".join(session.transcript) + "\n",
                    save=replay is None)
    finally:
        sock.close()
    return session


class SocketMonitor:
    """A standalone monitor (``--socket PATH``): many sessions, one process."""

    def __init__(self, workdir: str, max_errors: int) -> None:
        self.path = os.path.join(workdir, "arca.sock")
        self.stderr_path = os.path.join(workdir, "monitor.stderr")
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "arca_monitor", "--socket", self.path, "--max-protocol-errors", str(max_errors),
                 "--no-dns"],  # a fuzzed Resolve must never reach the system's nameserver
                stdin=subprocess.DEVNULL, stderr=stderr,
            )
        deadline = time.monotonic() + 15
        while not os.path.exists(self.path):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the monitor did not start: {self.log()}")
            time.sleep(0.02)
        counts = [-1, self.fd_count()]
        while counts[-1] != counts[-2]:  # settled: no session is open yet
            time.sleep(0.05)
            counts.append(self.fd_count())
        self.baseline = counts[-1]

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.connect(self.path)
        return sock

    def settled_fd_count(self, wait: float = 3.0) -> int:
        """The fd count once a finished session is cleaned up (polled for up to ``wait`` s)."""
        deadline = time.monotonic() + wait
        while (count := self.fd_count()) != self.baseline and time.monotonic() < deadline:
            time.sleep(0.02)
        return count

    def log(self) -> str:
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    def stop(self) -> list[str]:
        """SIGTERM, which must be a clean exit 0; what is wrong with the monitor's exit and stderr."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return exit_problems(self.process, "after SIGTERM") + stderr_problems(self.log())


def exit_problems(process: subprocess.Popen, when: str) -> list[str]:
    try:
        code = process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        code = process.wait()
    return [f"monitor exited {code} {when}"] if code else []


def stderr_problems(log: str) -> list[str]:
    return [f"monitor stderr contains {word!r}" for word in ("Traceback", "internal error", "session failed")
            if word in log]


def fd_session(workdir: str, run: Run, rng: random.Random, args, stalled: Endpoint) -> None:
    """One session with a monitor on an inherited fd (``--fd N``): it must exit 0 when the session ends."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with open(os.path.join(workdir, "fd-monitor.stderr"), "w+") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "arca_monitor", "--fd", str(theirs.fileno()), "--no-dns",
             "--max-protocol-errors", str(args.max_protocol_errors)],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stderr=stderr,
        )
        theirs.close()
        session = run_session(ours, "normal", run, rng, args, stalled)
        problems = exit_problems(process, "after its --fd session")
        stderr.seek(0)
        log = stderr.read()
    if problems := problems + stderr_problems(log):
        run.finding(session.last, problems, "\n".join(session.transcript) + "\n\n" + log)


def run_live(args, rng: random.Random, replay: list[Path] = ()) -> int:
    run = Run("live", args)
    stalled, filler = stalled_listener()
    with tempfile.TemporaryDirectory(prefix="arca-fuzz-") as workdir, stalled, filler:
        target = Endpoint(*stalled.getsockname())
        if not replay:
            fd_session(workdir, run, rng, args, target)
        monitor, problems = SocketMonitor(workdir, args.max_protocol_errors), []
        try:
            for index in range(len(replay)) if replay else itertools.count():
                if not replay and not run.more():
                    break
                kind = "limit" if index % 7 == 1 else "handshake" if index % 4 == 3 else "normal"
                data = replay[index].read_bytes() if replay else None
                session = run_session(monitor.connect(), "normal" if replay else kind, run, rng, args, target, data)
                if monitor.process.poll() is not None:
                    problems.append(f"the monitor exited with {monitor.process.returncode} during a session")
                elif (count := monitor.settled_fd_count()) != monitor.baseline:
                    problems.append(f"after a session the monitor holds {count} fds, {monitor.baseline} before")
                if problems:  # blame the session just run
                    run.finding(session.last, problems, "\n".join(session.transcript) + "\n", save=not replay)
                    problems = []
                    break
        except KeyboardInterrupt:
            print("interrupted")
        finally:
            problems += monitor.stop()
        if problems:
            run.finding(b"", problems, monitor.log())
    return run.summary(args.seed)


# --- atheris, replay and the command line -----------------------------------------------


def run_atheris(args) -> int:
    try:
        import atheris
    except ImportError:
        print("atheris is not installed: `pip install atheris` (Linux, CPython with clang), then rerun.",
              file=sys.stderr)
        return 2
    run = Run("atheris", args)

    def one_input(data: bytes) -> None:
        problems = check_codec(data)
        if problems:
            run.finding(data, problems)
            raise AssertionError("; ".join(problems))  # libFuzzer stops and keeps its own crash file

    atheris.instrument_all()
    flags = [f"-seed={args.seed}"] + [f"-runs={args.count}"] * (args.count is not None)
    flags += [f"-max_total_time={int(args.seconds)}"] * bool(args.seconds)
    atheris.Setup([sys.argv[0], *flags, *(args.replay or [])], one_input)  # directories: its starting corpus
    atheris.Fuzz()
    return 0


def replay_paths(items: list[str]) -> list[Path]:
    paths = []
    for item in map(Path, items):
        paths += sorted(item.glob("*.bin")) if item.is_dir() else [item]
    return paths


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Exit status: 0 no violation, 1 a violation was found (details on stdout), 2 usage error "
               "or atheris missing.\nExamples:\n  fuzz_frames.py codec --seconds 60\n"
               "  fuzz_frames.py live --count 2000 --seed 7\n  fuzz_frames.py codec --replay tools/corpus/regression",
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
    if args.count is None and args.seconds is None:
        args.count = 10000 if args.mode == "codec" else 1000
    print(f"seed: {args.seed} (rerun with --seed {args.seed})", flush=True)
    rng = random.Random(args.seed)
    if args.atheris:
        return run_atheris(args)
    if args.replay:
        paths = replay_paths(args.replay)
        return run_codec(args, rng, paths) if args.mode == "codec" else run_live(args, rng, paths)
    return run_codec(args, rng) if args.mode == "codec" else run_live(args, rng)


if __name__ == "__main__":
    sys.exit(main())

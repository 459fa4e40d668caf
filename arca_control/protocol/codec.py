"""Bytes to messages and back: ``encode``, ``decode`` and the incremental ``FrameDecoder``.

The frame schema is assembled here, once, from the header in ``wire.py`` and
the payload fields each message class declares: a Switch on the type byte to
one payload Struct per message, each ending in ``Terminated`` so that no byte
of a payload goes unread.

``decode`` is the untrusted-input path. It checks the header against the
buffer and the size limit before any payload is parsed (by ``fastpath``,
which holds to the construct schema byte for byte), and it raises
:class:`~arca_control.protocol.errors.RemoteProtocolError` (a subclass naming the cause)
for every malformed input, never ``struct.error``, ``KeyError`` or any other
exception. The invariant a fuzzer checks: ``decode(data)`` either raises
``ProtocolError`` or returns a message with ``encode(msg) == data``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import construct
from construct import FixedSized, Struct, Switch, Terminated, this

from . import errors, fastpath
from .messages import REGISTRY, ControlEvent, Message, MessageType, payload_fields
from .wire import (
    DEFAULT_MAX_PAYLOAD,
    EVENT_REQUEST_ID,
    HEADER,
    HEADER_SIZE,
    HEADER_STRUCT,
    LENGTH_FIELD_MAX,
    declared,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

#: One payload Struct per message type, built from the message classes.
PAYLOADS: dict[int, Struct] = {
    int(kind): Struct(*(f.name / declared(f).construct for f in payload_fields(cls)), Terminated)
    for kind, cls in REGISTRY.items()
}

#: The whole frame: header, then the payload chosen by the type byte.
FRAME = Struct(
    *HEADER.subcons,
    # A copy: Switch takes its cases as a plain dict of constructs, and dict is invariant.
    "payload" / FixedSized(this.length, Switch(this.type, dict(PAYLOADS))),
)

_CLASSES: dict[int, type[Message]] = {int(kind): cls for kind, cls in REGISTRY.items()}
#: For each message type, whether it is an event (request id 0) or not (any other).
_IS_EVENT: dict[int, bool] = {kind: issubclass(cls, ControlEvent) for kind, cls in _CLASSES.items()}
# The header is written and read on every frame: its struct methods bound once. (Called as
# HEADER_STRUCT.pack(...), an imported name, each call would make a bound method first.)
_pack_header = HEADER_STRUCT.pack
_unpack_header = HEADER_STRUCT.unpack_from


class NEED_DATA:
    """Sentinel: the incremental decoder needs more bytes for the next frame."""


def encode(msg: Message, *, max_payload: int = LENGTH_FIELD_MAX) -> bytes:
    """The frame for ``msg``. Raises ``LocalProtocolError`` if a field does not fit."""
    cls = _check_message(msg)
    payload = fastpath.build_payload(msg)
    if len(payload) > max_payload:
        raise errors.LocalProtocolError(f"{cls.__name__} payload of {len(payload)} bytes exceeds {max_payload}")
    return _pack_header(cls.TYPE, len(payload), msg.request_id) + payload


def encode_with_construct(msg: Message) -> bytes:
    """``encode``, by the construct schema itself: the reference the fast path is held to."""
    cls = _check_message(msg)
    values = {f.name: getattr(msg, f.name) for f in payload_fields(cls)}
    try:
        payload = PAYLOADS[cls.TYPE].build(values)
    except (construct.ConstructError, ValueError, TypeError, OverflowError, UnicodeError) as exc:
        raise errors.LocalProtocolError(f"cannot encode {msg!r}: {exc}") from None
    return HEADER.build({"type": cls.TYPE, "length": len(payload), "request_id": msg.request_id}) + payload


def _check_message(msg: Message) -> type[Message]:
    cls = type(msg)
    if _CLASSES.get(getattr(cls, "TYPE", -1)) is not cls:
        raise errors.LocalProtocolError(f"{cls.__name__} is not a protocol message")
    _check_request_id(msg.request_id, cls, errors.LocalProtocolError)
    return cls


def peek_header(data: bytes | bytearray) -> tuple[int, int, int] | None:
    """``(type, length, request_id)`` of the frame at the start of ``data``, if whole."""
    if len(data) < HEADER_SIZE:
        return None
    return _unpack_header(data)


def decode(data: bytes, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> Message:
    """The one message that ``data`` holds, exactly and entirely."""
    if len(data) >= HEADER_SIZE:
        kind, length, request_id = _unpack_header(data)
        # Every check _check_frame makes, at once, for a frame that passes them all (a u32 request id
        # is always in range); any other goes through it, to its error.
        if len(data) - HEADER_SIZE == length <= max_payload and _IS_EVENT.get(kind) is (request_id == EVENT_REQUEST_ID):
            return fastpath.parse_payload(kind, request_id, bytes(data[HEADER_SIZE:]))
    kind, request_id = _check_frame(data, max_payload)
    return fastpath.parse_payload(kind, request_id, bytes(data[HEADER_SIZE:]))


def decode_with_construct(data: bytes, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> Message:
    """``decode``, by the construct schema itself: the reference the fast path is held to."""
    kind, request_id = _check_frame(data, max_payload)
    return _parse(bytes(data), kind, request_id)


def _check_frame(data: bytes, max_payload: int) -> tuple[int, int]:
    """Check everything the header says against ``data``; ``(type, request_id)``."""
    header = peek_header(data)
    if header is None:
        raise errors.TruncatedFrame(f"{len(data)} bytes is shorter than the {HEADER_SIZE}-byte header")
    kind, length, request_id = header
    _check_header(kind, length, request_id, max_payload)
    if len(data) < HEADER_SIZE + length:
        raise errors.TruncatedFrame(
            f"header promises {length} payload bytes, {len(data) - HEADER_SIZE} present", request_id=request_id
        )
    if len(data) > HEADER_SIZE + length:
        raise errors.TrailingBytes(
            f"{len(data) - HEADER_SIZE - length} bytes after the frame", request_id=request_id
        )
    return kind, request_id


def _check_header(kind: int, length: int, request_id: int, max_payload: int) -> None:
    if length > max_payload:
        raise errors.OversizedFrame(f"payload of {length} bytes exceeds the limit of {max_payload}", request_id=request_id)
    cls = _CLASSES.get(kind)
    if cls is None:
        raise errors.UnknownMessageType(f"unknown message type 0x{kind:02x}", request_id=request_id)
    if (request_id == EVENT_REQUEST_ID) != issubclass(cls, ControlEvent):
        _check_request_id(request_id, cls, errors.InvalidField)


def _check_request_id(request_id: int, cls: type[Message], error: type[errors.ProtocolError]) -> None:
    is_event = issubclass(cls, ControlEvent)
    if not isinstance(request_id, int) or not 0 <= request_id <= 0xFFFFFFFF:
        raise error(f"request id {request_id!r} does not fit in u32")
    if is_event != (request_id == EVENT_REQUEST_ID):
        want = "0" if is_event else "nonzero"
        raise error(f"{cls.__name__} needs a {want} request id, not {request_id}", request_id=request_id)


def _parse(data: bytes, kind: int, request_id: int) -> Message:
    cls = REGISTRY[MessageType(kind)]
    try:
        payload = FRAME.parse(data).payload
    except construct.ConstError as exc:
        raise errors.UnsupportedVersion(f"{cls.__name__}: {_reason(exc)}", request_id=request_id) from None
    except construct.TerminatedError:
        raise errors.TrailingBytes(f"{cls.__name__}: bytes left after the last field", request_id=request_id) from None
    except construct.StreamError:
        raise errors.InvalidField(f"{cls.__name__}: a length inside the payload lies", request_id=request_id) from None
    # This is the untrusted-input boundary: whatever else construct or an adapter
    # raises for these bytes (ValidationError, UnicodeDecodeError, ...) is the
    # peer's fault and becomes one typed error, never a stray exception.
    except Exception as exc:
        raise errors.InvalidField(f"{cls.__name__}: {_reason(exc)}", request_id=request_id) from None
    return cls(request_id=request_id, **{f.name: payload[f.name] for f in payload_fields(cls)})


def _reason(exc: Exception) -> str:
    # construct prefixes its messages with a multi-line "Error in path ..." trail.
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


class FrameDecoder:
    """Turns a byte stream, cut anywhere, into whole messages.

    Feed bytes with :meth:`feed`, then iterate to take every whole message out;
    an incomplete frame stays buffered until the rest arrives, so the parse is
    restartable at any byte. ``feed(b"")`` means end of stream: a partial frame
    left then is a ``TruncatedFrame``.

    The size limit is checked as soon as a header is complete, before its
    payload is buffered. After any ``ProtocolError`` the stream has lost its
    framing, so the decoder raises that same error from then on.
    """

    def __init__(self, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        self.max_payload = max_payload
        self._buffer = bytearray()
        self._error: errors.ProtocolError | None = None
        self._eof = False

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a returned message."""
        return len(self._buffer)

    def feed(self, data: bytes) -> None:
        if self._eof and data:
            raise errors.LocalProtocolError("bytes fed after end of stream")
        if not data:
            self._eof = True
        self._buffer += data

    def next_message(self) -> Message | type[NEED_DATA]:
        """The next whole message, or ``NEED_DATA``."""
        if self._error is not None:
            raise self._error
        try:
            return self._next()
        except errors.ProtocolError as exc:
            self._error = exc
            raise

    def _next(self) -> Message | type[NEED_DATA]:
        header = peek_header(self._buffer)
        if header is not None:
            kind, length, request_id = header
            _check_header(kind, length, request_id, self.max_payload)
            end = HEADER_SIZE + length
            if len(self._buffer) >= end:
                payload = bytes(self._buffer[HEADER_SIZE:end])
                del self._buffer[:end]
                return fastpath.parse_payload(kind, request_id, payload)
        if self._eof and self._buffer:
            raise errors.TruncatedFrame(f"stream ended inside a frame ({len(self._buffer)} bytes)")
        return NEED_DATA

    def __iter__(self) -> Iterator[Message]:
        while isinstance(msg := self.next_message(), Message):
            yield msg

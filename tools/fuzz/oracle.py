"""What PROTOCOL.md says a frame is: the error class its decoding order (section 2) gives, from the spec's tables alone.

Worked out without the codec, so that decode's choice of error class is
checked too, not only that it raises one. Fixed-size fields take the size
their field type says (``FieldType.size``); a one-byte enum field, the values of
its enum (``FieldType.enum``); the rest follow the layouts of section 3.
"""

from __future__ import annotations

import enum
import errno

from arca_control.protocol import errors, wire
from arca_control.protocol.messages import REGISTRY, ControlEvent, payload_fields
from arca_control.protocol.wire import HEADER_SIZE

from .schema import HEADER

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


def field_verdict(kind: wire.FieldType[object], payload: bytes, pos: int) -> tuple[type[errors.ProtocolError] | None, int]:
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
        elif payload[pos] in ENDPOINT_SIZES:
            size = ENDPOINT_SIZES[payload[pos]]
        else:
            return errors.InvalidField, pos  # an unknown family
    elif kind.size is not None:
        size = kind.size
    else:  # a field type whose length is in its bytes needs its own rule above, read from the spec
        raise ValueError(f"no rule for the {kind.name} field type in field_verdict")
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

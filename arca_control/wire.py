"""The wire schema: the frame header and every field type, declared with construct.

This module only says how values are laid out in bytes. Which fields make up
which message lives beside each message class (``messages.py``), and
``codec.py`` assembles them into the one frame schema: this header, then a
Switch on the type byte to one payload Struct per message.

Everything is little-endian. Each field type is a construct Adapter that turns
bytes straight into the Python value the dataclasses hold (an ``Endpoint``, an
``IntEnum`` member), and rejects out-of-range values while parsing, so a
decoded message is always a valid one.
"""

from __future__ import annotations

import enum
import errno
import ipaddress
from typing import NamedTuple

from construct import (
    Adapter,
    Bytes,
    Const,
    Int8ul,
    Int16ul,
    Int32ul,
    PascalString,
    Struct,
    Switch,
    ValidationError,
    this,
)
from construct import Error as ErrorField

PROTOCOL_VERSION = 1
HEADER_SIZE = 7
#: The largest payload the u16 length field can express.
LENGTH_FIELD_MAX = 0xFFFF
#: The default limit on a payload; no message of this version comes near it.
DEFAULT_MAX_PAYLOAD = 4096
#: Request id 0 is never allocated: frames carrying it are unsolicited events.
EVENT_REQUEST_ID = 0

HEADER = Struct(
    "type" / Int8ul,
    "length" / Int16ul,
    "request_id" / Int32ul,
)


class Endpoint(NamedTuple):
    """An address and port. For IPv4 it equals Python's ``(host, port)`` tuple."""

    host: str
    port: int


class AddressFamily(enum.IntEnum):
    """The tag in front of every endpoint. Values 2 and up are reserved."""

    IPV4 = 1
    # Reserved for later versions, so the layout has room for them:
    # IPV6 = 2 (16 bytes, flow info, scope id); NAME = 3 (length-prefixed host name).


class Capability(enum.IntFlag, boundary=enum.KEEP):
    """Feature bits exchanged in Hello. Unknown bits are kept, and ignored."""

    TCP = 1


#: What this version implements; HelloOk answers with the intersection.
SUPPORTED_CAPABILITIES = Capability.TCP


class _EnumAdapter(Adapter):
    """An integer field that must be a member of ``enum_type``."""

    def __init__(self, subcon, enum_type: type[enum.IntEnum]) -> None:
        super().__init__(subcon)
        self.enum_type = enum_type

    def _decode(self, obj, context, path):
        try:
            return self.enum_type(obj)
        except ValueError:
            raise ValidationError(f"{obj} is not a valid {self.enum_type.__name__}", path=path)

    def _encode(self, obj, context, path):
        return int(self.enum_type(obj))


class _FlagAdapter(Adapter):
    def _decode(self, obj, context, path):
        return Capability(obj)

    def _encode(self, obj, context, path):
        return int(obj)


class _ErrnoAdapter(Adapter):
    """A nonzero errno this platform knows (the monitor and guest share a kernel)."""

    def _decode(self, obj, context, path):
        if obj not in errno.errorcode:
            raise ValidationError(f"unknown errno {obj}", path=path)
        return obj

    def _encode(self, obj, context, path):
        if obj not in errno.errorcode:
            raise ValidationError(f"unknown errno {obj}", path=path)
        return obj


class _StatusAdapter(_ErrnoAdapter):
    """Like an errno, but 0 is allowed and means "ended cleanly"."""

    def _decode(self, obj, context, path):
        return 0 if obj == 0 else super()._decode(obj, context, path)

    def _encode(self, obj, context, path):
        return 0 if obj == 0 else super()._encode(obj, context, path)


class _EndpointAdapter(Adapter):
    def _decode(self, obj, context, path):
        # Only IPv4 exists in this version; the Switch has already refused the rest.
        return Endpoint(str(ipaddress.IPv4Address(obj.address)), obj.port)

    def _encode(self, obj, context, path):
        host, port = obj
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            raise ValidationError(f"not an IPv4 address literal: {host!r}", path=path)
        return {"family": AddressFamily.IPV4, "address": address.packed, "port": port}


#: family u8, address (4 bytes for IPv4), port u16.
ENDPOINT = _EndpointAdapter(
    Struct(
        "family" / _EnumAdapter(Int8ul, AddressFamily),
        "address" / Switch(this.family, {AddressFamily.IPV4: Bytes(4)}, default=ErrorField),
        "port" / Int16ul,
    )
)
U16 = Int16ul
U32 = Int32ul
VERSION = Const(PROTOCOL_VERSION, Int16ul)
CAPABILITIES = _FlagAdapter(Int32ul)
ERRNO = _ErrnoAdapter(Int16ul)
END_STATUS = _StatusAdapter(Int16ul)
#: UTF-8 text of at most 255 bytes, with a u8 length in front.
TEXT = PascalString(Int8ul, "utf8")

"""The construct form of every field type: the declaration of each layout, and the codec of reference.

Everything is little-endian. Each layout turns bytes straight into the Python
value the message dataclasses hold (an ``Endpoint``, an ``IntEnum`` member)
and rejects out-of-range values while parsing, so a decoded message is always
a valid one. ``wire.py`` pairs each layout with its fast reader and writer
(``fastfields.py``), which the tests hold to it byte for byte.

The adapters are ``ExprAdapter`` over plain functions rather than ``Adapter``
subclasses: construct's classes are generic only in its stubs
(construct-typing), and a function's signature says what it turns into what.
"""

from __future__ import annotations

import enum
import errno
from typing import TYPE_CHECKING, Any, Never, TypeVar

from construct import (
    Bytes,
    Const,
    Error,
    ExprAdapter,
    Int8ul,
    Int16ul,
    Int32ul,
    Int64ul,
    PascalString,
    PrefixedArray,
    Struct,
    Switch,
    ValidationError,
    this,
)

from .values import AddressFamily, Capability, Endpoint

if TYPE_CHECKING:
    from collections.abc import Iterable

    from construct import Construct, Container, ListContainer
    from construct.core import Context

E = TypeVar("E", bound=enum.IntEnum | enum.IntFlag)
A = TypeVar("A")
B = TypeVar("B")

#: What a construct Struct is built from: its fields' values by name.
Fields = dict[str, object]


def u8_enum(enum_type: type[E]) -> Construct[E, int]:
    """A one-byte field that must be a member of ``enum_type`` (for flags: a mix of its bits)."""

    def decode(value: int, context: Context) -> E:
        try:
            return enum_type(value)
        except ValueError:
            raise ValidationError(f"{value} is not a valid {enum_type.__name__}") from None

    def encode(value: int, context: Context) -> int:
        return int(enum_type(value))

    return ExprAdapter(Int8ul, decode, encode)


def version(number: int) -> Construct[int, int | None]:
    """A u16 that must be ``number`` (a ``ConstError`` otherwise, which the codec reports as UnsupportedVersion)."""
    return Const(number, Int16ul)


def pairs(first: tuple[str, Construct[A, Never]], second: tuple[str, Construct[B, Never]]) -> Construct[
    tuple[tuple[A, B], ...], Iterable[tuple[object, object]]
]:
    """A u8 count, then that many (first, second) pairs, as a tuple of 2-tuples."""
    (first_name, first_layout), (second_name, second_layout) = first, second

    def decode(entries: ListContainer[Container[Any]], context: Context) -> tuple[tuple[A, B], ...]:
        return tuple((entry[first_name], entry[second_name]) for entry in entries)

    def encode(entries: Iterable[tuple[object, object]], context: Context) -> list[Fields | None]:
        return [{first_name: a, second_name: b} for a, b in entries]

    return ExprAdapter(
        PrefixedArray(Int8ul, Struct(first_name / first_layout, second_name / second_layout)), decode, encode
    )


def _capabilities(value: int, context: Context) -> Capability:
    return Capability(value)


def _flag_bits(value: Capability, context: Context) -> int:
    return int(value)


def _known_errno(value: int, context: Context) -> int:
    """A nonzero errno this platform knows (the monitor and guest share a kernel)."""
    if value not in errno.errorcode:
        raise ValidationError(f"unknown errno {value}")
    return value


def _end_status(value: int, context: Context) -> int:
    """Like an errno, but 0 is allowed and means "ended cleanly"."""
    return 0 if value == 0 else _known_errno(value, context)


def _decode_endpoint(obj: Container[Any], context: Context) -> Endpoint:
    try:
        if obj.family == AddressFamily.UNIX:
            return Endpoint.from_packed(AddressFamily.UNIX, obj.address.encode(), obj.port)
        if obj.family == AddressFamily.IPV4:
            return Endpoint.from_packed(AddressFamily.IPV4, obj.address, obj.port)
        return Endpoint.from_packed(AddressFamily.IPV6, obj.address.packed, obj.port, obj.address.scope_id)
    except ValueError as exc:
        raise ValidationError(f"not an endpoint: {exc}") from None


def _encode_endpoint(obj: tuple[str, int], context: Context) -> Fields:
    if isinstance(obj, Endpoint):
        endpoint = obj
    else:
        host, port = obj
        if not isinstance(host, str) or not isinstance(port, int):  # ipaddress would take an int, as an IPv4 address
            raise ValidationError(f"not an endpoint: {obj!r}")
        try:
            endpoint = Endpoint(host, port)
        except ValueError as exc:
            raise ValidationError(f"not an endpoint: {obj!r} ({exc})") from None
    if endpoint.family == AddressFamily.UNIX:
        return {"family": AddressFamily.UNIX, "address": endpoint.host, "port": 0}
    if endpoint.family == AddressFamily.IPV4:
        return {"family": AddressFamily.IPV4, "address": endpoint.packed, "port": endpoint.port}
    address = {"packed": endpoint.packed, "scope_id": endpoint.scope_id}
    return {"family": AddressFamily.IPV6, "address": address, "port": endpoint.port}


U16: Construct[int, int] = Int16ul
U32: Construct[int, int] = Int32ul
U64: Construct[int, int] = Int64ul
CAPABILITIES: Construct[Capability, Capability] = ExprAdapter(Int32ul, _capabilities, _flag_bits)
ERRNO: Construct[int, int] = ExprAdapter(Int16ul, _known_errno, _known_errno)
END_STATUS: Construct[int, int] = ExprAdapter(Int16ul, _end_status, _end_status)
#: UTF-8 text of at most 255 bytes, with a u8 length in front.
TEXT: Construct[str, str] = PascalString(Int8ul, "utf8")

#: family u8; the address (4 bytes for IPv4; 16 bytes and a u32 scope id for IPv6;
#: a u8-length UTF-8 path for AF_UNIX); port u16 (0 for AF_UNIX).
ENDPOINT: Construct[Endpoint, tuple[str, int]] = ExprAdapter(
    Struct(
        "family" / u8_enum(AddressFamily),
        "address" / Switch(
            this.family,
            {
                AddressFamily.IPV4: Bytes(4),
                AddressFamily.IPV6: Struct("packed" / Bytes(16), "scope_id" / Int32ul),
                AddressFamily.UNIX: PascalString(Int8ul, "utf8"),
            },
            default=Error,
        ),
        "port" / Int16ul,
    ),
    _decode_endpoint,
    _encode_endpoint,
)

"""Every field type read and written with ``struct``: the same checks as its construct layout, at a tenth of the cost.

construct parses a small frame in about 70 µs and builds one in 40; the
control plane needs well over 100k frames per second. A reader takes
``(payload, offset)`` and returns ``(value, next offset)``; it checks its own
bounds and ranges and raises exactly the error class the construct layout
(``layouts.py``) leads the codec to for the same bytes: ``InvalidField`` for a
field that runs past the payload or is out of range, ``UnsupportedVersion`` for
a version other than this one. The codec adds the message and request id. A
writer takes any object and returns the field's bytes, or raises
``LocalProtocolError`` for what construct's builder refuses.
``tests/test_fastpath.py`` and ``tests/test_fields.py`` hold the two to that.

construct's own compiled parsers are not used: their documentation says they
must not see untrusted data.
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable, Iterable
from typing import TypeVar

from .errors import InvalidField, LocalProtocolError, UnsupportedVersion
from .values import AddressFamily, Capability, Endpoint

T = TypeVar("T")
A = TypeVar("A")
B = TypeVar("B")
E = TypeVar("E", bound=int)

#: A reader: (payload, offset) to (value, the offset after the field).
Reader = Callable[[bytes, int], tuple[T, int]]
#: A writer: a value to the field's bytes.
Writer = Callable[[object], bytes]

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
#: An endpoint's address and port after its family byte; and the whole endpoint, family first, to write.
_unpack_ipv4 = struct.Struct("<4sH").unpack_from
_unpack_ipv6 = struct.Struct("<16sIH").unpack_from
_IPV4_ENDPOINT = struct.Struct("<B4sH")
_IPV6_ENDPOINT = struct.Struct("<B16sIH")
_COUNT = struct.Struct("<HI")
_KNOWN_ERRNOS = frozenset(errno.errorcode)

#: The one message for every field that runs past the end of its payload.
SHORT = "a length inside the payload lies"

# Bound once: every endpoint read or written goes through these.
_from_packed = Endpoint.from_packed
# The IP forms skip from_packed's checks: the struct formats above fix the sizes and ranges.
_from_ipv4 = Endpoint.from_wire_ipv4
_from_ipv6 = Endpoint.from_wire_ipv6
_IPV4 = AddressFamily.IPV4
_IPV6 = AddressFamily.IPV6
_UNIX = AddressFamily.UNIX
_pack_ipv4 = _IPV4_ENDPOINT.pack
_pack_ipv6 = _IPV6_ENDPOINT.pack
_iter_counts = _COUNT.iter_unpack


# --- readers ---------------------------------------------------------------------------------


def read_u16(data: bytes, at: int) -> tuple[int, int]:
    if at + 2 > len(data):
        raise InvalidField(SHORT)
    return _U16.unpack_from(data, at)[0], at + 2


def read_u32(data: bytes, at: int) -> tuple[int, int]:
    if at + 4 > len(data):
        raise InvalidField(SHORT)
    return _U32.unpack_from(data, at)[0], at + 4


def read_u64(data: bytes, at: int) -> tuple[int, int]:
    if at + 8 > len(data):
        raise InvalidField(SHORT)
    return _U64.unpack_from(data, at)[0], at + 8


def version_reader(number: int) -> Reader[int]:
    """A u16 that must be ``number``."""

    def read(data: bytes, at: int) -> tuple[int, int]:
        value, at = read_u16(data, at)
        if value != number:
            raise UnsupportedVersion(f"expected version {number}, got {value}")
        return value, at

    return read


def read_capabilities(data: bytes, at: int) -> tuple[Capability, int]:
    value, at = read_u32(data, at)
    return Capability(value), at


def read_errno(data: bytes, at: int) -> tuple[int, int]:
    value, at = read_u16(data, at)
    if value not in _KNOWN_ERRNOS:
        raise InvalidField(f"unknown errno {value}")
    return value, at


def read_end_status(data: bytes, at: int) -> tuple[int, int]:
    value, at = read_u16(data, at)
    if value and value not in _KNOWN_ERRNOS:
        raise InvalidField(f"unknown errno {value}")
    return value, at


def read_text(data: bytes, at: int) -> tuple[str, int]:
    if at + 1 > len(data):
        raise InvalidField(SHORT)
    end = at + 1 + data[at]
    if end > len(data):
        raise InvalidField(SHORT)
    try:
        return data[at + 1 : end].decode("utf-8"), end
    except UnicodeDecodeError as exc:
        raise InvalidField(str(exc)) from None


def read_endpoint(data: bytes, at: int) -> tuple[Endpoint, int]:
    """An endpoint, built from its packed bytes: no text is parsed."""
    if at + 1 > len(data):
        raise InvalidField(SHORT)
    family = data[at]
    if family == _IPV4:
        if at + 7 > len(data):
            raise InvalidField(SHORT)
        packed, port = _unpack_ipv4(data, at + 1)
        return _from_ipv4(packed, port), at + 7
    if family == _IPV6:
        if at + 23 > len(data):
            raise InvalidField(SHORT)
        packed, scope_id, port = _unpack_ipv6(data, at + 1)
        return _from_ipv6(packed, port, scope_id), at + 23
    if family == _UNIX:
        if at + 2 > len(data):
            raise InvalidField(SHORT)
        start = at + 2
        end = start + data[at + 1]
        port, at = read_u16(data, end)
        try:
            return _from_packed(_UNIX, data[start:end], port), at
        except ValueError as exc:
            raise InvalidField(f"not an AF_UNIX endpoint: {exc}") from None
    raise InvalidField(f"{family} is not a valid AddressFamily")


def u8_enum_reader(values: Iterable[E], name: str) -> Reader[E]:
    """A one-byte field that must be one of ``values`` (an enum's, named ``name`` in errors)."""
    table: list[E | None] = [None] * 256
    for value in values:
        table[value] = value

    def read(data: bytes, at: int) -> tuple[E, int]:
        if at + 1 > len(data):
            raise InvalidField(SHORT)
        value = table[data[at]]
        if value is None:
            raise InvalidField(f"{data[at]} is not a valid {name}")
        return value, at + 1

    return read


def read_counts(data: bytes, at: int) -> tuple[tuple[tuple[int, int], ...], int]:
    """A u8 count, then that many (u16, u32) pairs: one bounds check for them all."""
    if at + 1 > len(data):
        raise InvalidField(SHORT)
    count, at = data[at], at + 1
    if at + 6 * count > len(data):
        raise InvalidField(SHORT)
    end = at + 6 * count
    entries: tuple[tuple[int, int], ...] = tuple(_iter_counts(data[at:end]))
    return entries, end


def pairs_reader(read_first: Reader[A], read_second: Reader[B]) -> Reader[tuple[tuple[A, B], ...]]:
    """A u8 count, then that many pairs of fields."""

    def read(data: bytes, at: int) -> tuple[tuple[tuple[A, B], ...], int]:
        if at + 1 > len(data):
            raise InvalidField(SHORT)
        count, at = data[at], at + 1
        entries = []
        for _ in range(count):
            first, at = read_first(data, at)
            second, at = read_second(data, at)
            entries.append((first, second))
        return tuple(entries), at

    return read


# --- writers ---------------------------------------------------------------------------------


def uint_writer(size: int) -> Writer:
    """An unsigned little-endian integer of ``size`` bytes (2, 4 or 8)."""
    packer = {2: _U16, 4: _U32, 8: _U64}[size]
    top = (1 << 8 * size) - 1

    def write(value: object) -> bytes:
        if not isinstance(value, int) or not 0 <= value <= top:
            raise LocalProtocolError(f"{value!r} does not fit 0..{top}")
        return packer.pack(value)

    return write


write_u16 = uint_writer(2)
write_u32 = uint_writer(4)
write_u64 = uint_writer(8)


def version_writer(number: int) -> Writer:
    def write(value: object) -> bytes:
        if value != number:
            raise LocalProtocolError(f"version must be {number}, not {value!r}")
        return _U16.pack(number)

    return write


def write_errno(value: object) -> bytes:
    if not isinstance(value, int) or value not in _KNOWN_ERRNOS:
        raise LocalProtocolError(f"unknown errno {value!r}")
    return _U16.pack(value)


def write_end_status(value: object) -> bytes:
    return _U16.pack(0) if value == 0 and isinstance(value, int) else write_errno(value)


def write_text(value: object) -> bytes:
    if not isinstance(value, str):
        raise LocalProtocolError(f"not text: {value!r}")
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        raise LocalProtocolError(f"not encodable as UTF-8: {value!r}") from None
    if len(data) > 255:
        raise LocalProtocolError(f"text of {len(data)} bytes does not fit in 255")
    return bytes([len(data)]) + data


def pair(value: object) -> tuple[object, object]:
    """The two items of any iterable of two, as unpacking takes them (callers try a 2-tuple inline first)."""
    if isinstance(value, Iterable):
        try:
            first, second = value
        except ValueError:
            pass
        else:
            return first, second
    raise LocalProtocolError(f"not a pair: {value!r}")


def write_endpoint(value: object) -> bytes:
    """An Endpoint's packed form as it is; any other (host, port) pair is parsed into one first."""
    endpoint = value if isinstance(value, Endpoint) else endpoint_of(value)
    family = endpoint.family
    if family is _IPV4:
        return _pack_ipv4(family, endpoint.packed, endpoint[1])
    if family is _IPV6:
        return _pack_ipv6(family, endpoint.packed, endpoint.scope_id, endpoint[1])
    path = endpoint.packed
    return bytes((family, len(path))) + path + b"\0\0"


def endpoint_of(value: object) -> Endpoint:
    """The Endpoint a ``(host, port)`` pair stands for; LocalProtocolError if it stands for none."""
    host, port = value if isinstance(value, tuple) and len(value) == 2 else pair(value)
    if not isinstance(host, str) or not isinstance(port, int):  # ipaddress would take an int, as an IPv4 address
        raise LocalProtocolError(f"not an endpoint: {value!r}")
    try:
        return Endpoint(host, port)
    except ValueError as exc:
        raise LocalProtocolError(f"not an endpoint: {value!r} ({exc})") from None


def u8_enum_writer(values: Iterable[int], name: str) -> Writer:
    """One of ``values``, or anything equal to one (as the enum itself takes them)."""
    encodings: dict[object, bytes] = {value: bytes([value]) for value in values}

    def write(value: object) -> bytes:
        try:
            return encodings[value]
        except (KeyError, TypeError):
            raise LocalProtocolError(f"not a {name}: {value!r}") from None

    return write


def pairs_writer(what: str, write_first: Writer, write_second: Writer) -> Writer:
    """A u8 count, then that many pairs of fields (``what`` names them in errors)."""

    def write(value: object) -> bytes:
        if isinstance(value, (tuple, list)):  # what messages hold: the cheap check first
            entries: tuple[object, ...] | list[object] = value
        elif isinstance(value, Iterable):
            entries = list(value)
        else:
            raise LocalProtocolError(f"not a list of {what}: {value!r}")
        if len(entries) > 255:
            raise LocalProtocolError(f"{len(entries)} {what} do not fit in 255")
        parts = [bytes([len(entries)])]
        for entry in entries:
            first, second = entry if isinstance(entry, tuple) and len(entry) == 2 else pair(entry)
            parts += [write_first(first), write_second(second)]
        return b"".join(parts)

    return write

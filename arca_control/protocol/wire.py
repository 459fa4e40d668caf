"""The wire schema: the frame header, and one declaration per field type.

Each field type is one :class:`FieldType` (``fieldtype.py``): its construct layout (the
declaration of its bytes, and the codec of reference), the fast reader and
writer that the codec uses (held to the layout byte for byte by the tests), and
the values to try it with (edges, a random draw, a typical sample) for the
tests, the fuzzer and the bench. A new field type is one more declaration here;
everything that generates, checks or measures fields takes it from the object.

Which fields make up which message lives beside each message class
(``messages.py``: ``field(wire.ENDPOINT)``), and ``codec.py`` assembles them into
the one frame schema: this header, then a Switch on the type byte to one
payload Struct per message. The values themselves (``Endpoint``, the enums) are
in ``values.py`` and re-exported here.
"""

from __future__ import annotations

import errno
import struct

from construct import Int8ul, Int16ul, Int32ul, Struct

from . import examples, fastfields, layouts
from .fieldtype import FieldType, declared, u8_enum, uint
from .values import (
    DEFAULT_CAPABILITIES,
    SUPPORTED_CAPABILITIES,
    UNIX_PATH_MAX,
    AddressFamily,
    Capability,
    Endpoint,
    FamilyFilter,
    GaiError,
    IPSockAddr,
    ListenFlags,
    OptionTarget,
    SockAddr,
    SockType,
    ipv6_host,
    is_unix_path,
    valid_unix_path,
)

PROTOCOL_VERSION = 1
HEADER_SIZE = 7
#: The largest payload the u16 length field can express.
LENGTH_FIELD_MAX = 0xFFFF
#: The default limit on a payload; no message of this version comes near it.
DEFAULT_MAX_PAYLOAD = 4096
#: Request id 0 is never allocated: frames carrying it are unsolicited events.
EVENT_REQUEST_ID = 0

#: type u8, length u16, request id u32 (little-endian, as everything).
HEADER = Struct(
    "type" / Int8ul,
    "length" / Int16ul,
    "request_id" / Int32ul,
)
#: HEADER's layout for the stdlib: the header is read on every frame. A test holds them equal.
HEADER_STRUCT = struct.Struct("<BHI")


def _u16s(*values: int) -> tuple[bytes, ...]:
    """u16 encodings, for the invalid values of the two-byte fields below."""
    return tuple(v.to_bytes(2, "little") for v in values)


_UNKNOWN_ERRNOS = tuple(n for n in (200, 999, 4095, 0x7FFF, 0xFFFF) if n not in errno.errorcode)

U16 = uint("u16", 2, 128)
U32 = uint("u32", 4, 0x01020304)
U64 = uint("u64", 8, 1 << 40)

#: The Hello version: a u16 that must be PROTOCOL_VERSION (else UnsupportedVersion).
VERSION: FieldType[int] = FieldType(
    name="version",
    construct=layouts.version(PROTOCOL_VERSION),
    read=fastfields.version_reader(PROTOCOL_VERSION),
    write=fastfields.version_writer(PROTOCOL_VERSION),
    edges=(PROTOCOL_VERSION,),
    draw=examples.constant(PROTOCOL_VERSION),
    sample=PROTOCOL_VERSION,
    invalid=_u16s(0, PROTOCOL_VERSION + 1, 0x100, 0xFFFF),
)

#: Feature bits, a u32: unknown bits are kept (and ignored), so every value is valid.
CAPABILITIES: FieldType[Capability] = FieldType(
    name="capabilities",
    construct=layouts.CAPABILITIES,
    read=fastfields.read_capabilities,
    write=fastfields.write_u32,
    edges=(Capability(0), DEFAULT_CAPABILITIES, SUPPORTED_CAPABILITIES, Capability(0xFFFFFFFF)),
    draw=lambda rng: Capability(rng.getrandbits(rng.choice((3, 32)))),
    sample=Capability.TCP,
)

#: A nonzero errno this platform knows, as a u16 (the monitor and guest share a kernel).
ERRNO: FieldType[int] = FieldType(
    name="errno",
    construct=layouts.ERRNO,
    read=fastfields.read_errno,
    write=fastfields.write_errno,
    edges=(examples.KNOWN_ERRNOS[0], errno.EPROTO, examples.KNOWN_ERRNOS[-1]),
    draw=examples.errno_code,
    sample=errno.ECONNREFUSED,
    invalid=_u16s(0, *_UNKNOWN_ERRNOS),
)

#: How a connection ended: 0 for a clean end, else a known errno.
END_STATUS: FieldType[int] = FieldType(
    name="status",
    construct=layouts.END_STATUS,
    read=fastfields.read_end_status,
    write=fastfields.write_end_status,
    edges=(0, examples.KNOWN_ERRNOS[0], examples.KNOWN_ERRNOS[-1]),
    draw=examples.end_status,
    sample=errno.ECONNRESET,
    invalid=_u16s(*_UNKNOWN_ERRNOS),
)

#: UTF-8 text of at most 255 bytes, with a u8 length in front.
TEXT: FieldType[str] = FieldType(
    name="text",
    construct=layouts.TEXT,
    read=fastfields.read_text,
    write=fastfields.write_text,
    edges=("", "a", "\0", "x" * 255, "é" * 127 + "x", "😀" * 63 + "abc", "\u2028\ufeff\U0010ffff"),
    draw=examples.text,
    sample="connection refused by peer",
    # Not UTF-8: a stray continuation byte, a lone lead byte, a surrogate, an overlong NUL, past U+10FFFF.
    invalid=(b"\x01\xff", b"\x02\xc3\x28", b"\x03\xed\xa0\x80", b"\x02\xc0\x80", b"\x04\xf4\x90\x80\x80"),
)

#: family u8; the address (4 bytes for IPv4; 16 bytes and a u32 scope id for IPv6;
#: a u8-length UTF-8 path for AF_UNIX); port u16 (0 for AF_UNIX).
ENDPOINT: FieldType[Endpoint] = FieldType(
    name="endpoint",
    construct=layouts.ENDPOINT,
    read=fastfields.read_endpoint,
    write=fastfields.write_endpoint,
    edges=(
        Endpoint("0.0.0.0", 0),
        Endpoint("127.0.0.1", 0xFFFF),
        Endpoint("255.255.255.255", 1),
        Endpoint("::", 0),
        Endpoint("::1", 0xFFFF),
        Endpoint("::ffff:127.0.0.1", 80),
        Endpoint("fe80::1%4294967295", 1),
        Endpoint("", 0),
        Endpoint("/", 0),
        Endpoint("/" + "p" * (UNIX_PATH_MAX - 1), 0),
    ),
    draw=examples.endpoint,
    sample=Endpoint("192.0.2.1", 8080),
    invalid=(
        b"\x00", b"\x03", b"\x05", b"\xff",  # families that do not exist (3 is reserved)
        b"\x04\x01a\x00\x00",  # a relative path
        b"\x04\x02/\x00\x00\x00",  # a NUL in the path
        b"\x04\x01/\x01\x00",  # a port on an AF_UNIX endpoint
        b"\x04\x6c/" + b"p" * 107 + b"\x00\x00",  # a path of 108 bytes
        b"\x04\x02/\xff\x00\x00",  # not UTF-8
    ),
)

LISTEN_FLAGS = u8_enum("listen flags", ListenFlags, ListenFlags.V6ONLY)
OPTION_TARGET = u8_enum("option target", OptionTarget, OptionTarget.CONNECTION)
FAMILY_FILTER = u8_enum("family", FamilyFilter, FamilyFilter.ANY)
SOCK_TYPE = u8_enum("socket type", SockType, SockType.ANY)
GAI_ERROR = u8_enum("EAI code", GaiError, GaiError.BADFLAGS)

#: Counters by key (a message type, an errno): a u8 count, then (key u16, count u32) pairs.
COUNTS: FieldType[tuple[tuple[int, int], ...]] = FieldType(
    name="counts",
    construct=layouts.pairs(("key", layouts.U16), ("count", layouts.U32)),
    read=fastfields.read_counts,
    write=fastfields.pairs_writer("counters", fastfields.write_u16, fastfields.write_u32),
    edges=((), ((0, 0),), ((0xFFFF, 0xFFFFFFFF),) * 255),
    draw=examples.pairs(examples.uint(0xFFFF), examples.uint(0xFFFFFFFF), 6),
    sample=((2, 10), (4, 1000), (111, 3)),
)

#: A Resolve answer: a u8 count, then (socket type u8, endpoint) per address, at most 255.
ADDRESS_LIST: FieldType[tuple[tuple[SockType, Endpoint], ...]] = FieldType(
    name="addresses",
    construct=layouts.pairs(("socktype", SOCK_TYPE.construct), ("endpoint", ENDPOINT.construct)),
    read=fastfields.pairs_reader(SOCK_TYPE.read, ENDPOINT.read),
    write=fastfields.pairs_writer("addresses", SOCK_TYPE.write, ENDPOINT.write),
    edges=(
        (),
        ((SockType.STREAM, Endpoint("127.0.0.1", 80)),),
        ((SockType.DGRAM, Endpoint("fe80::1%2", 53)), (SockType.ANY, Endpoint("::", 0))),
    ),
    draw=examples.pairs(SOCK_TYPE.draw, ENDPOINT.draw, 6),
    sample=((SockType.STREAM, Endpoint("2001:db8::1", 443)), (SockType.STREAM, Endpoint("192.0.2.1", 443))),
    invalid=(b"\x01\x03", b"\x01\x01\x00", b"\x02\x01\x01\x7f\x00\x00\x01\x00\x00\x01\x05"),
)

__all__ = [
    "ADDRESS_LIST",
    "CAPABILITIES",
    "COUNTS",
    "DEFAULT_CAPABILITIES",
    "DEFAULT_MAX_PAYLOAD",
    "ENDPOINT",
    "END_STATUS",
    "ERRNO",
    "EVENT_REQUEST_ID",
    "FAMILY_FILTER",
    "GAI_ERROR",
    "HEADER",
    "HEADER_SIZE",
    "HEADER_STRUCT",
    "LENGTH_FIELD_MAX",
    "LISTEN_FLAGS",
    "OPTION_TARGET",
    "PROTOCOL_VERSION",
    "SOCK_TYPE",
    "SUPPORTED_CAPABILITIES",
    "TEXT",
    "U16",
    "U32",
    "U64",
    "UNIX_PATH_MAX",
    "VERSION",
    "AddressFamily",
    "Capability",
    "Endpoint",
    "FamilyFilter",
    "FieldType",
    "GaiError",
    "IPSockAddr",
    "ListenFlags",
    "OptionTarget",
    "SockAddr",
    "SockType",
    "declared",
    "ipv6_host",
    "is_unix_path",
    "valid_unix_path",
]

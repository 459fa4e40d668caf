"""The channel between the sandbox init and the monitor: one typed message per SEQPACKET frame.

Every frame is a header, ``kind`` (u8) and ``request_id`` (u32, little-endian;
0 where a message answers no request), then the fixed body of that kind.
Descriptors ride with their frame (SCM_RIGHTS), one at most:

========================  =========  ====================  ===
message                   direction  body                  fds
========================  =========  ====================  ===
:class:`Handoff`          init → m   role u8               1
:class:`Ready`            init → m   (none)                0
:class:`ConnectInside`    m → init   port u16, loopback u8 0
:class:`Connected`        init → m   (none)                1
:class:`ConnectFailed`    init → m   errno u16             0
:class:`Supervise`        cmd → m    (none)                1
========================  =========  ====================  ===

The init sends one :class:`Handoff` per socket it made, then :class:`Ready`,
before the command starts. Afterwards the monitor may ask it, at any time,
to connect to a port on the sandbox's loopback: the reply carries the
connected socket or the errno. The command's process, between fork and
exec (it holds the init's end of the channel until exec), sends one
:class:`Supervise` with the listener descriptor of its seccomp filter, for
the monitor's supervisor (:mod:`arca_monitor.seccomp_supervisor`).

Error handling: :func:`decode` raises :class:`MessageError` (a ValueError) for
any frame that is not exactly one valid message, and never anything else. The
monitor treats the channel as it treats a guest: the command runs as the same
user as the init and could take it over, so a bad frame is logged and dropped.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

HEADER = struct.Struct("<BI")
#: The largest frame of this layout, with room to spare (the receive buffer).
MAX_FRAME = 64


class MessageError(ValueError):
    """A frame that is not one valid message."""


class Kind(enum.IntEnum):
    HANDOFF = 1
    READY = 2
    CONNECT_INSIDE = 3
    CONNECTED = 4
    CONNECT_FAILED = 5
    SUPERVISE = 6


class Role(enum.IntEnum):
    """What a handed socket is for. Each is handed exactly once."""

    INTERCEPT4 = 1  # TCP listener on 127.0.0.1: every IPv4 connection out of the sandbox
    INTERCEPT6 = 2  # TCP listener on [::1]: every IPv6 connection out of the sandbox
    DNS_UDP4 = 3  # UDP socket on 127.0.0.1: DNS queries over UDP/IPv4
    DNS_TCP4 = 4  # TCP listener on 127.0.0.1: DNS queries over TCP/IPv4
    DNS_UDP6 = 5
    DNS_TCP6 = 6
    UDP_REFUSALS = 7  # NETLINK_NETFILTER socket bound to the NFLOG group of refused UDP
    DOORBELL = 8  # SEQPACKET socketpair end: the command's sessions arrive on it (launch.MONITOR_FD_ENV)


class Loopback(enum.IntEnum):
    """Which of the sandbox's loopback addresses a ConnectInside tries."""

    EITHER = 0  # 127.0.0.1, then ::1 if that is refused
    V4 = 4
    V6 = 6


@dataclass(frozen=True)
class Handoff:
    role: Role


@dataclass(frozen=True)
class Ready:
    pass


@dataclass(frozen=True)
class ConnectInside:
    request_id: int
    port: int
    loopback: Loopback = Loopback.EITHER


@dataclass(frozen=True)
class Connected:
    request_id: int


@dataclass(frozen=True)
class ConnectFailed:
    request_id: int
    errno: int


@dataclass(frozen=True)
class Supervise:
    """The command's seccomp listener descriptor travels with it."""


Message = Handoff | Ready | ConnectInside | Connected | ConnectFailed | Supervise

_BODIES = {
    Kind.HANDOFF: struct.Struct("<B"),
    Kind.READY: struct.Struct("<"),
    Kind.CONNECT_INSIDE: struct.Struct("<HB"),
    Kind.CONNECTED: struct.Struct("<"),
    Kind.CONNECT_FAILED: struct.Struct("<H"),
    Kind.SUPERVISE: struct.Struct("<"),
}


def fds_of(message: Message) -> int:
    """How many descriptors travel with ``message``."""
    return 1 if isinstance(message, Handoff | Connected | Supervise) else 0


def encode(message: Message) -> bytes:
    body: tuple[int, ...]
    match message:
        case Handoff(role):
            kind, request_id, body = Kind.HANDOFF, 0, (role,)
        case Ready():
            kind, request_id, body = Kind.READY, 0, ()
        case ConnectInside(request_id, port, loopback):
            kind, body = Kind.CONNECT_INSIDE, (port, loopback)
        case Connected(request_id):
            kind, body = Kind.CONNECTED, ()
        case ConnectFailed(request_id, code):
            kind, body = Kind.CONNECT_FAILED, (code,)
        case Supervise():
            kind, request_id, body = Kind.SUPERVISE, 0, ()
    return HEADER.pack(kind, request_id) + _BODIES[kind].pack(*body)


def decode(data: bytes) -> Message:
    if len(data) < HEADER.size:
        raise MessageError(f"a frame of {len(data)} bytes is shorter than the header")
    raw_kind, request_id = HEADER.unpack_from(data)
    try:
        kind = Kind(raw_kind)
    except ValueError:
        raise MessageError(f"unknown message kind {raw_kind}") from None
    layout = _BODIES[kind]
    if len(data) != HEADER.size + layout.size:
        raise MessageError(f"{kind.name}: {len(data)} bytes, expected {HEADER.size + layout.size}")
    body = layout.unpack_from(data, HEADER.size)
    if kind in (Kind.HANDOFF, Kind.READY, Kind.SUPERVISE) and request_id != 0:
        raise MessageError(f"{kind.name} answers no request, but names request {request_id}")
    try:
        match kind:
            case Kind.HANDOFF:
                return Handoff(Role(body[0]))
            case Kind.READY:
                return Ready()
            case Kind.CONNECT_INSIDE:
                if not 1 <= body[0] <= 0xFFFF:
                    raise MessageError("ConnectInside: port 0")
                return ConnectInside(request_id, body[0], Loopback(body[1]))
            case Kind.CONNECTED:
                return Connected(request_id)
            case Kind.CONNECT_FAILED:
                return ConnectFailed(request_id, body[0])
            case Kind.SUPERVISE:
                return Supervise()
    except ValueError as exc:  # an enum value out of range
        raise MessageError(f"{kind.name}: {exc}") from None

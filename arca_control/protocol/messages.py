"""Every control message, as a typed frozen dataclass that declares its own payload.

A message class names its type byte (``TYPE``) and lists its payload fields in
wire order; each field's ``metadata["wire"]`` is its construct type from
``wire.py``. ``codec.py`` builds the payload Structs from these declarations,
so the layout is written once, here, and PROTOCOL.md's tables mirror it.

Three kinds of message, told apart by the type byte's range:

* ``ControlRequest`` (0x01-0x7F), guest to monitor;
* ``ControlReply`` (0x80-0xBF), monitor to guest, carrying the id of the
  request it answers;
* ``ControlEvent`` (0xC0-0xFF), monitor to guest, unsolicited, request id 0.

A request names the replies that answer it (``class Listen(ControlRequest[ListenOk])``
with ``FAILURE = ListenErr``), so the replies are defined first; ``REPLIES``,
which the cores check every reply against, is built from those declarations.

Messages are plain data: the file descriptors that travel beside a
``ConnectionReady`` reply are not part of them (see ``channel.py``).
"""

from __future__ import annotations

import dataclasses
import enum
import socket
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Never, TypeGuard, TypeVar, get_args, get_origin

from . import wire
from .errors import error_from_errno
from .wire import Capability, Endpoint, FamilyFilter, GaiError, ListenFlags, OptionTarget, SockType


class MessageType(enum.IntEnum):
    HELLO = 0x01
    LISTEN = 0x02
    ACCEPT = 0x03
    CONNECT = 0x04
    CLOSE_LISTENER = 0x05
    CANCEL = 0x06
    ABORT = 0x07
    SET_OPTION = 0x08
    GET_OPTION = 0x09
    UDP_BIND = 0x0A
    UDP_CLOSE = 0x0B
    RESOLVE = 0x0C
    STATS = 0x0D

    HELLO_OK = 0x81
    LISTEN_OK = 0x82
    LISTEN_ERR = 0x83
    ACCEPT_OK = 0x84
    ACCEPT_ERR = 0x85
    CONNECT_OK = 0x86
    CONNECT_ERR = 0x87
    CLOSE_LISTENER_OK = 0x88
    ABORT_OK = 0x89
    OPTION_VALUE = 0x8A
    UDP_BIND_OK = 0x8B
    UDP_CLOSE_OK = 0x8C
    RESOLVE_OK = 0x8D
    RESOLVE_ERR = 0x8E
    STATS_OK = 0x8F
    CONNECT_SOCKET_OK = 0x90
    ACCEPT_SOCKET_OK = 0x91
    ERROR = 0xBF

    CONNECTION_END = 0xC1


def fit_text(text: str) -> str:
    """``text`` cut, at a character boundary, to fit a 255-byte text field."""
    return text.encode("utf-8")[:255].decode("utf-8", "ignore")


def field(wire_type: Any, **kwargs: Any) -> Any:
    """A payload field and the construct type that lays it out."""
    return dataclasses.field(metadata={"wire": wire_type}, **kwargs)


#: Every message class, by its type byte. Filled in by ``@message``.
REGISTRY: dict[MessageType, type[Message]] = {}


M = TypeVar("M", bound="type[Message]")


def message(cls: M) -> M:
    """Register a message class under its ``TYPE``."""
    if cls.TYPE in REGISTRY:
        raise ValueError(f"{cls.__name__} and {REGISTRY[cls.TYPE].__name__} have one type byte")
    REGISTRY[cls.TYPE] = cls
    return cls


def payload_fields(cls: type[Message]) -> list[dataclasses.Field[object]]:
    """The fields of ``cls`` that go into its payload, in wire order."""
    return [f for f in dataclasses.fields(cls) if "wire" in f.metadata]


@dataclass(frozen=True, kw_only=True)
class Message:
    TYPE: ClassVar[MessageType]
    #: How many file descriptors travel with this message (SCM_RIGHTS).
    FDS: ClassVar[int] = 0
    request_id: int


@dataclass(frozen=True, kw_only=True)
class ControlReply(Message):
    """Monitor to guest, answering the request with the same id."""


@dataclass(frozen=True, kw_only=True)
class ControlEvent(Message):
    """Monitor to guest, not asked for; its request id is always 0."""

    request_id: int = wire.EVENT_REQUEST_ID


# --- replies ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ErrorReply(ControlReply):
    """A failed request: an errno (Linux numbering) and a short reason."""

    errno: int = field(wire.ERRNO)
    message: str = field(wire.TEXT, default="")

    def exception(self) -> OSError:
        """The exception a guest raises for this reply."""
        return error_from_errno(self.errno, self.message)

    @classmethod
    def make(cls, request_id: int, code: int, message: str) -> ErrorReply:
        """An error reply whose message is cut to fit its 255-byte field."""
        return cls(request_id=request_id, errno=code, message=fit_text(message))


@dataclass(frozen=True, kw_only=True)
class ConnectionReady(ControlReply):
    """A new connection. The rx pipe's read end and the tx socket's write end travel beside the frame, in that order.

    In a session granted SOCKET_CHANNEL the ``*SocketOk`` subclasses come
    instead, with one AF_UNIX stream socket beside the frame.
    """

    FDS = 2
    connection_id: int = field(wire.U32)
    local: Endpoint = field(wire.ENDPOINT)
    peer: Endpoint = field(wire.ENDPOINT)


@message
@dataclass(frozen=True, kw_only=True)
class HelloOk(ControlReply):
    TYPE = MessageType.HELLO_OK
    version: int = field(wire.VERSION, default=wire.PROTOCOL_VERSION)
    capabilities: Capability = field(wire.CAPABILITIES, default=wire.SUPPORTED_CAPABILITIES)
    max_payload: int = field(wire.U16, default=wire.DEFAULT_MAX_PAYLOAD)


@message
@dataclass(frozen=True, kw_only=True)
class ListenOk(ControlReply):
    """``local`` is the address really bound, with the kernel's port for port 0."""

    TYPE = MessageType.LISTEN_OK
    listener_id: int = field(wire.U32)
    local: Endpoint = field(wire.ENDPOINT)


@message
@dataclass(frozen=True, kw_only=True)
class ListenErr(ErrorReply):
    TYPE = MessageType.LISTEN_ERR


@message
@dataclass(frozen=True, kw_only=True)
class AcceptOk(ConnectionReady):
    """``peer`` is the client's real source address."""

    TYPE = MessageType.ACCEPT_OK


@message
@dataclass(frozen=True, kw_only=True)
class AcceptErr(ErrorReply):
    TYPE = MessageType.ACCEPT_ERR


@message
@dataclass(frozen=True, kw_only=True)
class ConnectOk(ConnectionReady):
    TYPE = MessageType.CONNECT_OK


@message
@dataclass(frozen=True, kw_only=True)
class AcceptSocketOk(AcceptOk):
    """AcceptOk on the socket channel: one AF_UNIX stream socket beside the frame."""

    TYPE = MessageType.ACCEPT_SOCKET_OK
    FDS = 1


@message
@dataclass(frozen=True, kw_only=True)
class ConnectSocketOk(ConnectOk):
    """ConnectOk on the socket channel: one AF_UNIX stream socket beside the frame."""

    TYPE = MessageType.CONNECT_SOCKET_OK
    FDS = 1


@message
@dataclass(frozen=True, kw_only=True)
class ConnectErr(ErrorReply):
    TYPE = MessageType.CONNECT_ERR


@message
@dataclass(frozen=True, kw_only=True)
class CloseListenerOk(ControlReply):
    TYPE = MessageType.CLOSE_LISTENER_OK
    listener_id: int = field(wire.U32)


@message
@dataclass(frozen=True, kw_only=True)
class AbortOk(ControlReply):
    TYPE = MessageType.ABORT_OK
    connection_id: int = field(wire.U32)


@message
@dataclass(frozen=True, kw_only=True)
class OptionValue(ControlReply):
    """The option's value as the kernel reports it (after a set: read back)."""

    TYPE = MessageType.OPTION_VALUE
    value: int = field(wire.U32)


@message
@dataclass(frozen=True, kw_only=True)
class UdpBindOk(ControlReply):
    """The UDP socket, the address it really has, and its datagram channel (one fd) beside the frame."""

    TYPE = MessageType.UDP_BIND_OK
    FDS = 1
    socket_id: int = field(wire.U32)
    local: Endpoint = field(wire.ENDPOINT)


@message
@dataclass(frozen=True, kw_only=True)
class UdpCloseOk(ControlReply):
    TYPE = MessageType.UDP_CLOSE_OK
    socket_id: int = field(wire.U32)


@message
@dataclass(frozen=True, kw_only=True)
class ResolveOk(ControlReply):
    """The addresses, as (socket type, endpoint) pairs, in the order to try them."""

    TYPE = MessageType.RESOLVE_OK
    addresses: tuple[tuple[SockType, Endpoint], ...] = field(wire.ADDRESS_LIST, default=())


@message
@dataclass(frozen=True, kw_only=True)
class ResolveErr(ControlReply):
    """A failed lookup, as getaddrinfo's EAI code: the guest raises ``socket.gaierror``."""

    TYPE = MessageType.RESOLVE_ERR
    eai: GaiError = field(wire.GAI_ERROR)
    message: str = field(wire.TEXT, default="")

    def exception(self) -> OSError:
        return socket.gaierror(-int(self.eai), self.message or f"EAI {self.eai.name}")


@message
@dataclass(frozen=True, kw_only=True)
class StatsOk(ControlReply):
    """What the session holds now and has done so far."""

    TYPE = MessageType.STATS_OK
    listeners: int = field(wire.U32, default=0)
    connections: int = field(wire.U32, default=0)
    datagram_sockets: int = field(wire.U32, default=0)
    bytes_up: int = field(wire.U64, default=0)
    bytes_down: int = field(wire.U64, default=0)
    denials: int = field(wire.U32, default=0)
    #: (message type, count) of every request received.
    requests: tuple[tuple[int, int], ...] = field(wire.COUNTS, default=())
    #: (errno, count) of every error reply sent.
    errors: tuple[tuple[int, int], ...] = field(wire.COUNTS, default=())


@message
@dataclass(frozen=True, kw_only=True)
class Error(ErrorReply):
    """A request that failed before it could be handled (a bad frame, a bad Hello)."""

    TYPE = MessageType.ERROR


#: The reply a request succeeds with: ``class Listen(ControlRequest[ListenOk])``.
Ok = TypeVar("Ok", bound=ControlReply, covariant=True)


@dataclass(frozen=True, kw_only=True)
class ControlRequest(Message, Generic[Ok]):
    """Guest to monitor. Every request but Cancel gets exactly one reply.

    A request class names its success reply as its type argument, and its
    failure reply as ``FAILURE`` (``Error`` unless it has one of its own);
    ``Error`` may answer any request. ``REPLIES`` is built from these two
    declarations, and the type argument is what a typed caller gets back
    (``ArcaSession.request(Listen(...))`` is a ``ListenOk``). Cancel, which
    is never answered, declares ``Never``.

    ``request_id`` is 0 until ``ClientCore.send`` numbers the request.
    """

    #: The success reply (its subclasses too: AcceptSocketOk for AcceptOk); None for Cancel.
    SUCCESS: ClassVar[type[ControlReply] | None] = None
    #: The failure reply this request gets besides ``Error``.
    FAILURE: ClassVar[type[ControlReply]] = Error
    request_id: int = 0

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.SUCCESS = _declared_success(cls)

    def is_success(self, reply: ControlReply) -> TypeGuard[Ok]:
        """Whether ``reply`` is this request's success reply; if so, it is typed as one."""
        return self.SUCCESS is not None and isinstance(reply, self.SUCCESS)


#: Any request at all, whatever its reply (the type argument is covariant, and Cancel's is Never).
AnyRequest = ControlRequest[ControlReply]


def _declared_success(cls: type) -> type[ControlReply] | None:
    """The type argument of ``ControlRequest[...]`` in the bases ``cls`` was written with."""
    # The bases as written, with their type arguments (types.get_original_bases from 3.12 on).
    for base in vars(cls).get("__orig_bases__", ()):
        if get_origin(base) is ControlRequest:
            (success,) = get_args(base)
            if success is Never:
                return None
            if isinstance(success, type) and issubclass(success, ControlReply):
                return success
            raise TypeError(f"{cls.__name__}: ControlRequest[{success!r}] does not name a reply class")
    raise TypeError(f"{cls.__name__} must name its success reply: class {cls.__name__}(ControlRequest[...])")


# --- requests -----------------------------------------------------------------


@message
@dataclass(frozen=True, kw_only=True)
class Hello(ControlRequest[HelloOk]):
    """The first request of every session."""

    TYPE = MessageType.HELLO
    version: int = field(wire.VERSION, default=wire.PROTOCOL_VERSION)
    capabilities: Capability = field(wire.CAPABILITIES, default=wire.DEFAULT_CAPABILITIES)


@message
@dataclass(frozen=True, kw_only=True)
class Listen(ControlRequest[ListenOk]):
    """Bind and listen on ``endpoint``; port 0 lets the kernel choose."""

    TYPE = MessageType.LISTEN
    FAILURE = ListenErr
    endpoint: Endpoint = field(wire.ENDPOINT)
    backlog: int = field(wire.U16, default=128)
    flags: ListenFlags = field(wire.LISTEN_FLAGS, default=ListenFlags(0))


@message
@dataclass(frozen=True, kw_only=True)
class Accept(ControlRequest[AcceptOk]):
    """Wait for the next connection on a listener."""

    TYPE = MessageType.ACCEPT
    FAILURE = AcceptErr
    listener_id: int = field(wire.U32)


@message
@dataclass(frozen=True, kw_only=True)
class Connect(ControlRequest[ConnectOk]):
    """Open a TCP connection. ``timeout_ms`` 0 means the monitor's default."""

    TYPE = MessageType.CONNECT
    FAILURE = ConnectErr
    endpoint: Endpoint = field(wire.ENDPOINT)
    timeout_ms: int = field(wire.U32, default=0)


@message
@dataclass(frozen=True, kw_only=True)
class CloseListener(ControlRequest[CloseListenerOk]):
    """Close a listener; its pending accepts fail."""

    TYPE = MessageType.CLOSE_LISTENER
    listener_id: int = field(wire.U32)


@message
@dataclass(frozen=True, kw_only=True)
class Cancel(ControlRequest[Never]):
    """Give up on a pending Accept or Connect. Has no reply of its own."""

    TYPE = MessageType.CANCEL
    target: int = field(wire.U32)


@message
@dataclass(frozen=True, kw_only=True)
class Abort(ControlRequest[AbortOk]):
    """Close a connection with a reset (SO_LINGER 0), not a FIN."""

    TYPE = MessageType.ABORT
    connection_id: int = field(wire.U32)


@message
@dataclass(frozen=True, kw_only=True)
class SetOption(ControlRequest[OptionValue]):
    """setsockopt on a connection's or listener's socket; answered with the value read back."""

    TYPE = MessageType.SET_OPTION
    target: OptionTarget = field(wire.OPTION_TARGET)
    target_id: int = field(wire.U32)
    level: int = field(wire.U16)
    name: int = field(wire.U16)
    value: int = field(wire.U32)


@message
@dataclass(frozen=True, kw_only=True)
class GetOption(ControlRequest[OptionValue]):
    """getsockopt on a connection's or listener's socket."""

    TYPE = MessageType.GET_OPTION
    target: OptionTarget = field(wire.OPTION_TARGET)
    target_id: int = field(wire.U32)
    level: int = field(wire.U16)
    name: int = field(wire.U16)


@message
@dataclass(frozen=True, kw_only=True)
class UdpBind(ControlRequest[UdpBindOk]):
    """A UDP socket bound to ``endpoint`` (port 0: the kernel chooses)."""

    TYPE = MessageType.UDP_BIND
    endpoint: Endpoint = field(wire.ENDPOINT)
    flags: ListenFlags = field(wire.LISTEN_FLAGS, default=ListenFlags(0))


@message
@dataclass(frozen=True, kw_only=True)
class UdpClose(ControlRequest[UdpCloseOk]):
    """Close a UDP socket (closing the guest's channel end does it too)."""

    TYPE = MessageType.UDP_CLOSE
    socket_id: int = field(wire.U32)


@message
@dataclass(frozen=True, kw_only=True)
class Resolve(ControlRequest[ResolveOk]):
    """getaddrinfo in the monitor: ``name``'s addresses, with ``port`` (0: none) in each."""

    TYPE = MessageType.RESOLVE
    FAILURE = ResolveErr
    name: str = field(wire.TEXT)
    port: int = field(wire.U16, default=0)
    family: FamilyFilter = field(wire.FAMILY_FILTER, default=FamilyFilter.ANY)
    socktype: SockType = field(wire.SOCK_TYPE, default=SockType.ANY)


@message
@dataclass(frozen=True, kw_only=True)
class Stats(ControlRequest[StatsOk]):
    """This session's counters."""

    TYPE = MessageType.STATS


# --- events -------------------------------------------------------------------


@message
@dataclass(frozen=True, kw_only=True)
class ConnectionEnd(ControlEvent):
    """How a connection's receive direction ended: 0 for a clean EOF, else an errno.

    Sent before the monitor closes the rx pipe, because a pipe's EOF cannot
    tell a peer's FIN from a reset.
    """

    TYPE = MessageType.CONNECTION_END
    connection_id: int = field(wire.U32)
    status: int = field(wire.END_STATUS, default=0)


def _sort_registry() -> None:
    """The registry in type-byte order (the classes are defined replies first, for the requests to name them)."""
    ordered = sorted(REGISTRY.items())
    REGISTRY.clear()
    REGISTRY.update(ordered)


_sort_registry()


def _replies(request: type[ControlRequest[ControlReply]]) -> frozenset[type[ControlReply]]:
    """What may answer ``request``: its success reply and that reply's subclasses, its failure, and Error."""
    success = request.SUCCESS
    if success is None:
        return frozenset()
    answers = {cls for cls in REGISTRY.values() if issubclass(cls, ControlReply) and issubclass(cls, success)}
    return frozenset(answers | {request.FAILURE, Error})


#: Every request class, in type-byte order.
REQUESTS: tuple[type[ControlRequest[ControlReply]], ...] = tuple(
    cls for cls in REGISTRY.values() if issubclass(cls, ControlRequest)
)

#: Which replies may answer which request, as data, built from each request's declarations.
#: Cancel is never answered.
REPLIES: dict[type[ControlRequest[ControlReply]], frozenset[type[ControlReply]]] = {
    request: _replies(request) for request in REQUESTS
}

#: Replies that report a failure: the guest raises their ``exception()``.
FAILURES = (ErrorReply, ResolveErr)



def _error_replies() -> dict[type[ControlRequest[ControlReply]], type[ErrorReply]]:
    found: dict[type[ControlRequest[ControlReply]], type[ErrorReply]] = {}
    for request in REQUESTS:
        failure = request.FAILURE
        if issubclass(failure, ErrorReply) and failure is not Error:
            found[request] = failure
    return found


#: The error reply type each request kind gets, where it has one of its own.
ERROR_REPLY = _error_replies()


def error_reply_for(request: ControlRequest[ControlReply] | None, request_id: int, code: int, text: str) -> ErrorReply:
    """The error reply to a request (or to an unreadable one): ListenErr, ..., or Error."""
    cls = ERROR_REPLY.get(type(request), Error) if request is not None else Error
    return cls.make(request_id, code, text)


__all__ = [name for name, value in globals().items() if isinstance(value, type) and issubclass(value, Message)]
__all__ += [
    "ERROR_REPLY",
    "FAILURES",
    "REGISTRY",
    "REPLIES",
    "REQUESTS",
    "Capability",
    "Endpoint",
    "FamilyFilter",
    "GaiError",
    "ListenFlags",
    "MessageType",
    "OptionTarget",
    "SockType",
    "error_reply_for",
    "fit_text",
]

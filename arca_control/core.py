"""The protocol's rules, with no I/O: request ids, the handshake, and reply matching.

Both ends of the control channel keep their protocol state here, as plain
objects fed with frames and asked for frames, so any I/O library can drive
them and tests need no sockets (the h11 design).

The rules, which the trio session and the monitor rely on:

* The guest's first request is Hello. The monitor answers it with HelloOk, or
  with Error and closes the session (wrong version, or anything else first).
* The guest allocates request ids: 1, 2, ... wrapping before 2**32, never 0
  and never one still pending. Id 0 marks the monitor's unsolicited events.
* Every request but Cancel gets exactly one reply, carrying its id, and only a
  reply type listed for it in ``messages.REPLIES``. Replies come in any order.
  Cancel never gets a reply: the monitor only ever acts on it or ignores it.
* HelloOk grants capabilities (the Hello's, intersected with the monitor's);
  a request needing one not granted is refused with EOPNOTSUPP.
* A reply carrying a connection (AcceptOk, ConnectOk) comes with exactly two
  file descriptors, their socket-channel forms and UdpBindOk with one, every
  other frame with none (``Message.FDS``).
* Cancel(target) withdraws a pending Accept or Connect. The target still gets
  exactly one reply: ECANCELED if the monitor withdrew it, or the reply it had
  already sent. Such a late reply is handed back as :class:`LateReply`, so a
  late connection can be kept (an accepted one goes to its listener's backlog).
"""

from __future__ import annotations

import enum
import errno
from dataclasses import dataclass

from . import codec, errors
from .messages import (
    REPLIES,
    Accept,
    Cancel,
    Connect,
    ControlEvent,
    ControlReply,
    ControlRequest,
    Error,
    ErrorReply,
    Hello,
    HelloOk,
    Message,
    error_reply_for,
)
from .wire import DEFAULT_MAX_PAYLOAD, LENGTH_FIELD_MAX, PROTOCOL_VERSION, SUPPORTED_CAPABILITIES, Capability


class SessionState(enum.Enum):
    HANDSHAKE = "handshake"  # Hello not yet answered
    READY = "ready"
    CLOSED = "closed"


#: Requests a guest may withdraw with Cancel.
CANCELLABLE = (Accept, Connect)


@dataclass(frozen=True)
class Reply:
    """The answer to a request that is still being waited for."""

    request: ControlRequest
    reply: ControlReply
    fds: list[int]


@dataclass(frozen=True)
class LateReply:
    """The answer to a request the guest has cancelled. Its fds are still owned by the receiver."""

    request: ControlRequest
    reply: ControlReply
    fds: list[int]


def _check_fds(msg: Message, fds: list[int]) -> None:
    if len(fds) != msg.FDS:
        raise errors.UnexpectedMessage(
            f"{type(msg).__name__} came with {len(fds)} file descriptors, expected {msg.FDS}",
            request_id=msg.request_id,
        )


class ClientCore:
    """The guest's side of one control channel."""

    def __init__(self) -> None:
        self.state = SessionState.HANDSHAKE
        #: Largest payload the monitor accepts; HelloOk announces it.
        self.send_limit = DEFAULT_MAX_PAYLOAD
        # The monitor is the guest's trusted side; its frames are limited only by the u16 length.
        self.receive_limit = LENGTH_FIELD_MAX
        self._next_id = 1
        self._pending: dict[int, ControlRequest] = {}
        self._abandoned: dict[int, ControlRequest] = {}

    def send(self, request_type: type[ControlRequest], **fields: object) -> tuple[ControlRequest, bytes]:
        """A new request with a fresh id, and its frame.

        Raises ``LocalProtocolError`` (and registers nothing) if the request is
        not allowed now or does not fit its fields.
        """
        if self.state is SessionState.CLOSED:
            raise errors.LocalProtocolError("the session is closed")
        if (self.state is SessionState.HANDSHAKE) != (request_type is Hello):
            raise errors.LocalProtocolError(f"{request_type.__name__} is not allowed in state {self.state.value}")
        request = request_type(request_id=self._allocate_id(), **fields)
        frame = codec.encode(request, max_payload=self.send_limit)
        if REPLIES[request_type]:
            self._pending[request.request_id] = request
        return request, frame

    def forget(self, request_id: int) -> None:
        """Drop a request whose frame was never sent: no reply will come for it."""
        self._pending.pop(request_id, None)

    def cancel(self, request_id: int) -> Cancel | None:
        """Give up waiting for ``request_id``: the Cancel to send, if it needs one."""
        request = self._pending.pop(request_id, None)
        if request is None:
            return None
        self._abandoned[request_id] = request
        if isinstance(request, CANCELLABLE) and self.state is SessionState.READY:
            return Cancel(request_id=self._allocate_id(), target=request_id)
        return None

    def receive(self, data: bytes, fds: list[int]) -> Reply | LateReply | ControlEvent:
        """Classify one frame from the monitor; raises ``RemoteProtocolError`` if it breaks a rule."""
        msg = codec.decode(data, max_payload=self.receive_limit)
        _check_fds(msg, fds)
        if isinstance(msg, ControlEvent):
            return msg
        if not isinstance(msg, ControlReply):
            raise errors.UnexpectedMessage(f"the monitor sent a request: {msg!r}", request_id=msg.request_id)
        rid = msg.request_id
        request = self._pending.pop(rid, None)
        late = request is None
        if late:
            request = self._abandoned.pop(rid, None)
        if request is None:
            raise errors.UnexpectedMessage(f"reply to unknown request id {rid}: {msg!r}", request_id=rid)
        if type(msg) not in REPLIES[type(request)]:
            raise errors.UnexpectedMessage(f"{type(msg).__name__} cannot answer {type(request).__name__}", request_id=rid)
        if isinstance(request, Hello):
            self._finish_handshake(msg)
        return LateReply(request, msg, fds) if late else Reply(request, msg, fds)

    def close(self) -> list[ControlRequest]:
        """Mark the session closed; the requests still waiting, which will never be answered."""
        self.state = SessionState.CLOSED
        waiting = list(self._pending.values())
        self._pending.clear()
        self._abandoned.clear()
        return waiting

    def _finish_handshake(self, msg: ControlReply) -> None:
        if isinstance(msg, HelloOk):
            self.state = SessionState.READY
            self.send_limit = msg.max_payload
        else:
            self.state = SessionState.CLOSED

    def _allocate_id(self) -> int:
        while True:
            rid = self._next_id
            self._next_id = rid % 0xFFFFFFFF + 1  # 1 .. 2**32-1, never 0
            if rid not in self._pending and rid not in self._abandoned:
                return rid


@dataclass(frozen=True)
class Incoming:
    """A valid request for the monitor to carry out."""

    request: ControlRequest


@dataclass(frozen=True)
class Reject:
    """A frame the monitor refuses: the reply to send (if the id was readable), and whether to close."""

    reply: Error | None
    close: bool
    reason: str


@dataclass
class ServerCore:
    """The monitor's side of one control channel.

    After ``max_errors`` rejected frames the session is closed: a guest that
    only sends garbage must not keep the monitor busy answering it.
    """

    max_payload: int = DEFAULT_MAX_PAYLOAD
    max_errors: int = 16
    state: SessionState = SessionState.HANDSHAKE
    errors_seen: int = 0
    #: What HelloOk granted: requests needing anything else are refused.
    capabilities: Capability = Capability(0)

    def receive(self, data: bytes, fds_count: int = 0, *, truncated: bool = False) -> Incoming | Reject:
        """Classify one frame from the guest (``truncated``: the transport cut it short)."""
        try:
            if truncated:
                header = codec.peek_header(data)
                raise errors.OversizedFrame(
                    f"frame larger than the {self.max_payload}-byte payload limit",
                    request_id=header[2] if header else None,
                )
            msg = codec.decode(data, max_payload=self.max_payload)
            if fds_count:
                raise errors.UnexpectedMessage("requests carry no file descriptors", request_id=msg.request_id)
            if not isinstance(msg, ControlRequest):
                raise errors.UnexpectedMessage(f"{type(msg).__name__} is not a request", request_id=msg.request_id)
            return self._check_state(msg)
        except errors.ProtocolError as exc:
            return self._reject(exc)

    def _check_state(self, msg: ControlRequest) -> Incoming:
        if self.state is SessionState.HANDSHAKE and not isinstance(msg, Hello):
            raise errors.UnexpectedMessage(f"{type(msg).__name__} before Hello", request_id=msg.request_id)
        if self.state is SessionState.READY and isinstance(msg, Hello):
            raise errors.UnexpectedMessage("a second Hello", request_id=msg.request_id)
        if isinstance(msg, Hello):
            self.state = SessionState.READY
        return Incoming(msg)

    def _reject(self, exc: errors.ProtocolError) -> Reject:
        self.errors_seen += 1
        close = self.state is SessionState.HANDSHAKE or self.errors_seen >= self.max_errors
        if exc.request_id in (None, 0):
            # Without a readable request id there is no one to answer, and a
            # stream cut at an unknown place cannot be trusted further.
            close = True
            reply = None
        else:
            reply = Error.make(exc.request_id, exc.errno, str(exc))
        if close:
            self.state = SessionState.CLOSED
        return Reject(reply, close, str(exc))

    def hello_reply(self, hello: Hello) -> HelloOk:
        self.capabilities = hello.capabilities & SUPPORTED_CAPABILITIES
        return HelloOk(
            request_id=hello.request_id,
            version=PROTOCOL_VERSION,
            capabilities=self.capabilities,
            max_payload=self.max_payload,
        )


def cancelled_reply(request: ControlRequest) -> ErrorReply:
    """What a withdrawn request is answered with."""
    return error_reply_for(request, request.request_id, errno.ECANCELED, "cancelled by the guest")

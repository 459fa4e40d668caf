"""The guest's side of one control channel, with no I/O: ids, the handshake, reply matching, Cancel.

The rules it keeps are listed in ``core``.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import codec, errors
from .core import CANCELLABLE, SessionState, check_fds
from .messages import REPLIES, Cancel, ControlEvent, ControlReply, ControlRequest, Hello, HelloOk
from .wire import DEFAULT_MAX_PAYLOAD, LENGTH_FIELD_MAX


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
        check_fds(msg, fds)
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



"""The guest's side of one control channel, with no I/O: ids, the handshake, reply matching, Cancel,
and what to do with a reply that comes after its caller gave up.

The rules it keeps are listed in ``core``. What it decides, it returns as data
(:class:`Reply`, an event, or one of the late-reply actions), for the session
to carry out.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TypeVar

from . import codec, errors
from .core import CANCELLABLE, SessionState, check_fds
from .messages import (
    REPLIES,
    Accept,
    AcceptOk,
    Cancel,
    ConnectionReady,
    ControlEvent,
    ControlReply,
    ControlRequest,
    Hello,
    HelloOk,
    ListenOk,
)
from .wire import DEFAULT_MAX_PAYLOAD, LENGTH_FIELD_MAX

Request = TypeVar("Request", bound=ControlRequest[ControlReply])


@dataclass(frozen=True)
class Reply:
    """The answer to a request that is still being waited for."""

    request: ControlRequest[ControlReply]
    reply: ControlReply
    fds: list[int]


# --- what to do with a late reply -----------------------------------------------------------------


@dataclass(frozen=True)
class KeepAccepted:
    """A connection accepted for an Accept that was given up: it belongs in its listener's
    backlog, for the next accept. If that listener is closed meanwhile, close ``fds``."""

    listener_id: int
    reply: AcceptOk
    fds: list[int]


@dataclass(frozen=True)
class CloseOrphanListener:
    """A listener opened for a Listen that was given up: close it in the monitor, or its port stays bound."""

    listener_id: int


@dataclass(frozen=True)
class Discard:
    """A reply nobody will use: close ``fds``, and forget the connection it opened, if it did
    (the monitor sees the descriptors close and ends the connection or UDP socket)."""

    fds: list[int]
    connection_id: int | None = None


#: What a late reply asks of the session.
LateAction = KeepAccepted | CloseOrphanListener | Discard


def late_action(request: ControlRequest[ControlReply], reply: ControlReply, fds: list[int]) -> LateAction:
    """What to do with ``reply`` to ``request`` when nobody waits for it any more."""
    if isinstance(reply, AcceptOk) and isinstance(request, Accept):
        return KeepAccepted(request.listener_id, reply, fds)
    if isinstance(reply, ListenOk):
        return CloseOrphanListener(reply.listener_id)
    return Discard(fds, reply.connection_id if isinstance(reply, ConnectionReady) else None)


class ClientCore:
    """The guest's side of one control channel."""

    def __init__(self) -> None:
        self.state = SessionState.HANDSHAKE
        #: Largest payload the monitor accepts; HelloOk announces it.
        self.send_limit = DEFAULT_MAX_PAYLOAD
        # The monitor is the guest's trusted side; its frames are limited only by the u16 length.
        self.receive_limit = LENGTH_FIELD_MAX
        self._next_id = 1
        self._pending: dict[int, ControlRequest[ControlReply]] = {}
        self._abandoned: dict[int, ControlRequest[ControlReply]] = {}

    @property
    def pending(self) -> int:
        """How many requests wait for their reply."""
        return len(self._pending)

    @property
    def abandoned(self) -> int:
        """How many requests were given up and still have their (late) reply to come."""
        return len(self._abandoned)

    def send(self, request: Request) -> tuple[Request, bytes]:
        """``request`` numbered with a fresh id (whatever id it had), and its frame.

        Raises ``LocalProtocolError`` (and registers nothing) if the request is
        not allowed now or does not fit its fields.
        """
        if self.state is SessionState.CLOSED:
            raise errors.LocalProtocolError("the session is closed")
        if (self.state is SessionState.HANDSHAKE) != isinstance(request, Hello):
            raise errors.LocalProtocolError(f"{type(request).__name__} is not allowed in state {self.state.value}")
        numbered = dataclasses.replace(request, request_id=self._allocate_id())
        frame = codec.encode(numbered, max_payload=self.send_limit)
        if REPLIES[type(numbered)]:
            self._pending[numbered.request_id] = numbered
        return numbered, frame

    def forget(self, request_id: int) -> None:
        """Drop a request whose frame was never sent: no reply will come for it."""
        self._pending.pop(request_id, None)

    def cancel(self, request_id: int) -> Cancel | None:
        """Give up waiting for ``request_id``: the Cancel to send, if it needs one.

        Its reply still comes, and ``receive`` then returns what to do with it.
        """
        request = self._pending.pop(request_id, None)
        if request is None:
            return None
        self._abandoned[request_id] = request
        if isinstance(request, CANCELLABLE) and self.state is SessionState.READY:
            return Cancel(request_id=self._allocate_id(), target=request_id)
        return None

    def unclaimed(self, reply: Reply) -> LateAction:
        """A reply that came in time, but whose caller gave up before taking it: it is late all the same."""
        return late_action(reply.request, reply.reply, reply.fds)

    def receive(self, data: bytes, fds: list[int]) -> Reply | LateAction | ControlEvent:
        """Classify one frame from the monitor; raises ``RemoteProtocolError`` if it breaks a rule.

        A reply to a request given up (``cancel``) comes back as the action it calls for;
        its fds are then still the receiver's, to keep or close as the action says.
        """
        msg = codec.decode(data, max_payload=self.receive_limit)
        check_fds(msg, fds)
        if isinstance(msg, ControlEvent):
            return msg
        if not isinstance(msg, ControlReply):
            raise errors.UnexpectedMessage(f"the monitor sent a request: {msg!r}", request_id=msg.request_id)
        rid = msg.request_id
        request = self._pending.pop(rid, None)
        late = request is None
        if request is None:
            request = self._abandoned.pop(rid, None)
        if request is None:
            raise errors.UnexpectedMessage(f"reply to unknown request id {rid}: {msg!r}", request_id=rid)
        if type(msg) not in REPLIES[type(request)]:
            raise errors.UnexpectedMessage(f"{type(msg).__name__} cannot answer {type(request).__name__}", request_id=rid)
        if isinstance(request, Hello):
            self._finish_handshake(msg)
        return late_action(request, msg, fds) if late else Reply(request, msg, fds)

    def close(self) -> list[ControlRequest[ControlReply]]:
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

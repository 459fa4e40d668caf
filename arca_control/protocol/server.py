"""The monitor's side of one control channel, with no I/O: the protocol's rules and its counters.

:class:`ServerCore` is to the monitor what ``ClientCore`` is to the guest (the
h11 design): a plain object fed with the frames the guest sends and asked for
the frames to send back, so any I/O library can drive it, and tests and the
live fuzzer can check a monitor against it without a monitor. It owns:

* the frame checks, the handshake and the "at most ``max_errors`` bad frames" rule;
* capability gating and pending request ids: it refuses a request needing
  what HelloOk did not grant (EOPNOTSUPP) or reusing the id of a request still
  pending (EBUSY) itself, with a reply of its own making;
* Cancel: it resolves a Cancel to the pending Accept or Connect it withdraws,
  or to nothing, and the target is still owed exactly one reply;
* reply checks: every frame the monitor sends goes through :meth:`ServerCore.send`,
  which checks it answers something owed, with a reply type ``REPLIES`` allows,
  with the right number of descriptors, and raises ``LocalProtocolError`` otherwise;
* the protocol's counters for Stats, counted where they happen: ``requests``
  (each request frame that passed the frame checks, by type) in ``receive``,
  ``errors`` (each error reply sent, by errno) in ``send``.

The rules it keeps are listed in ``core``. What ``receive`` returns is an
event, as data:

* :class:`Incoming`: a request to carry out; one reply is owed for it.
* :class:`Refuse`: a request the core has answered itself; send the reply.
* :class:`Withdraw`: a Cancel; withdraw ``target`` (answering it ECANCELED) if
  it is still waiting, else let the reply already under way stand.
* :class:`Reject`: a bad frame; send the reply (if the id was readable) and
  close the session if told to.

A bystander (the live fuzzer) drives the same object from both sides of a
conversation: every frame it sends the monitor into :meth:`ServerCore.receive`,
every frame it gets back into :meth:`ServerCore.observe`, which raises if that
frame was not legal then; :meth:`ServerCore.owed` lists what is still unanswered.
"""

from __future__ import annotations

import collections
import errno
import types
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from . import codec, errors
from .core import CANCELLABLE, SessionState
from .messages import (
    REPLIES,
    Accept,
    AcceptSocketOk,
    AnyRequest,
    Cancel,
    Connect,
    ConnectionReady,
    ConnectSocketOk,
    ControlEvent,
    ControlReply,
    ControlRequest,
    Error,
    ErrorReply,
    GetOption,
    Hello,
    HelloOk,
    MessageType,
    SetOption,
    Stats,
    StatsOk,
    UdpBind,
    UdpClose,
    error_reply_for,
    fit_text,
)
from .wire import (
    DEFAULT_MAX_PAYLOAD,
    LENGTH_FIELD_MAX,
    PROTOCOL_VERSION,
    SUPPORTED_CAPABILITIES,
    Capability,
    OptionTarget,
)

if TYPE_CHECKING:
    from collections.abc import Mapping


K = TypeVar("K", bound=int)


@dataclass(frozen=True)
class Incoming:
    """A valid request for the monitor to carry out. It is owed one reply, sent through ``send``."""

    request: AnyRequest


@dataclass(frozen=True)
class Refuse:
    """A request the core answered itself (EOPNOTSUPP: not granted; EBUSY: its id is pending): send ``reply``."""

    request: AnyRequest
    reply: Error


@dataclass(frozen=True)
class Withdraw:
    """A Cancel, never answered itself.

    ``target`` is the Accept or Connect it names, still pending: whoever still
    holds it withdraws it and answers it ECANCELED (``cancelled_reply``); if its
    reply is already under way, that reply stands. None when nothing can be
    withdrawn (answered already, another kind of request, unknown, or
    withdrawn before): there is nothing to do.
    """

    request: Cancel
    target: Accept | Connect | None


@dataclass(frozen=True)
class Reject:
    """A frame the monitor refuses: the reply to send (if the id was readable), and whether to close."""

    reply: Error | None
    close: bool
    reason: str


#: What ``receive`` returns.
Event = Incoming | Refuse | Withdraw | Reject


@dataclass(frozen=True)
class Owed:
    """One reply still owed: to ``request`` (None for a bad frame), and ``reply`` if the core has chosen it."""

    request_id: int
    request: AnyRequest | None
    reply: Error | None


def capability_for(request: AnyRequest) -> Capability:
    """The capability a request needs granted (Hello and Cancel need none)."""
    if isinstance(request, (UdpBind, UdpClose)):
        return Capability.UDP
    if isinstance(request, (SetOption, GetOption)) and request.target is OptionTarget.DATAGRAM:
        return Capability.UDP
    return Capability.TCP


class ServerCore:
    """The monitor's side of one control channel.

    After ``max_errors`` rejected frames the session is closed: a guest that
    only sends garbage must not keep the monitor busy answering it.
    """

    def __init__(self, *, max_payload: int = DEFAULT_MAX_PAYLOAD, max_errors: int = 16) -> None:
        self.max_payload = max_payload
        self.max_errors = max_errors
        self.state = SessionState.HANDSHAKE
        #: Frames rejected so far.
        self.errors_seen = 0
        #: What HelloOk granted: requests needing anything else are refused.
        self.capabilities = Capability(0)
        #: Request frames that passed the frame checks, by type (Stats ``requests``).
        self.requests: collections.Counter[MessageType] = collections.Counter()
        #: Error replies sent, by errno (Stats ``errors``).
        self.errors: collections.Counter[int] = collections.Counter()
        # Requests owed a reply by whoever carries them out, by id.
        self._pending: dict[int, AnyRequest] = {}
        # Replies the core chose itself (Refuse, Reject) and that are not sent yet, oldest first.
        self._chosen: list[Owed] = []
        # Pending requests a Cancel has withdrawn: the only ones an ECANCELED may answer.
        self._withdrawn: set[int] = set()

    # --- frames from the guest ---------------------------------------------------------------

    def receive(self, data: bytes, fds_count: int = 0, *, truncated: bool = False) -> Event:
        """Classify one frame from the guest (``truncated``: the transport cut it short).

        Raises ``LocalProtocolError`` once the session is closed: nothing more may be read.
        """
        if self.state is SessionState.CLOSED:
            raise errors.LocalProtocolError("the session is closed")
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
            self._check_state(msg)
        except errors.ProtocolError as exc:
            return self._reject(exc)
        return self._admit(msg)

    def _check_state(self, msg: AnyRequest) -> None:
        if self.state is SessionState.HANDSHAKE and not isinstance(msg, Hello):
            raise errors.UnexpectedMessage(f"{type(msg).__name__} before Hello", request_id=msg.request_id)
        if self.state is SessionState.READY and isinstance(msg, Hello):
            raise errors.UnexpectedMessage("a second Hello", request_id=msg.request_id)

    def _admit(self, request: AnyRequest) -> Event:
        """A request that passed the frame checks: counted, then gated, then made pending."""
        self.requests[request.TYPE] += 1
        rid = request.request_id
        if isinstance(request, Hello):
            self.state = SessionState.READY
            self.capabilities = request.capabilities & SUPPORTED_CAPABILITIES
        elif isinstance(request, Cancel):
            return Withdraw(request, self._withdrawable(request.target))
        elif (needed := capability_for(request)) not in self.capabilities:
            return self._refuse(request, errno.EOPNOTSUPP, f"{needed.name} was not granted in HelloOk")
        elif rid in self._pending:
            # Cancel names requests by id, and replies name their request: two pending with one id would be ambiguous.
            return self._refuse(request, errno.EBUSY, "request id already in use")
        self._pending[rid] = request
        return Incoming(request)

    def _withdrawable(self, target: int) -> Accept | Connect | None:
        request = self._pending.get(target)
        if not isinstance(request, CANCELLABLE) or target in self._withdrawn:
            return None
        self._withdrawn.add(target)
        return request

    def _refuse(self, request: AnyRequest, code: int, text: str) -> Refuse:
        reply = Error(request_id=request.request_id, errno=code, message=fit_text(text))
        self._chosen.append(Owed(request.request_id, request, reply))
        return Refuse(request, reply)

    def _reject(self, exc: errors.ProtocolError) -> Reject:
        self.errors_seen += 1
        close = self.state is SessionState.HANDSHAKE or self.errors_seen >= self.max_errors
        reply = None
        if exc.request_id in (None, 0):
            # Without a readable request id there is no one to answer, and a
            # stream cut at an unknown place cannot be trusted further.
            close = True
        else:
            reply = Error(request_id=exc.request_id, errno=exc.errno_code, message=fit_text(str(exc)))
            self._chosen.append(Owed(exc.request_id, None, reply))
        if close:
            self.state = SessionState.CLOSED
        return Reject(reply, close, str(exc))

    def hello_reply(self, hello: Hello) -> HelloOk:
        """The HelloOk for ``hello``: the version, the capabilities both sides have, the payload limit."""
        self.capabilities = hello.capabilities & SUPPORTED_CAPABILITIES
        return self._agreed_hello(hello.request_id)

    def _agreed_hello(self, request_id: int) -> HelloOk:
        return HelloOk(
            request_id=request_id, version=PROTOCOL_VERSION, capabilities=self.capabilities, max_payload=self.max_payload
        )

    def stats_reply(
        self,
        request: Stats,
        *,
        listeners: int,
        connections: int,
        datagram_sockets: int,
        bytes_up: int,
        bytes_down: int,
        denials: int,
    ) -> StatsOk:
        """StatsOk: the protocol's counters from here, what the session holds and has moved from the caller."""
        return StatsOk(
            request_id=request.request_id,
            listeners=listeners,
            connections=connections,
            datagram_sockets=datagram_sockets,
            bytes_up=bytes_up,
            bytes_down=bytes_down,
            denials=denials,
            requests=counted(self.requests),
            errors=counted(self.errors),
        )

    # --- frames to the guest -----------------------------------------------------------------

    def send(self, message: ControlReply | ControlEvent, fds_count: int = 0) -> bytes:
        """The frame for ``message``, checked against the rules, with ``fds_count`` descriptors beside it.

        A reply must answer something owed: a reply the core chose itself, or
        a pending request, with a type ``REPLIES`` allows for it (the socket
        forms exactly when SOCKET_CHANNEL was granted; ECANCELED only for a
        request a Cancel withdrew). ``Error`` EIO, the internal error, may
        answer anything owed. Sending it settles what it answers, and an error
        reply is counted under its errno.

        Raises ``LocalProtocolError``, changing nothing, if ``message`` breaks a
        rule or cannot be encoded: the caller then answers with the internal
        error, if its id is owed (:meth:`owes`), so the guest still gets exactly one reply.
        """
        if fds_count != message.FDS:
            raise errors.LocalProtocolError(
                f"{type(message).__name__} goes with {message.FDS} file descriptors, not {fds_count}"
            )
        if isinstance(message, ControlEvent):
            return codec.encode(message)
        answered = self._answered_by(message)
        frame = codec.encode(message)
        if isinstance(answered, Owed):
            self._chosen.remove(answered)
        else:
            del self._pending[message.request_id]
            self._withdrawn.discard(message.request_id)
        if isinstance(message, ErrorReply):
            self.errors[message.errno] += 1
        return frame

    def _answered_by(self, reply: ControlReply) -> Owed | AnyRequest:
        """What ``reply`` answers: a reply the core chose (the same one), or a pending request. Raises if nothing."""
        rid = reply.request_id
        if type(reply) is Error:
            # The same errno as the reply chosen (the text is no part of the protocol), or the internal error.
            for chosen in self._chosen:
                if chosen.request_id == rid and chosen.reply is not None and reply.errno in (chosen.reply.errno, errno.EIO):
                    return chosen
        request = self._pending.get(rid)
        name = type(reply).__name__
        if request is None:
            raise errors.LocalProtocolError(f"{name} answers request id {rid}, which is owed no reply")
        if type(reply) not in REPLIES[type(request)]:
            raise errors.LocalProtocolError(f"{name} cannot answer {type(request).__name__} {rid}")
        if isinstance(reply, ConnectionReady):
            socket_form = isinstance(reply, (AcceptSocketOk, ConnectSocketOk))
            if socket_form != (Capability.SOCKET_CHANNEL in self.capabilities):
                raise errors.LocalProtocolError(f"{name} in a session {'without' if socket_form else 'with'} SOCKET_CHANNEL")
        if isinstance(reply, ErrorReply) and reply.errno == errno.ECANCELED and rid not in self._withdrawn:
            raise errors.LocalProtocolError(f"ECANCELED for {type(request).__name__} {rid}, which no Cancel withdrew")
        if isinstance(reply, HelloOk) and reply != self._agreed_hello(rid):
            raise errors.LocalProtocolError(f"{reply!r} is not what the handshake agreed")
        return request

    def observe(self, data: bytes, fds_count: int = 0) -> ControlReply | ControlEvent:
        """A frame the monitor sent, as a bystander saw it: decoded, then checked and settled as :meth:`send` does.

        Raises ``LocalProtocolError`` (the monitor broke a rule) or the
        decoder's ``RemoteProtocolError`` (it sent a bad frame).
        """
        msg = codec.decode(data, max_payload=LENGTH_FIELD_MAX)
        if not isinstance(msg, (ControlReply, ControlEvent)):
            raise errors.LocalProtocolError(f"the monitor sent a request: {msg!r}")
        self.send(msg, fds_count)
        return msg

    # --- what is owed ------------------------------------------------------------------------

    def owes(self, request_id: int) -> bool:
        """Whether a reply with this id is still owed."""
        return request_id in self._pending or any(chosen.request_id == request_id for chosen in self._chosen)

    def owed(self) -> list[Owed]:
        """Every reply still owed: those the core chose first, then the pending requests, oldest first each."""
        return [*self._chosen, *(Owed(rid, request, None) for rid, request in self._pending.items())]

    @property
    def pending(self) -> Mapping[int, AnyRequest]:
        """The requests still owed a reply by whoever carries them out, by id (read only)."""
        return types.MappingProxyType(self._pending)


def counted(counter: Mapping[K, int]) -> tuple[tuple[int, int], ...]:
    """A counter as StatsOk carries it: (message type or errno, count) pairs, sorted, at most 255."""
    return tuple(sorted((int(key), count) for key, count in counter.items()))[:255]


def cancelled_reply(request: AnyRequest) -> ErrorReply:
    """What a withdrawn request is answered with."""
    return error_reply_for(request, request.request_id, errno.ECANCELED, "cancelled by the guest")

"""The monitor's side of one control channel, with no I/O: frame checks, the handshake, rejections.

The rules it keeps are listed in ``core``.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from . import codec, errors
from .core import SessionState
from .messages import ControlRequest, Error, ErrorReply, Hello, HelloOk, error_reply_for
from .wire import DEFAULT_MAX_PAYLOAD, PROTOCOL_VERSION, SUPPORTED_CAPABILITIES, Capability


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

"""The live mode's model of a monitor session (PROTOCOL.md section 4): the answer each frame must get.

``Model`` tracks what one session must be in (handshake done, capabilities,
listeners, pending Accepts and Connects, bad frames so far) and says, for each
frame sent, what the monitor must do with it: an ``Expect``. ``make_safe``
rewrites what a mutated frame asks for so that only our own loopback ports and
nothing outside is ever contacted.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import socket
from typing import TYPE_CHECKING

from arca_control.protocol import codec, errors, wire
from arca_control.protocol.messages import (
    Abort,
    Accept,
    AcceptErr,
    Cancel,
    CloseListener,
    CloseListenerOk,
    Connect,
    ConnectErr,
    ControlRequest,
    Error,
    GetOption,
    Hello,
    HelloOk,
    Listen,
    ListenErr,
    ListenOk,
    Message,
    Resolve,
    ResolveOk,
    SetOption,
    Stats,
    StatsOk,
    UdpBind,
    UdpClose,
)
from arca_control.protocol.wire import (
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    Capability,
    Endpoint,
    FamilyFilter,
    ListenFlags,
    OptionTarget,
    SockType,
)

from .schema import HEADER

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


class Violation(Exception):
    """The monitor did something PROTOCOL.md rules out."""


class Expect:
    """What the monitor must do with one frame: reply (id, types, errno, check), close, or neither."""

    def __init__(
        self,
        reply_id: int | None = None,
        types: tuple[type[Message], ...] = (),
        code: int | None = None,
        close: bool = False,
        check: Callable[[Message], bool] | None = None,
        before: Sequence[Expect] = (),
    ) -> None:
        self.reply_id, self.types, self.code, self.close, self.check = reply_id, types, code, close, check
        self.before = before  # replies that must come first, in this order
        self.frame = b""  # the frame this is the answer to


def free_port() -> Endpoint:
    """A loopback port nobody listens on: bind one, then let it go."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return Endpoint(*probe.getsockname())


class Model:
    """The state one monitor session must be in, and so the answer each frame must get."""

    def __init__(self, max_errors: int, refused: Endpoint, stalled: Endpoint) -> None:
        self.max_errors, self.refused, self.stalled = max_errors, refused, stalled
        self.ready = self.tcp = self.udp = self.closed = False
        self.errors = 0
        self.listeners: dict[int, Endpoint] = {}
        self.next_listener = 1
        #: Accepts (request id -> listener id) and Connects (-> None) not answered yet, oldest first.
        self.pending: dict[int, int | None] = {}

    def expect(self, data: bytes, fds: int = 0) -> Expect:
        if not data and not fds:
            self.closed = True  # a zero-length message reads as EOF
            return Expect(close=True)
        try:
            if len(data) > HEADER_SIZE + DEFAULT_MAX_PAYLOAD:  # cut by the monitor's receive buffer
                raise errors.OversizedFrame("cut", request_id=HEADER.unpack_from(data)[2])
            msg = codec.decode(data)
            if fds or not isinstance(msg, ControlRequest) or self.ready == isinstance(msg, Hello):
                raise errors.UnexpectedMessage("not allowed here", request_id=msg.request_id)
        except errors.ProtocolError as exc:
            self.errors += 1
            close = not self.ready or self.errors >= self.max_errors or not exc.request_id
            self.closed |= close
            return Expect(exc.request_id or None, (Error,), exc.errno, close)
        return self.expect_request(msg)

    def expect_request(self, msg: ControlRequest) -> Expect:
        rid = msg.request_id
        if isinstance(msg, Hello):
            self.ready, self.tcp = True, Capability.TCP in msg.capabilities
            self.udp = Capability.UDP in msg.capabilities
            granted = msg.capabilities & wire.SUPPORTED_CAPABILITIES
            return Expect(rid, (HelloOk,), check=lambda r: isinstance(r, HelloOk) and r.capabilities == granted
                          and r.max_payload == DEFAULT_MAX_PAYLOAD)
        if isinstance(msg, Cancel):
            if msg.target not in self.pending:
                return Expect()  # never answered, and nothing to withdraw
            listener = self.pending.pop(msg.target)
            return Expect(msg.target, (ConnectErr if listener is None else AcceptErr,), errno.ECANCELED)
        needs_udp = isinstance(msg, (UdpBind, UdpClose)) or (
            isinstance(msg, (SetOption, GetOption)) and msg.target is OptionTarget.DATAGRAM
        )
        if not (self.udp if needs_udp else self.tcp):
            return Expect(rid, (Error,), errno.EOPNOTSUPP)
        if rid in self.pending:
            return Expect(rid, (Error,), errno.EBUSY)
        if isinstance(msg, Listen):
            ok_only = msg.endpoint == Endpoint("127.0.0.1", 0)  # nothing can refuse that
            return Expect(rid, (ListenOk,) if ok_only else (ListenOk, ListenErr),
                          check=lambda r: self.listened(r, msg.endpoint))
        if isinstance(msg, Accept) and msg.listener_id not in self.listeners:
            return Expect(rid, (AcceptErr,), errno.EBADF)
        stalls = isinstance(msg, Connect) and msg.endpoint == self.stalled and not msg.timeout_ms
        if isinstance(msg, Accept) or stalls:
            self.pending[rid] = getattr(msg, "listener_id", None)  # answered later: a connection, or Cancel
            return Expect()
        if isinstance(msg, Connect):
            assert msg.endpoint in (self.refused, self.stalled), "only our own loopback ports are contacted"
            codes = {errno.ETIMEDOUT} if msg.endpoint == self.stalled else {errno.ECONNREFUSED}
            if 0 < msg.timeout_ms < 1000:  # a deadline that short may pass before even a refusal is seen
                codes.add(errno.ETIMEDOUT)
            return Expect(rid, (ConnectErr,), check=lambda r: isinstance(r, ConnectErr) and r.errno in codes)
        if isinstance(msg, Stats):
            return Expect(rid, (StatsOk,))
        if isinstance(msg, Resolve):  # make_safe made it a literal
            want = ((SockType.STREAM, Endpoint("127.0.0.1", msg.port)),)
            return Expect(rid, (ResolveOk,), check=lambda r: isinstance(r, ResolveOk) and r.addresses == want)
        if isinstance(msg, (Abort, SetOption, GetOption, UdpClose)):
            return Expect(rid, (Error,), errno.EBADF)  # make_safe aimed them at nothing that exists
        if isinstance(msg, CloseListener) and msg.listener_id in self.listeners:  # its queued Accepts fail first, in order
            del self.listeners[msg.listener_id]
            queued = [r for r, listener in self.pending.items() if listener == msg.listener_id]
            for r in queued:
                del self.pending[r]
            closed = msg.listener_id
            return Expect(rid, (CloseListenerOk,), check=lambda r: isinstance(r, CloseListenerOk) and r.listener_id == closed,
                          before=[Expect(r, (AcceptErr,), errno.EBADF) for r in queued])
        return Expect(rid, (Error,), errno.EBADF)

    def listened(self, reply: Message, asked: Endpoint) -> bool:
        if isinstance(reply, ListenErr):
            return True
        if not isinstance(reply, ListenOk):  # Expect let only these two through
            return False
        ok = reply.listener_id == self.next_listener and reply.local.host == asked.host
        ok &= reply.local.port == asked.port if asked.port else reply.local.port != 0
        self.listeners[reply.listener_id] = reply.local
        self.next_listener += 1
        if reply.local.port == self.refused.port:  # the kernel handed out our free port again
            self.refused = free_port()
        return ok

    def make_safe(self, data: bytes) -> tuple[bytes, Message | None]:
        """``data`` with any Listen or Connect in it kept on loopback and off our ports; what it decodes to."""
        try:
            msg = codec.decode(data) if len(data) <= HEADER_SIZE + DEFAULT_MAX_PAYLOAD else None
        except errors.ProtocolError:
            return data, None  # the monitor rejects it just the same, unread
        if isinstance(msg, Connect):  # to our refused port: nothing outside is ever contacted
            msg = Connect(request_id=msg.request_id, endpoint=self.refused, timeout_ms=msg.timeout_ms)
        elif isinstance(msg, Listen):
            host, port = msg.endpoint
            # ::1 and 127.0.0.0/8 only; and no scope id, which the kernel ignores on them.
            host = host.split("%")[0]
            if wire.is_unix_path(host):  # no socket files made in random places
                host, port = "127.0.0.1", 0
            elif not ipaddress.ip_address(host).is_loopback:
                host = "127.0.0.1"
            port = 0 if port in (self.refused.port, self.stalled.port) else port
            # V6ONLY stays only where it means something (an IPv4 listener would refuse it).
            flags = msg.flags if ":" in host else ListenFlags(0)
            msg = Listen(request_id=msg.request_id, endpoint=Endpoint(host, port), backlog=msg.backlog, flags=flags)
        elif isinstance(msg, Accept) and msg.listener_id in self.listeners:
            msg = Accept(request_id=msg.request_id, listener_id=0xFFFFFFFF)  # it would wait for a connection
        elif isinstance(msg, Abort):  # never at a connection of ours
            msg = Abort(request_id=msg.request_id, connection_id=0xFFFFFFFF)
        elif isinstance(msg, (SetOption, GetOption)):  # options on our own sockets are tested elsewhere
            msg = dataclasses.replace(msg, target_id=0xFFFFFFFF)
        elif isinstance(msg, (UdpBind, UdpClose)):  # UDP sockets are tested elsewhere
            msg = UdpClose(request_id=msg.request_id, socket_id=0xFFFFFFFF)
        elif isinstance(msg, Resolve):  # a literal: answered without any lookup, and predictable
            msg = Resolve(request_id=msg.request_id, name="127.0.0.1", port=msg.port, family=FamilyFilter.IPV4,
                          socktype=SockType.STREAM)
        return (data if msg is None else codec.encode(msg)), msg


class LiveSession:
    """One guest session driven frame by frame, every answer checked against the model."""

    TIMEOUT = 5.0

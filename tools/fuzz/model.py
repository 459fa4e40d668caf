"""The live mode's model of a monitor session: the protocol's rules from ``ServerCore``, the rest from what we asked.

``Model`` holds a bystander ``ServerCore``: every frame we send goes into its
``receive`` and every frame the monitor sends back into its ``observe``
(``session.LiveSession.receive``), so the rules PROTOCOL.md section 4 gives
(the handshake, capability gating, request ids, Cancel, the bad-frame limit,
which reply may answer what and with how many descriptors, the counters) are
the core's, the same the monitor runs, not a second copy of them.

What the model adds is what only the fuzzer knows: what its requests were
aimed at (the listeners it opened, a port that refuses, one that stalls, ids
that name nothing), and so the contents each answer must have: an
``Expect``. ``make_safe`` rewrites what a mutated frame asks for so that only
our own loopback ports and nothing outside is ever contacted.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from arca_control.protocol import codec, errors, wire
from arca_control.protocol.core import SessionState
from arca_control.protocol.messages import (
    Abort,
    Accept,
    AcceptErr,
    AnyRequest,
    CloseListener,
    CloseListenerOk,
    Connect,
    ConnectErr,
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
from arca_control.protocol.server import Incoming, Refuse, Reject, ServerCore, cancelled_reply, counted
from arca_control.protocol.wire import (
    DEFAULT_MAX_PAYLOAD,
    HEADER_SIZE,
    Endpoint,
    FamilyFilter,
    ListenFlags,
    SockType,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


class Violation(Exception):
    """The monitor did something PROTOCOL.md rules out."""


@dataclass
class Expect:
    """What the monitor must do with one frame: reply (id, types, errno, check), close, or neither."""

    reply_id: int | None = None
    types: tuple[type[Message], ...] = ()
    code: int | None = None
    close: bool = False
    #: A check of the reply's contents: None if they are right, else what is wrong.
    check: Callable[[Message], str | None] | None = None
    #: Replies that must come first, in this order.
    before: Sequence[Expect] = ()
    #: The frame this is the answer to.
    frame: bytes = b""


def free_port() -> Endpoint:
    """A loopback port nobody listens on: bind one, then let it go."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return Endpoint(*probe.getsockname())


class Model:
    """One monitor session as a bystander sees it: the core's state, and what our requests were aimed at."""

    def __init__(self, max_errors: int, refused: Endpoint, stalled: Endpoint) -> None:
        self.core = ServerCore(max_errors=max_errors)
        self.refused, self.stalled = refused, stalled
        #: The listeners our Listens opened (from their ListenOk), and the id the next one must get.
        self.listeners: dict[int, Endpoint] = {}
        self.next_listener = 1

    @property
    def ready(self) -> bool:
        return self.core.state is SessionState.READY

    @property
    def closed(self) -> bool:
        return self.core.state is SessionState.CLOSED

    def waiting(self, request_id: int) -> bool:
        """Whether the request with this id is still owed its reply."""
        return request_id in self.core.pending

    def queued(self, listener: int) -> list[int]:
        """The Accepts waiting on ``listener``, oldest first: the order connections reach them."""
        return [rid for rid, request in self.core.pending.items()
                if isinstance(request, Accept) and request.listener_id == listener]

    def expect(self, data: bytes, fds: int = 0) -> Expect:
        """What the monitor must answer ``data``, sent with ``fds`` descriptors (fed to the core as it reads it)."""
        # A frame longer than the monitor's receive buffer reaches it cut short.
        event = self.core.receive(data, fds, truncated=len(data) > HEADER_SIZE + self.core.max_payload)
        if isinstance(event, Reject):
            if event.reply is None:
                return Expect(close=True)
            return Expect(event.reply.request_id, (Error,), event.reply.errno, event.close)
        if isinstance(event, Refuse):
            return Expect(event.reply.request_id, (Error,), event.reply.errno)
        if isinstance(event, Incoming):
            return self.expect_request(event.request)
        if event.target is None:
            return Expect()  # a Cancel with nothing to withdraw is never answered
        # Our waiting requests wait for good (a stalled port, a connection we never make): the answer is ECANCELED.
        withdrawn = event.target
        return Expect(withdrawn.request_id, (type(cancelled_reply(withdrawn)),), errno.ECANCELED)

    def expect_request(self, msg: AnyRequest) -> Expect:
        """The answer to a request the core admitted, from what ``make_safe`` and the probes aimed it at."""
        rid = msg.request_id
        if isinstance(msg, Hello):
            return Expect(rid, (HelloOk,))  # what it must grant, the core checks
        if isinstance(msg, Listen):
            ok_only = msg.endpoint == Endpoint("127.0.0.1", 0)  # nothing can refuse that
            return Expect(rid, (ListenOk,) if ok_only else (ListenOk, ListenErr),
                          check=lambda r: self.listened(r, msg.endpoint))
        if isinstance(msg, Accept) and msg.listener_id not in self.listeners:
            return Expect(rid, (AcceptErr,), errno.EBADF)
        if isinstance(msg, Accept) or (isinstance(msg, Connect) and msg.endpoint == self.stalled and not msg.timeout_ms):
            return Expect()  # answered later: a connection, or Cancel
        if isinstance(msg, Connect):
            assert msg.endpoint in (self.refused, self.stalled), "only our own loopback ports are contacted"
            codes = {errno.ETIMEDOUT} if msg.endpoint == self.stalled else {errno.ECONNREFUSED}
            if 0 < msg.timeout_ms < 1000:  # a deadline that short may pass before even a refusal is seen
                codes.add(errno.ETIMEDOUT)
            return Expect(rid, (ConnectErr,), check=lambda r: None if isinstance(r, ConnectErr) and r.errno in codes
                          else f"errno {'/'.join(errno.errorcode[c] for c in sorted(codes))} expected")
        if isinstance(msg, Stats):
            return self.expect_stats(rid)
        if isinstance(msg, Resolve):  # make_safe made it a literal
            want = ((SockType.STREAM, Endpoint("127.0.0.1", msg.port)),)
            return Expect(rid, (ResolveOk,), check=lambda r: None if isinstance(r, ResolveOk) and r.addresses == want
                          else f"addresses {want} expected")
        if isinstance(msg, (Abort, SetOption, GetOption, UdpClose)):
            return Expect(rid, (Error,), errno.EBADF)  # make_safe aimed them at nothing that exists
        if isinstance(msg, CloseListener) and msg.listener_id in self.listeners:  # its queued Accepts fail first, in order
            closed = msg.listener_id
            del self.listeners[closed]
            return Expect(rid, (CloseListenerOk,), check=lambda r: None if isinstance(r, CloseListenerOk)
                          and r.listener_id == closed else f"listener id {closed} expected",
                          before=[Expect(r, (AcceptErr,), errno.EBADF) for r in self.queued(closed)])
        return Expect(rid, (Error,), errno.EBADF)

    def expect_stats(self, request_id: int) -> Expect:
        """StatsOk counts the requests the core has counted so far, this one too, and the error replies sent before it."""
        requests = counted(self.core.requests)

        def check(reply: Message) -> str | None:
            # The monitor sends nothing between counting this Stats and answering it but
            # earlier replies, which the core has seen by now (replies come in order).
            want = (requests, counted(self.core.errors))
            if isinstance(reply, StatsOk) and (reply.requests, reply.errors) == want:
                return None
            return f"requests {want[0]} and errors {want[1]} expected, as the core counted them"

        return Expect(request_id, (StatsOk,), check=check)

    def listened(self, reply: Message, asked: Endpoint) -> str | None:
        if isinstance(reply, ListenErr):
            return None
        if not isinstance(reply, ListenOk):  # Expect let only these two through
            return "ListenOk or ListenErr expected"
        wrong = None
        if reply.listener_id != self.next_listener:
            wrong = f"listener id {self.next_listener} expected"
        elif reply.local.host != asked.host or (reply.local.port != asked.port if asked.port else reply.local.port == 0):
            wrong = f"a listener on {asked} expected"
        self.listeners[reply.listener_id] = reply.local
        self.next_listener += 1
        if reply.local.port == self.refused.port:  # the kernel handed out our free port again
            self.refused = free_port()
        return wrong

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

"""One guest's session: read requests from its control channel, carry them out, send every reply.

Every request is answered on the channel, errors included; a log line is
never the only trace of a failure. Slow work (a Connect, a name lookup) runs
in a task of its own, so one request never holds up another.

The session is the trio shell around three pieces, each with one job:

* the protocol's rules, ``ServerCore`` (sans-IO): it classifies each frame
  (a request to carry out, one it refuses itself, a Cancel's target, a bad
  frame), checks every frame the session sends, and counts;
* the broker (``broker``): policy, limits, audit log and the sockets, for
  whichever front end asks;
* the handlers, by concern: ``tcp`` (listeners, Accept, Connect, Abort),
  ``udp_sockets``, ``names`` (Resolve) and ``options``.

What stays here: the read loop, the dispatch table, the one path every frame
leaves by (:meth:`MonitorSession.send`), and the supervision of tasks.

Resource handling: every listener, pending connect, relayed connection and
UDP socket of the session lives in the session's nursery and its handlers'
tables. When the control channel reaches EOF (the guest exited or crashed),
when the guest breaks the protocol beyond repair, or when the session is
cancelled, all of them are closed before :meth:`MonitorSession.run` returns.

Error handling: nothing the guest sends can make ``run`` raise. A bad frame is
answered with an Error reply where its request id is readable, else the
session ends with one log line. An unexpected exception while handling one
request is logged and answered with EIO; it does not end the session. A reply
that would break the protocol (our bug) is logged and replaced by EIO, so the
guest still gets exactly one reply.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import logging
from typing import TYPE_CHECKING, TypeVar

import trio

from arca_control.protocol import errors
from arca_control.protocol.channel import ControlChannel, close_fds
from arca_control.protocol.messages import (
    Abort,
    Accept,
    AnyRequest,
    CloseListener,
    Connect,
    ControlEvent,
    Error,
    GetOption,
    Hello,
    Listen,
    Resolve,
    SetOption,
    Stats,
    UdpBind,
    UdpClose,
    error_reply_for,
    payload_fields,
)
from arca_control.protocol.server import Incoming, Refuse, Reject, ServerCore, Withdraw
from arca_control.protocol.wire import Capability, OptionTarget

from . import options
from .audit import AuditLog, shown
from .broker import Broker, Held
from .names import NameRequests
from .policy import Denied, Policy
from .relay import RelayEngine
from .resolver import Resolver
from .tcp import TcpRequests
from .udp_sockets import UdpRequests

if TYPE_CHECKING:
    import socket
    from collections.abc import Awaitable, Callable, Sequence

    from arca_control.protocol.messages import ControlReply

    from .config import Config

log = logging.getLogger("arca_monitor.session")

_session_numbers = itertools.count(1)

R = TypeVar("R", bound=AnyRequest)


def on(kind: type[R], work: Callable[[R], Awaitable[None]]) -> tuple[type[AnyRequest], Callable[[AnyRequest], Awaitable[None]]]:
    """A dispatch table entry: requests of ``kind`` go to ``work``."""

    async def handle(request: AnyRequest) -> None:
        if not isinstance(request, kind):
            raise TypeError(f"{type(request).__name__} dispatched as {kind.__name__}")
        await work(request)

    return kind, handle


class SessionClosed(Exception):
    """The guest's side of the control channel is gone; nothing more can be sent."""


class MonitorSession:
    def __init__(
        self,
        sock: socket.socket,
        config: Config,
        resolver: Resolver | None = None,
        policy: Policy | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.config = config
        self.number = next(_session_numbers)
        # The default policy when none is given; a resolver of its own for a session alone.
        self.broker = Broker(config, policy or Policy.build({}), resolver or Resolver(), audit or AuditLog(None), self.number)
        self.channel = ControlChannel(sock, max_payload=config.max_payload)
        self.core = ServerCore(max_payload=config.max_payload, max_errors=config.max_protocol_errors)
        self.relay = RelayEngine(self.send, self.broker.connection_changed)
        self.tcp = TcpRequests(self.broker, self.relay, self.send, self.start, self.spawn, self._socket_channel)
        self.udp = UdpRequests(self.broker, self.send, self.spawn)
        self.names = NameRequests(self.broker, self.send, self.start)
        self._handlers = dict([
            on(Hello, self._hello),
            on(Listen, self.tcp.listen),
            on(Accept, self.tcp.accept),
            on(Connect, self.tcp.connect),
            on(CloseListener, self.tcp.close_listener),
            on(Abort, self.tcp.abort),
            on(SetOption, self._option),
            on(GetOption, self._option),
            on(UdpBind, self.udp.bind),
            on(UdpClose, self.udp.close),
            on(Resolve, self.names.resolve),
            on(Stats, self._stats),
        ])
        self._nursery: trio.Nursery | None = None

    async def run(self) -> None:
        log.info("session %d: started", self.number)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._run_relay)
                with contextlib.suppress(SessionClosed):
                    await self._read_requests()
                nursery.cancel_scope.cancel()
        finally:
            # The guest is gone or lost: close quietly, there is no one to answer.
            self.tcp.close()
            self.relay.close()
            self.channel.close()
            log.info("session %d: ended", self.number)

    async def _read_requests(self) -> None:
        while True:
            try:
                datagram = await self.channel.receive()
            except OSError as exc:
                log.info("session %d: control channel failed: %s", self.number, exc)
                return
            if datagram is None:
                return
            close_fds(datagram.fds)  # a guest never passes descriptors; do not keep them
            event = self.core.receive(
                datagram.data, len(datagram.fds) + datagram.fds_truncated, truncated=datagram.truncated
            )
            if isinstance(event, Reject):
                verdict = "closing the session after a bad frame" if event.close else "bad frame"
                log.warning("session %d: %s: %s", self.number, verdict, event.reason)
                if event.reply is not None:
                    await self.send(event.reply)
                if event.close:
                    return
                continue
            try:
                await self._handle(event)
            except SessionClosed:
                raise
            except Exception as exc:  # a bug must cost one request, not the session
                log.error("session %d: internal error on %r: %r", self.number, event.request, exc)

    async def _handle(self, event: Incoming | Refuse | Withdraw) -> None:
        if isinstance(event, Incoming):
            request = event.request
            await self._guarded(request, functools.partial(self._handlers[type(request)], request))
        elif isinstance(event, Refuse):
            await self.send(event.reply)
        else:
            self._audit_request(event.request, "allowed")
            if event.target is not None:
                await self.tcp.withdraw(event.target)

    async def send(self, reply: ControlReply | ControlEvent, fds: Sequence[int] = ()) -> None:
        """Send one frame, checked by the core; raises SessionClosed if the guest is gone."""
        try:
            frame = self.core.send(reply, len(fds))
        except errors.LocalProtocolError as exc:
            # Our bug: the guest still gets one answer, the internal error, if one is owed.
            log.error("session %d: internal error: %r breaks the protocol: %s", self.number, reply, exc)
            if isinstance(reply, ControlEvent) or not self.core.owes(reply.request_id):
                return
            frame = self.core.send(Error.make(reply.request_id, errno.EIO, "internal error: a reply broke the protocol"))
            fds = ()
        try:
            await self.channel.send_bytes(frame, fds)
        except (OSError, trio.ClosedResourceError) as exc:
            raise SessionClosed(str(exc)) from None

    async def _guarded(self, request: AnyRequest, work: Callable[[], Awaitable[None]]) -> None:
        """Run the handler for ``request``; turn any failure into its error reply. Audit the outcome."""
        try:
            await work()
        except SessionClosed:
            raise
        except OSError as exc:
            code = exc.errno or errno.EIO
            verdict = "denied" if isinstance(exc, Denied) else "failed"
            allowing = {"rule": exc.rule} if isinstance(exc, Denied) else {}
            self._audit_request(request, verdict, errno=errno.errorcode.get(code, code), reason=exc.strerror,
                                **allowing)
            await self.send(error_reply_for(request, request.request_id, code, exc.strerror or str(exc)))
        except Exception as exc:
            log.error("session %d: internal error on %s: %r", self.number, type(request).__name__, exc)
            self._audit_request(request, "failed", errno="EIO", reason="internal error")
            await self.send(error_reply_for(request, request.request_id, errno.EIO, f"internal error: {exc!r}"))
        else:
            self._audit_request(request, "allowed")

    def _audit_request(self, request: AnyRequest, decision: str, **fields: object) -> None:
        if self.broker.auditing:
            named = {f.name: shown(getattr(request, f.name)) for f in payload_fields(type(request))}
            self.broker.record("request", request_id=request.request_id, op=type(request).__name__,
                               **named, decision=decision, **fields)

    # --- requests answered here ----------------------------------------------------------------

    async def _hello(self, request: Hello) -> None:
        await self.send(self.core.hello_reply(request))

    def _socket_channel(self) -> bool:
        return Capability.SOCKET_CHANNEL in self.core.capabilities

    async def _option(self, request: SetOption | GetOption) -> None:
        sock = None
        if request.target is OptionTarget.CONNECTION:
            conn = self.relay.connections.get(request.target_id)
            sock = None if conn is None else conn.sock
        elif request.target is OptionTarget.LISTENER:
            listener = self.tcp.listeners.get(request.target_id)
            sock = None if listener is None else listener.sock
        else:
            sock = self.udp.socket_of(request.target_id)
        if sock is None:
            raise OSError(errno.EBADF, f"no {request.target.name.lower()} {request.target_id}")
        await self.send(options.answer(request, sock))

    async def _stats(self, request: Stats) -> None:
        up, down = self.broker.bytes_moved()
        await self.send(self.core.stats_reply(
            request,
            listeners=self.broker.held[Held.LISTENER],
            connections=len(self.broker.connections),
            datagram_sockets=self.broker.held[Held.DATAGRAM_SOCKET],
            bytes_up=up,
            bytes_down=down,
            denials=self.broker.denials,
        ))

    # --- tasks -----------------------------------------------------------------------------------

    async def _run_relay(self) -> None:
        """The relay: a bug in it ends this session (closing its connections), never the monitor,
        and never leaves the guest's connections hanging with nobody relaying them."""
        try:
            await self.relay.run()
        except SessionClosed:
            pass
        except Exception as exc:
            log.error("session %d: internal error in the relay: %r", self.number, exc)
        self._cancel()

    def start(self, request: AnyRequest, work: Callable[[], Awaitable[None]]) -> None:
        """Carry out ``request`` in a task of its own, its failure answered and audited as inline ones are."""
        self.spawn(functools.partial(self._guarded, request, work))

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        if self._nursery is None:
            raise RuntimeError("the session is not running")
        self._nursery.start_soon(self._task, fn)

    async def _task(self, fn: Callable[[], Awaitable[None]]) -> None:
        """A session task: a lost channel ends the session; a bug ends only this task."""
        try:
            await fn()
        except SessionClosed:
            self._cancel()
        except Exception as exc:
            work = fn.func if isinstance(fn, functools.partial) else fn
            log.error("session %d: internal error in %s: %r", self.number, getattr(work, "__qualname__", work), exc)

    def _cancel(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

"""The session's TCP requests: Listen, Accept, Connect, CloseListener, Abort, and handing connections to the guest.

The broker decides and opens; this module keeps what only the control
protocol has: listeners with their queues of Accept requests, Connects in
progress that a Cancel can reach, and the handover of a connected socket as a
data channel passed beside the ConnectOk or AcceptOk.

Resource handling: every listener is in :attr:`TcpRequests.listeners` until
CloseListener or :meth:`TcpRequests.close` closes it; a connection belongs to
the relay engine from its handover on. A socket whose handover fails is
closed here and the request answered with the error.

Error handling: a handler raises ``OSError`` for the session to answer with
the request's error reply; replies sent from here (a handover's error, the
AcceptErr of a closed listener's queue, ECANCELED) go through the session's
``send`` like every other.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
from typing import TYPE_CHECKING

import trio

from arca_control.protocol.channel import close_fds
from arca_control.protocol.messages import (
    Abort,
    AbortOk,
    Accept,
    AcceptErr,
    AcceptOk,
    AcceptSocketOk,
    CloseListener,
    CloseListenerOk,
    Connect,
    ConnectionReady,
    ConnectOk,
    ConnectSocketOk,
    ListenOk,
    error_reply_for,
)
from arca_control.protocol.server import cancelled_reply
from arca_control.protocol.wire import ListenFlags

from . import net
from .audit import shown
from .broker import Broker, Held
from .channels import make_pipe_channel, make_socket_channel
from .connection import Connection
from .inflight import Connecting
from .listeners import Listener

if TYPE_CHECKING:
    import socket
    from collections.abc import Awaitable, Callable, Sequence

    from arca_control.protocol.messages import AnyRequest, ControlReply, Listen

    from .relay import RelayEngine

    #: The session's send: every reply goes out through it (and its core).
    Send = Callable[[ControlReply, Sequence[int]], Awaitable[None]]
    #: Run a request's work in a task of its own, its failure answered as the request's error reply.
    Start = Callable[[AnyRequest, Callable[[], Awaitable[None]]], None]
    #: Run a task in the session's nursery.
    Spawn = Callable[[Callable[[], Awaitable[None]]], None]

log = logging.getLogger("arca_monitor.tcp")


class TcpRequests:
    """One session's listeners, Connects in progress and connection handovers."""

    def __init__(
        self, broker: Broker, relay: RelayEngine, send: Send, start: Start, spawn: Spawn, sockets: Callable[[], bool]
    ) -> None:
        self.broker = broker
        self.relay = relay
        self._send = send
        self._start = start
        self._spawn = spawn
        #: Whether connections go to the guest as one socket (SOCKET_CHANNEL granted) rather than pipes.
        self._sockets = sockets
        self.listeners: dict[int, Listener] = {}
        #: Connect requests in progress, by request id, so Cancel can reach them.
        self.connects: dict[int, trio.CancelScope] = {}
        self._listener_ids = itertools.count(1)
        broker.count_waiting(self.queued_accepts)

    def queued_accepts(self) -> int:
        return sum(listener.queued for listener in self.listeners.values())

    def close(self) -> None:
        """The session is over: close every listener, quietly (queued Accepts are dropped unanswered)."""
        for listener in self.listeners.values():
            listener.close()

    # --- listeners ---------------------------------------------------------------------------

    async def listen(self, request: Listen) -> None:
        bound = self.broker.listen(
            request.endpoint,
            request.backlog,
            v6only=ListenFlags.V6ONLY in request.flags,
            reuse_port=ListenFlags.REUSEPORT in request.flags,
        )
        listener_id = next(self._listener_ids)
        listener = Listener(
            listener_id, bound.sock, bound.local, self.hand_over, self._reply,
            self.broker.admit_connection, bound.cleanup, self.broker.peer_allowed,
        )
        self.listeners[listener_id] = listener
        self._spawn(listener.run)
        log.info("session %d: listener %d on %s", self.broker.session, listener_id, bound.local)
        await self._reply(ListenOk(request_id=request.request_id, listener_id=listener_id, local=bound.local))

    async def accept(self, request: Accept) -> None:
        listener = self.listeners.get(request.listener_id)
        if listener is None:
            raise OSError(errno.EBADF, f"no listener {request.listener_id}")
        self.broker.config.check("max_accepts_per_listener", listener.queued)
        self.broker.config.check("max_accepts", self.queued_accepts())
        self.broker.check_in_flight()
        listener.enqueue(request)

    async def close_listener(self, request: CloseListener) -> None:
        listener = self.listeners.pop(request.listener_id, None)
        if listener is None:
            raise OSError(errno.EBADF, f"no listener {request.listener_id}")
        self.broker.released(Held.LISTENER)
        # Every queued Accept hears of it before the CloseListenerOk (PROTOCOL.md section 4).
        for withdrawn in listener.close():
            await self._reply(AcceptErr.make(withdrawn.request_id, errno.EBADF, "listener closed"))
        await self._reply(CloseListenerOk(request_id=request.request_id, listener_id=request.listener_id))

    # --- connects ----------------------------------------------------------------------------

    async def connect(self, request: Connect) -> None:
        started = self.broker.start_connect(request.endpoint)
        if not isinstance(started, Connecting):
            # Settled at once (loopback): no task, no wait.
            await self.hand_over(started, request)
            return
        scope = trio.CancelScope()
        self.connects[request.request_id] = scope
        self._start(request, functools.partial(self._finish_connect, request, started, scope))

    async def _finish_connect(self, request: Connect, connecting: Connecting, scope: trio.CancelScope) -> None:
        """Wait for the kernel's connect (a Cancel cancels ``scope``), then hand it over, or answer ECANCELED."""
        sock = None
        try:
            with scope:
                sock = await connecting.finish(request.timeout_ms / 1000 if request.timeout_ms else None)
        finally:
            del self.connects[request.request_id]
        if sock is None:  # withdrawn: the Connecting closed its socket
            await self._reply(cancelled_reply(request))
            return
        await self.hand_over(sock, request)

    async def withdraw(self, target: Accept | Connect) -> None:
        """A Cancel's target: withdrawn and answered ECANCELED if still waiting; else its reply stands."""
        if isinstance(target, Connect):
            scope = self.connects.get(target.request_id)
            if scope is not None:
                scope.cancel()  # the Connect's own task sends its ECANCELED reply
            return
        listener = self.listeners.get(target.listener_id)
        if listener is not None and listener.withdraw(target.request_id) is not None:
            await self._reply(cancelled_reply(target))

    # --- connections -------------------------------------------------------------------------

    async def hand_over(self, sock: socket.socket, request: Accept | Connect) -> None:
        """Give a connected socket to the guest: its channel, register, announce, relay.

        Resource handling: owns ``sock`` from the call on; on failure (a limit,
        EMFILE, a peer already gone) it is closed and the request answered with the error.
        """
        sockets = self._sockets()
        try:
            self.broker.admit_connection()
            # No setblocking here: a Connect's socket is made SOCK_NONBLOCK and the listener sets an accepted one.
            local = net.endpoint_of(sock.getsockname())
            peer = net.endpoint_of(sock.getpeername())
            channel = make_socket_channel() if sockets else make_pipe_channel()
        except OSError as exc:
            sock.close()
            await self._reply(error_reply_for(request, request.request_id, exc.errno or errno.EIO, exc.strerror or ""))
            return
        accepted = isinstance(request, Accept)
        reply_type: type[ConnectionReady]
        if sockets:
            reply_type = AcceptSocketOk if accepted else ConnectSocketOk
        else:
            reply_type = AcceptOk if accepted else ConnectOk
        conn = Connection(self.broker.new_connection_id(), sock, local, peer, channel)
        # Register before announcing: the guest's next request may name this connection.
        # The audit line's fields are formatted only when there is an audit log to write them to.
        audited = {"via": "accept" if accepted else "connect", "channel": "socket" if sockets else "pipes",
                   "local": shown(local), "peer": shown(peer)} if self.broker.auditing else {}
        self.broker.connection_opened(conn, **audited)
        self.relay.add(conn)
        try:
            reply = reply_type(request_id=request.request_id, connection_id=conn.connection_id, local=local, peer=peer)
            await self._send(reply, channel.guest_fds)
        finally:
            # Our copies must go, or the guest would never see EOF.
            close_fds(channel.guest_fds)
        self.relay.announce(conn)
        log.debug("session %d: connection %d %s -> %s", self.broker.session, conn.connection_id, local, peer)

    async def abort(self, request: Abort) -> None:
        conn = self.relay.connections.get(request.connection_id)
        if conn is None:
            raise OSError(errno.EBADF, f"no connection {request.connection_id}")
        self.relay.abort(conn)
        await self._reply(AbortOk(request_id=request.request_id, connection_id=request.connection_id))

    async def _reply(self, reply: ControlReply) -> None:
        await self._send(reply, ())

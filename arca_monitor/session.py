"""One guest's session: read requests from its control channel and carry them out.

Every request is answered on the channel, errors included; a log line is
never the only trace of a failure. Slow work (a Connect) runs in a task of
its own, so one request never holds up another.

Resource handling: every listener, pending connect and relayed connection of
the session lives in the session's nursery and its tables. When the control
channel reaches EOF (the guest exited or crashed), when the guest breaks the
protocol beyond repair, or when the session is cancelled, all of them are
closed before :meth:`MonitorSession.run` returns.

Error handling: nothing the guest sends can make ``run`` raise. A bad frame is
answered with an Error reply where its request id is readable, else the
session ends with one log line. An unexpected exception while handling one
request is logged and answered with EIO; it does not end the session.
"""

from __future__ import annotations

import collections
import enum
import errno
import functools
import itertools
import logging
import socket

import trio

from arca_control.protocol import codec, errors
from arca_control.protocol.channel import ControlChannel, close_fds
from arca_control.protocol.messages import (
    Abort,
    AbortOk,
    Accept,
    AcceptErr,
    AcceptOk,
    AcceptSocketOk,
    Cancel,
    CloseListener,
    CloseListenerOk,
    Connect,
    ConnectOk,
    ConnectSocketOk,
    ControlRequest,
    Error,
    GetOption,
    Hello,
    Listen,
    ListenOk,
    OptionValue,
    Resolve,
    ResolveErr,
    ResolveOk,
    SetOption,
    Stats,
    StatsOk,
    UdpBind,
    UdpBindOk,
    UdpClose,
    UdpCloseOk,
    error_reply_for,
    fit_text,
    payload_fields,
)
from arca_control.protocol.server import Incoming, ServerCore, cancelled_reply
from arca_control.protocol.wire import Capability, Endpoint, FamilyFilter, GaiError, ListenFlags, OptionTarget, SockType

from . import net, options
from .audit import AuditLog
from .config import Config
from .listeners import Listener
from .policy import Denied, Kind, Policy
from .relay import Connection, RelayEngine, make_pipe_channel, make_socket_channel
from .resolver import ResolveError, Resolver, parse_literal
from .udp import DatagramRelay, make_channel_pair

log = logging.getLogger("arca_monitor.session")

_session_numbers = itertools.count(1)


_FAMILIES = {FamilyFilter.ANY: 0, FamilyFilter.IPV4: socket.AF_INET, FamilyFilter.IPV6: socket.AF_INET6}
_SOCK_TYPES = {SockType.ANY: 0, SockType.STREAM: socket.SOCK_STREAM, SockType.DGRAM: socket.SOCK_DGRAM}
_SOCK_TYPE_OF = {socket.SOCK_STREAM: SockType.STREAM, socket.SOCK_DGRAM: SockType.DGRAM}


def _shown(value: object) -> object:
    """A field as the audit log writes it: endpoints as host:port, enums by name."""
    if isinstance(value, Endpoint):
        if value.is_unix:
            return value.host
        return f"[{value.host}]:{value.port}" if ":" in value.host else f"{value.host}:{value.port}"
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, tuple):
        return [_shown(item) for item in value]
    return value


def _is_literal(name: str) -> bool:
    """An IP literal (or a malformed one): answered without any lookup."""
    try:
        return parse_literal(name) is not None
    except ResolveError:
        return True


def _capability_for(request: ControlRequest) -> Capability:
    """The capability a request needs granted."""
    if isinstance(request, (UdpBind, UdpClose)):
        return Capability.UDP
    if isinstance(request, (SetOption, GetOption)) and request.target is OptionTarget.DATAGRAM:
        return Capability.UDP
    return Capability.TCP


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
        self.audit = audit or AuditLog(None)
        #: What the guest may reach; the default policy when none is given.
        self.policy = policy or Policy.build({})
        #: Shared by every session of the monitor (one cache); a session alone gets its own.
        self.resolver = resolver or Resolver()
        self.number = next(_session_numbers)
        self.channel = ControlChannel(sock, max_payload=config.max_payload)
        self.core = ServerCore(max_payload=config.max_payload, max_errors=config.max_protocol_errors)
        self.listeners: dict[int, Listener] = {}
        self.relay = RelayEngine(self.send, self._connection_changed)
        #: Every relayed connection, by id (the relay engine's table).
        self.connections: dict[int, Connection] = self.relay.connections
        #: Connect requests in progress, by request id, so Cancel can reach them.
        self._connects: dict[int, trio.CancelScope] = {}
        self._listener_ids = itertools.count(1)
        self._datagram_ids = itertools.count(1)
        #: Resolves waiting for a lookup, by request id.
        self._resolves: set[int] = set()
        #: Counters for Stats: requests by type, error replies by errno, denials, bytes of closed connections.
        self._requests: collections.Counter[int] = collections.Counter()
        self._errors: collections.Counter[int] = collections.Counter()
        self._denials = 0
        self._closed_bytes = [0, 0]
        #: The handler of each request type answered through ``_guarded`` (Resolve chooses its own).
        self._handlers = {
            Listen: self._listen,
            Accept: self._accept,
            Connect: self._start_connect,
            CloseListener: self._close_listener,
            Abort: self._abort,
            SetOption: self._option,
            GetOption: self._option,
            UdpBind: self._udp_bind,
            UdpClose: self._udp_close,
            Stats: self._stats,
        }
        #: UDP sockets, by id: the relay and the scope that ends it.
        self.datagrams: dict[int, tuple[DatagramRelay, trio.CancelScope]] = {}
        self._connection_ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None

    async def run(self) -> None:
        log.info("session %d: started", self.number)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._run_relay)
                try:
                    await self._read_requests()
                except SessionClosed:
                    pass
                nursery.cancel_scope.cancel()
        finally:
            # The guest is gone or lost: close quietly, there is no one to answer.
            for listener in self.listeners.values():
                listener.close()
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
                datagram.data,
                len(datagram.fds) + datagram.fds_truncated,
                truncated=datagram.truncated,
            )
            if isinstance(event, Incoming):
                try:
                    await self._dispatch(event.request)
                except SessionClosed:
                    raise
                except Exception as exc:  # a bug must cost one request, not the session
                    log.error("session %d: internal error on %r: %r", self.number, event.request, exc)
                    await self.send(Error.make(event.request.request_id, errno.EIO, f"internal error: {exc!r}"))
                continue
            verdict = "closing the session after a bad frame" if event.close else "bad frame"
            log.warning("session %d: %s: %s", self.number, verdict, event.reason)
            if event.reply is not None:
                await self.send(event.reply)
            if event.close:
                return

    async def send(self, reply, fds=()) -> None:
        try:
            frame = codec.encode(reply)
        except errors.LocalProtocolError as exc:
            # A reply we cannot encode is our bug: the guest still gets an answer.
            log.error("session %d: internal error: cannot encode %r: %s", self.number, reply, exc)
            frame = codec.encode(Error.make(reply.request_id, errno.EIO, "internal error: unencodable reply"))
            fds = ()
        try:
            await self.channel.send_bytes(frame, fds)
        except (OSError, trio.ClosedResourceError) as exc:
            raise SessionClosed(str(exc)) from None

    async def _dispatch(self, request: ControlRequest) -> None:
        self._requests[int(request.TYPE)] += 1
        if isinstance(request, Hello):
            self._audit_request(request, "allowed")
            await self.send(self.core.hello_reply(request))
        elif isinstance(request, Cancel):
            self._audit_request(request, "allowed")
            self._cancel(request)  # never answered, so there is nothing to send
        elif (needed := _capability_for(request)) not in self.core.capabilities:
            await self.send(Error.make(request.request_id, errno.EOPNOTSUPP, f"{needed.name} was not granted in HelloOk"))
        elif self._is_pending(request.request_id):
            # Cancel names requests by id: two pending with one id would be ambiguous.
            await self.send(Error.make(request.request_id, errno.EBUSY, "request id already in use"))
        elif isinstance(request, Resolve):
            # A literal needs no lookup: answered in order, at once. A lookup can take
            # seconds: it runs in a task of its own, so that no other request waits for it.
            handler = self._resolve if _is_literal(request.name) else self._start_resolve
            await self._guarded(request, handler(request))
        else:
            await self._guarded(request, self._handlers[type(request)](request))

    async def _start_resolve(self, request: Resolve) -> None:
        self.policy.check_resolve(request.name)
        self.config.check("max_in_flight", self._in_flight())
        self._resolves.add(request.request_id)
        self._spawn(self._guarded, request, self._resolve(request))

    async def _resolve(self, request: Resolve) -> None:
        try:
            await self._look_up(request)
        finally:
            self._resolves.discard(request.request_id)

    async def _look_up(self, request: Resolve) -> None:
        family = _FAMILIES[request.family]
        socktype = _SOCK_TYPES[request.socktype]
        try:
            found = await self.resolver.resolve(request.name, request.port, family, socktype)
        except ResolveError as exc:
            await self.send(ResolveErr(request_id=request.request_id, eai=GaiError(-exc.eai),
                                       message=fit_text(exc.message)))
            return
        entries = tuple((_SOCK_TYPE_OF[kind], endpoint) for _, kind, endpoint in found)[:255]
        await self.send(ResolveOk(request_id=request.request_id, addresses=entries))

    async def _udp_bind(self, request: UdpBind) -> None:
        self.config.check("max_datagram_sockets", len(self.datagrams))
        self._check_bind(Kind.UDP, request.endpoint)
        sock = net.open_udp(
            request.endpoint,
            v6only=ListenFlags.V6ONLY in request.flags,
            reuse_port=ListenFlags.REUSEPORT in request.flags,
            reuse_addr=ListenFlags.REUSEADDR in request.flags,
        )
        try:
            local = net.endpoint_of(sock.getsockname())
            self._check_bound(Kind.UDP, sock, local)
            ours, theirs = make_channel_pair()
        except BaseException:
            sock.close()
            raise
        socket_id = next(self._datagram_ids)
        relay = DatagramRelay(sock, ours)
        scope = trio.CancelScope()
        self.datagrams[socket_id] = (relay, scope)
        self._spawn(self._run_datagrams, socket_id, relay, scope)
        try:
            await self.send(UdpBindOk(request_id=request.request_id, socket_id=socket_id, local=local), [theirs.fileno()])
        finally:
            theirs.close()  # ours must go, or the guest's close would not end the relay

    async def _run_datagrams(self, socket_id: int, relay: DatagramRelay, scope: trio.CancelScope) -> None:
        try:
            with scope:
                await relay.run()
        finally:
            self.datagrams.pop(socket_id, None)

    async def _udp_close(self, request: UdpClose) -> None:
        entry = self.datagrams.pop(request.socket_id, None)
        if entry is None:
            raise OSError(errno.EBADF, f"no UDP socket {request.socket_id}")
        entry[1].cancel()
        await self.send(UdpCloseOk(request_id=request.request_id, socket_id=request.socket_id))

    async def _abort(self, request: Abort) -> None:
        conn = self.connections.get(request.connection_id)
        if conn is None:
            raise OSError(errno.EBADF, f"no connection {request.connection_id}")
        self.relay.abort(conn)
        await self.send(AbortOk(request_id=request.request_id, connection_id=request.connection_id))

    async def _option(self, request: SetOption | GetOption) -> None:
        if request.target is OptionTarget.CONNECTION:
            owner = self.connections.get(request.target_id)
        elif request.target is OptionTarget.LISTENER:
            owner = self.listeners.get(request.target_id)
        else:
            owner = self.datagrams.get(request.target_id, (None,))[0]
        if owner is None:
            raise OSError(errno.EBADF, f"no {request.target.name.lower()} {request.target_id}")
        if isinstance(request, SetOption):
            value = options.set_option(owner.sock, request.level, request.name, request.value)
        else:
            value = options.get_option(owner.sock, request.level, request.name)
        await self.send(OptionValue(request_id=request.request_id, value=value & 0xFFFFFFFF))

    def _check_bind(self, kind: Kind, endpoint) -> None:
        """Before binding: the address (and the port, unless the kernel is to choose it)."""
        if endpoint.is_unix:
            self.policy.check_unix(endpoint.host)
        elif endpoint.port:
            self.policy.check_bind(kind, endpoint.host, endpoint.port)

    def _check_bound(self, kind: Kind, sock: socket.socket, local) -> None:
        """After binding: the port the kernel really gave (port 0); closes the socket if denied."""
        if local.is_unix:
            return
        try:
            self.policy.check_bind(kind, local.host, local.port)
        except Denied:
            sock.close()
            raise

    def _peer_allowed(self, peer) -> bool:
        return peer.is_unix or self.policy.check_peer(peer.host)

    async def _start_connect(self, request: Connect) -> None:
        if request.endpoint.is_unix:
            self.policy.check_unix(request.endpoint.host)
        else:
            self.policy.check_connect(
                request.endpoint.host, request.endpoint.port, lambda a: self.resolver.names_for(a, fresh=True)
            )
        self.config.check("max_in_flight", self._in_flight())
        self._admit_connection()
        sock, connected = net.start_connection(request.endpoint)
        if connected:
            # Settled at once (loopback): no task, no wait.
            await self._start_connection(sock, request, ConnectOk)
            return
        scope = trio.CancelScope()
        self._connects[request.request_id] = scope
        self._spawn(self._guarded, request, self._connect(request, sock, scope))

    def _is_pending(self, request_id: int) -> bool:
        return (
            request_id in self._connects
            or request_id in self._resolves
            or any(l.holds(request_id) for l in self.listeners.values())
        )

    async def _guarded(self, request: ControlRequest, work) -> None:
        """Run the handler for ``request``; turn any failure into its error reply. Audit the outcome."""
        try:
            await work
        except SessionClosed:
            raise
        except OSError as exc:
            code = exc.errno or errno.EIO
            verdict = "denied" if isinstance(exc, Denied) else "failed"
            self._denials += verdict == "denied"
            self._errors[code] += 1
            self._audit_request(request, verdict, errno=errno.errorcode.get(code, code), reason=exc.strerror)
            await self.send(error_reply_for(request, request.request_id, code, exc.strerror or str(exc)))
        except Exception as exc:
            log.error("session %d: internal error on %s: %r", self.number, type(request).__name__, exc)
            self._audit_request(request, "failed", errno="EIO", reason="internal error")
            await self.send(error_reply_for(request, request.request_id, errno.EIO, f"internal error: {exc!r}"))
        else:
            self._audit_request(request, "allowed")

    def _audit_request(self, request: ControlRequest, decision: str, **fields: object) -> None:
        if self.audit.enabled:
            named = {f.name: _shown(getattr(request, f.name)) for f in payload_fields(type(request))}
            self.audit.write(self.number, "request", request_id=request.request_id, op=type(request).__name__,
                             **named, decision=decision, **fields)

    async def _stats(self, request: Stats) -> None:
        live_up = sum(conn.bytes_up for conn in self.connections.values())
        live_down = sum(conn.bytes_down for conn in self.connections.values())
        await self.send(StatsOk(
            request_id=request.request_id,
            listeners=len(self.listeners),
            connections=len(self.connections),
            datagram_sockets=len(self.datagrams),
            bytes_up=self._closed_bytes[0] + live_up,
            bytes_down=self._closed_bytes[1] + live_down,
            denials=self._denials,
            requests=tuple(sorted(self._requests.items()))[:255],
            errors=tuple(sorted(self._errors.items()))[:255],
        ))

    def _connection_changed(self, event: str, conn: Connection, **fields: object) -> None:
        if event == "close":
            self._closed_bytes[0] += conn.bytes_up
            self._closed_bytes[1] += conn.bytes_down
        if self.audit.enabled:
            self.audit.write(self.number, event, connection_id=conn.connection_id, **fields)

    def _in_flight(self) -> int:
        return len(self._connects) + len(self._resolves) + self._queued_accepts()

    def _queued_accepts(self) -> int:
        return sum(listener.queued for listener in self.listeners.values())

    def _admit_connection(self) -> None:
        """Raise the limit's error if the session may not hold one more connection."""
        self.config.check("max_connections", len(self.connections))

    async def _listen(self, request: Listen) -> None:
        self.config.check("max_listeners", len(self.listeners))
        self._check_bind(Kind.LISTEN, request.endpoint)
        backlog = min(request.backlog, self.config.max_backlog)
        sock = net.open_listener(
            request.endpoint,
            backlog,
            v6only=ListenFlags.V6ONLY in request.flags,
            reuse_port=ListenFlags.REUSEPORT in request.flags,
        )
        local = net.endpoint_of(sock.getsockname())
        self._check_bound(Kind.LISTEN, sock, local)
        cleanup = None
        if local.is_unix:
            identity = net.socket_file_identity(local.host)
            cleanup = functools.partial(net.unlink_socket_file, sock, local.host, identity)
        listener_id = next(self._listener_ids)
        listener = Listener(
            listener_id, sock, local, self._accepted, self.send, self._admit_connection, cleanup, self._peer_allowed
        )
        self.listeners[listener_id] = listener
        self._spawn(listener.run)
        log.info("session %d: listener %d on %s", self.number, listener_id, local)
        await self.send(ListenOk(request_id=request.request_id, listener_id=listener_id, local=local))

    async def _accept(self, request: Accept) -> None:
        listener = self.listeners.get(request.listener_id)
        if listener is None:
            await self.send(AcceptErr.make(request.request_id, errno.EBADF, f"no listener {request.listener_id}"))
            return
        self.config.check("max_accepts_per_listener", listener.queued)
        self.config.check("max_accepts", self._queued_accepts())
        self.config.check("max_in_flight", self._in_flight())
        listener.enqueue(request)

    async def _accepted(self, sock: socket.socket, request: Accept) -> None:
        await self._start_connection(sock, request, AcceptOk)

    async def _connect(self, request: Connect, sock: socket.socket, scope: trio.CancelScope) -> None:
        timeout = request.timeout_ms / 1000 if request.timeout_ms else self.config.connect_timeout
        try:
            with scope:
                await net.finish_connection(sock, timeout)
        except BaseException:
            trio.lowlevel.notify_closing(sock)
            sock.close()
            raise
        finally:
            del self._connects[request.request_id]
        if scope.cancelled_caught:
            trio.lowlevel.notify_closing(sock)
            sock.close()
            await self.send(cancelled_reply(request))
            return
        await self._start_connection(sock, request, ConnectOk)

    async def _start_connection(self, sock: socket.socket, request: Accept | Connect, reply_type) -> None:
        """Give a connected socket to the guest: its channel, register, announce, relay."""
        sockets = Capability.SOCKET_CHANNEL in self.core.capabilities
        try:
            self._admit_connection()
            sock.setblocking(False)
            local = net.endpoint_of(sock.getsockname())
            peer = net.endpoint_of(sock.getpeername())
            channel = make_socket_channel() if sockets else make_pipe_channel()
        except OSError as exc:  # a limit, EMFILE, or a peer that already left (ENOTCONN)
            sock.close()
            await self.send(error_reply_for(request, request.request_id, exc.errno or errno.EIO, exc.strerror or ""))
            return
        if sockets:
            reply_type = AcceptSocketOk if reply_type is AcceptOk else ConnectSocketOk
        conn = Connection(next(self._connection_ids), sock, local, peer, channel)
        # Register before announcing: the guest's next request may name this connection.
        self.relay.add(conn)
        try:
            reply = reply_type(request_id=request.request_id, connection_id=conn.connection_id, local=local, peer=peer)
            await self.send(reply, channel.guest_fds)
        finally:
            # Our copies must go, or the guest would never see EOF.
            close_fds(channel.guest_fds)
        self.relay.announce(conn)
        if self.audit.enabled:
            self.audit.write(self.number, "open", connection_id=conn.connection_id,
                             via="accept" if issubclass(reply_type, AcceptOk) else "connect",
                             channel="socket" if sockets else "pipes",
                             local=_shown(local), peer=_shown(peer))
        log.debug("session %d: connection %d %s -> %s", self.number, conn.connection_id, local, peer)

    async def _run_relay(self) -> None:
        """The relay: a bug in it ends this session (closing its connections), never the monitor,
        and never leaves the guest's connections hanging with nobody relaying them."""
        try:
            await self.relay.run()
        except SessionClosed:
            pass
        except Exception as exc:
            log.error("session %d: internal error in the relay: %r", self.number, exc)
        self._nursery.cancel_scope.cancel()

    def _spawn(self, fn, *args) -> None:
        self._nursery.start_soon(self._task, fn, *args)

    async def _task(self, fn, *args) -> None:
        """A session task: a lost channel ends the session; a bug ends only this task."""
        try:
            await fn(*args)
        except SessionClosed:
            self._nursery.cancel_scope.cancel()
        except Exception as exc:
            log.error("session %d: internal error in %s: %r", self.number, getattr(fn, "__qualname__", fn), exc)

    async def _close_listener(self, request: CloseListener) -> None:
        listener = self.listeners.pop(request.listener_id, None)
        if listener is None:
            await self.send(Error.make(request.request_id, errno.EBADF, f"no listener {request.listener_id}"))
            return
        for withdrawn in listener.close():
            await self.send(AcceptErr.make(withdrawn.request_id, errno.EBADF, "listener closed"))
        await self.send(CloseListenerOk(request_id=request.request_id, listener_id=request.listener_id))

    def _cancel(self, request: Cancel) -> None:
        # A target that is no longer pending has been (or is being) answered: nothing to do.
        scope = self._connects.get(request.target)
        if scope is not None:
            scope.cancel()  # the Connect's own task sends its ECANCELED reply
            return
        for listener in self.listeners.values():
            withdrawn = listener.withdraw(request.target)
            if withdrawn is not None:
                self._spawn(self.send, cancelled_reply(withdrawn))
                return


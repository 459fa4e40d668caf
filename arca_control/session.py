"""The guest's public API: a trio session with the monitor, and what it opens.

``open_session()`` spawns a monitor for this guest, ``attach_session(path)``
joins one started with ``arca-monitor --socket PATH``. Either way the session
is a context manager, and leaving it closes every stream and listener it
opened.

Many tasks may call the session at once. Each request waits for the reply
with its own id, whatever order replies come in; one reader task routes them
(the rules are in ``core.py``).

Error handling: a request the monitor refuses raises the stdlib ``OSError``
subclass for its errno (``ConnectionRefusedError``, ...). A protocol
violation raises ``ProtocolError``. If the monitor dies, the reader sees the
control channel close at once, and every pending and later call raises
``MonitorGone``; no call hangs.
"""

from __future__ import annotations

import copy
import errno
import logging
import math
import os
import socket
import sys
from contextlib import asynccontextmanager, suppress
from typing import TYPE_CHECKING, TypedDict, TypeVar

import trio

from .datagram import ArcaDatagramSocket
from .handle import Handle
from .protocol import codec, errors
from .protocol.addresses import ip_endpoint, unix_endpoint
from .protocol.channel import ControlChannel, close_fds, socketpair
from .protocol.client import ClientCore, CloseOrphanListener, Discard, KeepAccepted, LateAction, Reply
from .protocol.launch import DOORBELL_RING, MONITOR_ENV, MONITOR_FD_ENV
from .protocol.messages import (
    FAILURES,
    REGISTRY,
    REPLIES,
    Accept,
    CloseListener,
    Connect,
    ConnectionEnd,
    ConnectionReady,
    ControlReply,
    ControlRequest,
    Hello,
    HelloOk,
    Listen,
    MessageType,
    Resolve,
    Stats,
    UdpBind,
)
from .protocol.wire import (
    DEFAULT_CAPABILITIES,
    LENGTH_FIELD_MAX,
    Capability,
    Endpoint,
    FamilyFilter,
    ListenFlags,
    OptionTarget,
    SockType,
)
from .stream import ArcaListener, ArcaStream, EndStatus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

log = logging.getLogger("arca_control")

R = TypeVar("R", bound=ControlReply)

#: How long a spawned monitor gets to exit after its session closes.
MONITOR_EXIT_GRACE = 5.0


def _type_name(kind: int) -> str:
    try:
        return REGISTRY[MessageType(kind)].__name__
    except (ValueError, KeyError):
        return str(kind)


class SessionStats(TypedDict):
    """``ArcaSession.stats()``: what the session holds now and has done so far."""

    listeners: int
    connections: int
    datagram_sockets: int
    bytes_up: int
    bytes_down: int
    denials: int
    #: Requests received, by message type name.
    requests: dict[str, int]
    #: Error replies sent, by errno name.
    errors: dict[str, int]


class _Waiter:
    def __init__(self) -> None:
        self.event = trio.Event()
        self.outcome: Reply | BaseException | None = None

    def deliver(self, outcome: Reply | BaseException) -> None:
        self.outcome = outcome
        self.event.set()

    def result(self) -> Reply:
        """The reply delivered, or raise the error delivered instead."""
        if isinstance(self.outcome, Reply):
            return self.outcome
        raise self.outcome if self.outcome is not None else RuntimeError("nothing was delivered yet")


class _Link:
    """What a session gives each of its handles and listeners (``handle.Link``, ``stream.Connections``)."""

    def __init__(self, session: ArcaSession) -> None:
        self._session = session

    @property
    def closed(self) -> bool:
        return self._session.closed

    async def request(self, request: ControlRequest[R]) -> tuple[R, list[int]]:
        return await self._session.request(request)

    def release(self, handle: Handle) -> None:
        self._session._release(handle)

    async def accept(self, handle: Handle) -> ArcaStream:
        reply, fds = await self._session.request(Accept(listener_id=handle.id))
        return self._session._stream_from(reply, fds)

    def start_soon(self, fn: Callable[[], Awaitable[None]]) -> None:
        self._session._nursery.start_soon(fn)


class ArcaSession:
    """One control channel to a monitor. Build it with ``open_session`` or ``attach_session``.

    ``nursery`` runs the session's own background work (the reply reader,
    prefetching accepts, closing late listeners) and ends with it.
    """

    def __init__(self, channel: ControlChannel, nursery: trio.Nursery) -> None:
        self._channel = channel
        self._nursery = nursery
        self._core = ClientCore()
        self._link = _Link(self)
        self._waiters: dict[int, _Waiter] = {}
        self._ends: dict[int, EndStatus] = {}
        # What the session has open, by the monitor's id: closed with it.
        self._streams: dict[int, ArcaStream] = {}
        self._listeners: dict[int, ArcaListener] = {}
        self._datagrams: dict[int, ArcaDatagramSocket] = {}
        # Tasks waiting in settled(), woken when a late reply has been handled.
        self._late_handled = trio.lowlevel.ParkingLot()
        # Late listeners being closed in the monitor.
        self._orphans = 0
        self._broken: BaseException | None = None
        #: The monitor's HelloOk: its version, capabilities and payload limit.
        self.monitor: HelloOk | None = None
        #: The monitor process, when ``open_session`` spawned it.
        self.process: trio.Process | None = None

    # --- public API -------------------------------------------------------------

    async def listen(
        self,
        host: str,
        port: int,
        *,
        backlog: int = 128,
        prefetch: int = 0,
        v6only: bool = False,
        reuse_port: bool = False,
    ) -> ArcaListener:
        """Listen on ``host:port`` in the monitor; ``port`` 0 lets the kernel choose.

        ``listener.local`` is the address really bound. Raises OSError with the
        kernel's errno (EADDRINUSE, EACCES, ...) here, at listen time.
        ``prefetch`` N keeps N connections accepted ahead (see ``ArcaListener``).
        An IPv6 listener on ``"::"`` takes IPv4 connections too (as
        ``::ffff:a.b.c.d`` peers) unless ``v6only`` is set. ``reuse_port`` sets
        SO_REUSEPORT before the bind, so that several listeners may share the port.
        """
        if prefetch < 0:
            raise ValueError("prefetch must be 0 or more")
        flags = (ListenFlags.V6ONLY if v6only else ListenFlags(0)) | (
            ListenFlags.REUSEPORT if reuse_port else ListenFlags(0)
        )
        return await self._listen(Listen(endpoint=ip_endpoint(host, port), backlog=backlog, flags=flags), prefetch)

    async def listen_unix(self, path: str | os.PathLike[str], *, backlog: int = 128, prefetch: int = 0) -> ArcaListener:
        """Listen on an AF_UNIX stream socket at ``path`` (absolute) in the monitor.

        The monitor removes the socket file when the listener closes.
        Abstract-namespace names are refused.
        """
        return await self._listen(Listen(endpoint=unix_endpoint(path), backlog=backlog), prefetch)

    async def connect_unix(
        self, path: str | os.PathLike[str], *, timeout: float | None = None  # noqa: ASYNC109 (as connect's)
    ) -> ArcaStream:
        """Connect to an AF_UNIX stream socket at ``path`` through the monitor.

        ``timeout`` (seconds) bounds the monitor's connect, as in :meth:`connect`.
        """
        reply, fds = await self.request(Connect(endpoint=unix_endpoint(path), timeout_ms=_milliseconds(timeout)))
        return self._stream_from(reply, fds)

    async def udp_bind(
        self, host: str, port: int, *, v6only: bool = False, reuse_port: bool = False, reuse_addr: bool = False
    ) -> ArcaDatagramSocket:
        """A UDP socket in the monitor, bound to ``host:port`` (port 0: the kernel chooses).

        ``sock.local`` is the address really bound. Datagrams travel over a
        channel that keeps their boundaries (PROTOCOL.md); when the guest does
        not read, the monitor drops them, as a full socket buffer would.
        """
        flags = ListenFlags(0)
        for wanted, flag in ((v6only, ListenFlags.V6ONLY), (reuse_port, ListenFlags.REUSEPORT),
                             (reuse_addr, ListenFlags.REUSEADDR)):
            if wanted:
                flags |= flag
        reply, fds = await self.request(UdpBind(endpoint=ip_endpoint(host, port), flags=flags))
        channel = socket.socket(fileno=fds[0])
        handle = Handle(self._link, OptionTarget.DATAGRAM, reply.socket_id)
        sock = ArcaDatagramSocket(channel, reply.local, handle=handle)
        self._datagrams[reply.socket_id] = sock
        return sock

    async def resolve(
        self, host: str, port: int | None = None, family: int = 0, type: int = 0
    ) -> list[tuple[int, int, Endpoint]]:
        """getaddrinfo, done by the monitor: ``[(family, type, Endpoint), ...]``.

        ``family`` is 0, AF_INET or AF_INET6; ``type`` 0, SOCK_STREAM or
        SOCK_DGRAM. The monitor looks in its hosts file, its cache, then DNS.
        Failures raise ``socket.gaierror`` with getaddrinfo's EAI code.
        """
        if len(host.encode("utf-8", "replace").rstrip(b".")) > 253:
            raise socket.gaierror(socket.EAI_NONAME, "a host name is at most 253 bytes")
        if port is not None and not (isinstance(port, int) and 0 <= port <= 0xFFFF):
            raise socket.gaierror(socket.EAI_SERVICE, f"port {port!r} is out of range")
        try:
            wanted = FamilyFilter.of_socket_family(family)
        except ValueError as exc:
            raise socket.gaierror(socket.EAI_FAMILY, str(exc)) from None
        try:
            socktype = SockType.of_socket_type(type)
        except ValueError as exc:
            raise socket.gaierror(socket.EAI_SOCKTYPE, str(exc)) from None
        reply, _ = await self.request(Resolve(name=host, port=port or 0, family=wanted, socktype=socktype))
        return [(endpoint.socket_family, kind.socket_type, endpoint) for kind, endpoint in reply.addresses]

    async def stats(self) -> SessionStats:
        """This session's counters, from the monitor: what is open, bytes each way,
        requests by type, error replies by errno, and denials by policy."""
        reply, _ = await self.request(Stats())
        return {
            "listeners": reply.listeners,
            "connections": reply.connections,
            "datagram_sockets": reply.datagram_sockets,
            "bytes_up": reply.bytes_up,
            "bytes_down": reply.bytes_down,
            "denials": reply.denials,
            "requests": {_type_name(kind): count for kind, count in reply.requests},
            "errors": {errno.errorcode.get(code, str(code)): count for code, count in reply.errors},
        }

    async def connect(
        # The timeout is the monitor's, for each kernel connect (ETIMEDOUT): not a trio deadline.
        self, host: str, port: int, *, timeout: float | None = None, family: int = 0  # noqa: ASYNC109
    ) -> ArcaStream:
        """Open a TCP connection through the monitor.

        ``host`` is an IP literal, or a name that the monitor resolves; then
        each address is tried in turn (IPv6 first), and the stream's ``peer``
        is the one that worked; if none does, the last error is raised.
        ``timeout`` (seconds) bounds each kernel connect and gives ETIMEDOUT;
        None uses the monitor's default. ``family`` (AF_INET or AF_INET6) limits
        the addresses a name may give. Cancelling the call withdraws it.
        """
        timeout_ms = _milliseconds(timeout)
        try:
            endpoints = [ip_endpoint(host, port)]
        except ValueError:
            if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
                raise
            found = await self.resolve(host, port, family=family, type=socket.SOCK_STREAM)
            endpoints = [endpoint for _, _, endpoint in found]
        last_error: OSError | None = None
        for endpoint in endpoints:
            try:
                reply, fds = await self.request(Connect(endpoint=endpoint, timeout_ms=timeout_ms))
            except (errors.ProtocolError, errors.MonitorGone):
                raise
            except OSError as exc:
                last_error = exc
                continue
            return self._stream_from(reply, fds)
        if last_error is None:  # a ResolveOk with no address at all
            raise socket.gaierror(socket.EAI_NODATA, f"{host} has no address")
        raise last_error

    async def request(self, request: ControlRequest[R]) -> tuple[R, list[int]]:
        """Send one request as it is and wait for its reply: the protocol's own level.

        Returns the success reply, typed by the request (a ``Listen`` gives a
        ``ListenOk``), and the file descriptors that came with it, which are the
        caller's. A failure reply raises its exception: the stdlib ``OSError``
        for its errno, ``socket.gaierror`` for a ResolveErr. The request's id is
        assigned here. Cancelling the call withdraws the request (see ``core``).

        What this opens (a listener, a connection) is the caller's to close; the
        methods above, which use it, are the API for that.
        """
        if not REPLIES[type(request)]:
            raise errors.LocalProtocolError(
                f"{type(request).__name__} has no reply; a request is withdrawn by cancelling the call that waits for it"
            )
        answer = await self._exchange(request)
        reply = answer.reply
        if isinstance(reply, FAILURES):
            raise reply.exception()
        if not request.is_success(reply):  # the core lets through only the replies REPLIES lists
            raise errors.UnexpectedMessage(f"{type(reply).__name__} is no answer to {type(request).__name__}")
        return reply, answer.fds

    async def settled(self) -> None:
        """Wait until every request given up (a cancelled accept, connect or listen) has had
        its late reply, and what came with it has been kept or closed (a late listener
        closed in the monitor too); return at once if there is none."""
        while (self._core.abandoned or self._orphans) and self._broken is None:
            await self._late_handled.park()
        await trio.lowlevel.checkpoint()

    @property
    def streams(self) -> tuple[ArcaStream, ...]:
        """The streams this session has open (closing the session closes them)."""
        return tuple(self._streams.values())

    @property
    def listeners(self) -> tuple[ArcaListener, ...]:
        """The listeners this session has open (closing the session closes them)."""
        return tuple(self._listeners.values())

    @property
    def core(self) -> ClientCore:
        """The protocol state (ids, pending and given-up requests), for tests and tools to read.

        Driving it (``core.send`` with a frame of one's own on :attr:`channel`) is
        speaking the protocol oneself; a test does it to stage what the session never does.
        """
        return self._core

    @property
    def channel(self) -> ControlChannel:
        """The control channel to the monitor (see :attr:`core`)."""
        return self._channel

    @property
    def closed(self) -> bool:
        return self._broken is not None

    async def aclose(self) -> None:
        """Close every stream, UDP socket and listener of this session, then the control channel."""
        if self._broken is None:
            self._fail(trio.ClosedResourceError("this session is closed"))
        for stream in list(self._streams.values()):
            await stream.aclose()
        for datagram_socket in list(self._datagrams.values()):
            await datagram_socket.aclose()
        for listener in list(self._listeners.values()):
            await listener.aclose()  # the session is over: nothing is sent
        self._channel.close()
        await trio.lowlevel.checkpoint()

    def forget_after_fork(self) -> None:
        """In a forked child: close this process's copy of the control channel and nothing
        else, so that the session ends when the parent ends it."""
        self._channel.close_after_fork()

    # --- what the session opens -----------------------------------------------------

    async def _listen(self, request: Listen, prefetch: int) -> ArcaListener:
        reply, _ = await self.request(request)
        handle = Handle(self._link, OptionTarget.LISTENER, reply.listener_id)
        listener = ArcaListener(handle, self._link, reply.local, prefetch)
        self._listeners[reply.listener_id] = listener
        return listener

    def _stream_from(self, reply: ConnectionReady, fds: list[int]) -> ArcaStream:
        end = self._ends.setdefault(reply.connection_id, EndStatus())
        handle = Handle(self._link, OptionTarget.CONNECTION, reply.connection_id)
        stream = ArcaStream(handle, reply.local, reply.peer, fds, end)
        self._streams[reply.connection_id] = stream
        return stream

    def _release(self, handle: Handle) -> None:
        """A stream, listener or UDP socket closed on the guest's side: forget it."""
        if handle.target is OptionTarget.CONNECTION:
            self._streams.pop(handle.id, None)
            self._ends.pop(handle.id, None)
        elif handle.target is OptionTarget.LISTENER:
            self._listeners.pop(handle.id, None)
        else:
            self._datagrams.pop(handle.id, None)

    # --- requests and replies -----------------------------------------------------

    async def _exchange(self, request: ControlRequest[ControlReply]) -> Reply:
        """Send a request and wait for its reply, whichever it is."""
        if self._broken is not None:
            await trio.lowlevel.checkpoint()
            raise copy.copy(self._broken)
        sent, frame = self._core.send(request)
        waiter = _Waiter()
        self._waiters[sent.request_id] = waiter
        try:
            await self._send(frame)
        except BaseException:
            # trio cancels a send only before its syscall: the frame never left.
            self._waiters.pop(sent.request_id, None)
            self._core.forget(sent.request_id)
            raise
        try:
            await waiter.event.wait()
        except BaseException:
            self._abandon(sent.request_id, waiter)
            raise
        return waiter.result()

    def _abandon(self, request_id: int, waiter: _Waiter) -> None:
        """The caller gave up (cancelled): withdraw the request, or keep what already came."""
        self._waiters.pop(request_id, None)
        if isinstance(waiter.outcome, Reply):
            # The reply was delivered but the caller was cancelled before seeing it.
            self._carry_out(self._core.unclaimed(waiter.outcome))
            return
        cancel = self._core.cancel(request_id)
        if cancel is not None and self._broken is None:
            # Best effort, without waiting: a cancelled task cannot wait. If it
            # cannot be sent, the reply still comes, and is handled as late.
            with suppress(OSError):
                self._channel.send_nowait(codec.encode(cancel))

    def _carry_out(self, action: LateAction) -> None:
        """Do what the core decided for a reply nobody waits for."""
        if isinstance(action, KeepAccepted):
            listener = self._listeners.get(action.listener_id)
            if listener is not None and not listener.closed:
                try:
                    listener.backlog.append(self._stream_from(action.reply, action.fds))
                except OSError as exc:  # EMFILE: the connection is lost, the session is not
                    log.warning("an accepted connection could not be kept: %s", exc)
                return
            self._ends.pop(action.reply.connection_id, None)
            close_fds(action.fds)
        elif isinstance(action, CloseOrphanListener):
            self._orphans += 1
            self._nursery.start_soon(self._close_orphan_listener, action.listener_id)
        else:
            if action.connection_id is not None:
                self._ends.pop(action.connection_id, None)  # nobody will read this connection
            close_fds(action.fds)

    async def _close_orphan_listener(self, listener_id: int) -> None:
        try:
            await self.request(CloseListener(listener_id=listener_id))
        except (OSError, trio.ClosedResourceError) as exc:
            log.debug("closing orphan listener %d: %s", listener_id, exc)
        finally:
            self._orphans -= 1
            self._late_handled.unpark_all()

    async def _send(self, frame: bytes) -> None:
        """Send a request's frame. Once this returns, the frame is on its way.

        The frame goes out at once, before any checkpoint, whenever the socket
        has room: then even a caller already cancelled (``aclose`` inside
        ``serve_listeners``' shutdown) gets its request to the monitor, and
        its reply is handled as a late one. Only a full socket means waiting.
        """
        try:
            await self._channel.send_bytes(frame)
        except (OSError, trio.ClosedResourceError) as exc:
            reason = self._fail(errors.MonitorGone(f"cannot reach the monitor: {exc}"))
            raise copy.copy(reason) from None

    async def _read_replies(self) -> None:
        """Route every frame from the monitor until the channel closes. Never raises."""
        reason: BaseException
        try:
            while True:
                datagram = await self._channel.receive()
                if datagram is None:
                    reason = errors.MonitorGone("the monitor closed the control channel")
                    break
                self._route(datagram.data, datagram.fds)
        except errors.ProtocolError as exc:
            log.error("the monitor broke the protocol: %s", exc)
            reason = exc
        except (OSError, trio.ClosedResourceError) as exc:
            reason = errors.MonitorGone(f"control channel failed: {exc}")
        self._fail(reason)

    def _route(self, data: bytes, fds: list[int]) -> None:
        if self._broken is not None:
            # Closing: replies still in flight have nobody to go to.
            close_fds(fds)
            return
        try:
            event = self._core.receive(data, fds)
        except BaseException:
            close_fds(fds)
            raise
        if isinstance(event, ConnectionEnd):
            end = self._ends.get(event.connection_id)
            if end is not None:
                end.set(event.status)
        elif isinstance(event, Reply):
            if isinstance(event.reply, ConnectionReady):
                # Ready for its ConnectionEnd, which may follow before the caller runs.
                self._ends.setdefault(event.reply.connection_id, EndStatus())
            self._waiters.pop(event.request.request_id).deliver(event)
        elif isinstance(event, (KeepAccepted, CloseOrphanListener, Discard)):
            self._carry_out(event)
            self._late_handled.unpark_all()

    def _fail(self, reason: BaseException) -> BaseException:
        """The session is over: release every waiter, now and for good. Returns why it is
        over (``reason``, or the reason it already was)."""
        if self._broken is not None:
            return self._broken
        self._broken = reason
        self._core.close()
        for waiter in self._waiters.values():
            waiter.deliver(copy.copy(reason))  # one exception object per raising task
        self._waiters.clear()
        for end in self._ends.values():
            end.set(None)
        self._late_handled.unpark_all()
        return reason

    async def _handshake(self, socket_channel: bool) -> None:
        wanted = DEFAULT_CAPABILITIES | (Capability.SOCKET_CHANNEL if socket_channel else Capability(0))
        reply, _ = await self.request(Hello(capabilities=wanted))
        if Capability.TCP not in reply.capabilities:
            raise errors.UnexpectedMessage(f"the monitor does not offer TCP: {reply!r}")
        if socket_channel and Capability.SOCKET_CHANNEL not in reply.capabilities:
            raise errors.error_from_errno(errno.EOPNOTSUPP, "this monitor does not offer the socket channel")
        self.monitor = reply

    @property
    def socket_channel(self) -> bool:
        """Whether this session's connections come as sockets (else as pipes)."""
        return self.monitor is not None and Capability.SOCKET_CHANNEL in self.monitor.capabilities


def _milliseconds(timeout: float | None) -> int:
    """A connect timeout as the wire carries it: 0 for the monitor's default, else at least 1 ms."""
    return 0 if timeout is None else max(1, math.ceil(timeout * 1000))


@asynccontextmanager
async def _run_session(sock: socket.socket, socket_channel: bool = False) -> AsyncIterator[ArcaSession]:
    channel = ControlChannel(sock, max_payload=LENGTH_FIELD_MAX)
    try:
        async with trio.open_nursery() as nursery:
            session = ArcaSession(channel, nursery)
            nursery.start_soon(session._read_replies)
            try:
                await session._handshake(socket_channel)
                yield session
            finally:
                with trio.CancelScope(shield=True):
                    await session.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The reader never raises, so the group holds only what the caller's own
        # code raised: give it back as it was, not wrapped (strict exception groups).
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


def monitor_command() -> list[str]:
    """The default command that runs a monitor: this interpreter, ``-m arca_monitor``."""
    return [sys.executable, "-m", "arca_monitor"]


@asynccontextmanager
async def open_session(
    *monitor_args: str, command: Sequence[str] | None = None, socket_channel: bool = False
) -> AsyncIterator[ArcaSession]:
    """Spawn a monitor for this guest and open a session with it.

    ``monitor_args`` are extra ``arca-monitor`` options (``"--connect-timeout", "5"``).
    ``command`` replaces the command that starts the monitor, for example to
    run it under ``unshare``; ``--fd N`` and ``monitor_args`` are appended.
    ``socket_channel`` asks for connections as sockets, not pipes
    (PROTOCOL.md section 5): slower, but ``stream.detach()`` then gives a
    real ``socket.socket``.

    Resource handling: the monitor is a child process that lives exactly as
    long as the session; on exit the control channel is closed, the monitor
    exits 0 and is reaped (killed if it does not exit within a few seconds).

    Under ``arca-run`` and with no ``command``, this attaches to arca-run's
    monitor instead: a sandboxed guest has no network to spawn one with, and
    ``monitor_args`` are arca-run's to give. It rings the doorbell that
    ``ARCA_MONITOR_FD`` names (:func:`doorbell_session`) when that is set,
    else connects to the socket path ``ARCA_MONITOR`` names.
    """
    if command is None and os.environ.get(MONITOR_FD_ENV):
        try:
            fd = int(os.environ[MONITOR_FD_ENV])
        except ValueError:
            raise errors.error_from_errno(errno.EBADF, f"{MONITOR_FD_ENV} is not a descriptor number") from None
        async with doorbell_session(fd, socket_channel=socket_channel) as session:
            yield session
        return
    if command is None and os.environ.get(MONITOR_ENV):
        async with attach_session(os.environ[MONITOR_ENV], socket_channel=socket_channel) as session:
            yield session
        return
    ours, theirs = socketpair()
    argv = [*(command or monitor_command()), "--fd", str(theirs.fileno()), *monitor_args]
    try:
        process = await trio.lowlevel.open_process(argv, pass_fds=(theirs.fileno(),))
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    try:
        async with _run_session(ours, socket_channel) as session:
            session.process = process
            yield session
    finally:
        with trio.CancelScope(shield=True):
            await _reap(process)


async def _reap(process: trio.Process) -> None:
    with trio.move_on_after(MONITOR_EXIT_GRACE):
        await process.wait()
        return
    log.warning("the monitor did not exit; killing it")
    process.kill()
    await process.wait()


@asynccontextmanager
async def attach_session(
    path: str | os.PathLike[str], *, socket_channel: bool = False
) -> AsyncIterator[ArcaSession]:
    """Open a session with a monitor serving ``arca-monitor --socket PATH``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        await trio.socket.from_stdlib_socket(sock).connect(os.fspath(path))
    except BaseException:
        sock.close()
        raise
    async with _run_session(sock, socket_channel) as session:
        yield session


@asynccontextmanager
async def doorbell_session(fd: int, *, socket_channel: bool = False) -> AsyncIterator[ArcaSession]:
    """Open a session through a monitor's doorbell: the inherited, connected SEQPACKET socket ``fd``.

    A new socketpair's one end goes to the monitor over ``fd`` (SCM_RIGHTS), which serves a session on
    it; this process keeps the other. No AF_UNIX socket is created, so this works under arca-run's
    seccomp filter. ``fd`` stays open (other sessions, and other processes, ring it too). OSError
    (EBADF, ENOTSOCK, EPROTOTYPE) if ``fd`` is no AF_UNIX SOCK_SEQPACKET socket: for example a child
    process that did not inherit it (Python's ``subprocess`` closes it unless given ``pass_fds``).
    """
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        await _ring(fd, theirs)
    except BaseException:
        ours.close()
        raise
    finally:
        theirs.close()
    async with _run_session(ours, socket_channel) as session:
        yield session


async def _ring(fd: int, end: socket.socket) -> None:
    """Send ``end`` over the doorbell ``fd``, leaving ``fd`` (and its blocking mode, shared with every
    process holding it) as it was."""
    doorbell = socket.socket(fileno=fd)
    try:
        if doorbell.family != socket.AF_UNIX or doorbell.type != socket.SOCK_SEQPACKET:
            raise errors.error_from_errno(errno.EPROTOTYPE, f"{MONITOR_FD_ENV}={fd} is no SEQPACKET socket")
        while True:
            try:
                socket.send_fds(doorbell, [DOORBELL_RING], [end.fileno()], socket.MSG_DONTWAIT)
                return
            except BlockingIOError:
                await trio.lowlevel.wait_writable(doorbell)
    finally:
        doorbell.detach()

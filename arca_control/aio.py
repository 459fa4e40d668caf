"""The asyncio API: asyncio's own streams and servers, over connections the monitor relays.

    async with arca_control.aio.open_session() as s:
        reader, writer = await s.open_connection("example.org", 443, ssl=ctx)
        server = await s.start_server(handle, "127.0.0.1", 0)
        infos = await s.getaddrinfo("example.org", 443)

Each call mirrors its asyncio namesake and returns what asyncio returns: real
``asyncio.StreamReader`` and ``asyncio.StreamWriter`` objects, built by
asyncio itself over the connection's socket (the socket channel, PROTOCOL.md
section 5), so ``ssl=``, ``write_eof()``, ``get_extra_info("peername")`` and
the rest behave as asyncio documents them.

The requests run in the session's trio thread (``portal.py``); the event
loop never blocks on them. Cancelling a call withdraws its request; a
connection that arrives anyway is closed. Errors are asyncio's: ``OSError``
subclasses with the real errno, ``socket.gaierror``, ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Self, TypeVar, TypeVarTuple

from .portal import Portal, discard_result
from .session import ArcaSession, SessionStats
from .session import open_session as _open_trio_session
from .stream import ArcaListener
from .sync import AddrInfo, IPAddress, accept, close_listener, connect, getaddrinfo, stats

if TYPE_CHECKING:
    import concurrent.futures
    import socket
    from collections.abc import AsyncIterator, Awaitable, Callable
    from ssl import SSLContext
    from typing import TypeAlias

    #: What asyncio calls with a connection's reader and writer.
    ConnectedCallback: TypeAlias = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None] | None]

T = TypeVar("T")
Args = TypeVarTuple("Args")

log = logging.getLogger("arca_control.aio")

#: asyncio's default stream buffer limit.
LIMIT = 2**16
#: Accept errors that mean "out of descriptors, for now": back off, as asyncio's own servers do.
ACCEPT_BACKOFF = 0.1


class Session:
    """An asyncio session with a monitor; build it with :func:`open_session`."""

    def __init__(self, portal: Portal) -> None:
        self._portal = portal

    async def open_connection(
        self,
        host: str,
        port: int,
        *,
        ssl: bool | SSLContext | None = None,
        server_hostname: str | None = None,
        limit: int = LIMIT,
        ssl_handshake_timeout: float | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 -- it bounds the monitor's connect, in another thread
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Like ``asyncio.open_connection``: connect through the monitor, then (with ``ssl``) handshake.

        ``server_hostname`` defaults to ``host``, as asyncio's does.
        ``timeout`` bounds the connect (not the TLS handshake).
        """
        sock = await self._call(connect, host, port, timeout)
        sock.setblocking(False)
        if ssl and server_hostname is None:
            server_hostname = host
        try:
            return await asyncio.open_connection(
                sock=sock, ssl=ssl, server_hostname=server_hostname if ssl else None, limit=limit,
                ssl_handshake_timeout=ssl_handshake_timeout if ssl else None,
            )
        except BaseException:
            sock.close()
            raise

    async def start_server(
        self,
        client_connected_cb: ConnectedCallback,
        host: str | None = None,
        port: int = 0,
        *,
        ssl: SSLContext | None = None,
        backlog: int = 100,
        limit: int = LIMIT,
        ssl_handshake_timeout: float | None = None,
        start_serving: bool = True,
        reuse_port: bool = False,
    ) -> Server:
        """Like ``asyncio.start_server``: listen in the monitor and call ``client_connected_cb``
        with a reader and a writer for each connection.

        ``host`` None listens on every address, as asyncio's does: one dual-stack
        ``::`` socket (IPv4 clients too), or ``0.0.0.0`` where the monitor's host
        has no IPv6. ``reuse_port`` sets SO_REUSEPORT before the bind.
        """

        async def listen(session: ArcaSession) -> ArcaListener:
            if host is not None:
                return await session.listen(host, port, backlog=backlog, reuse_port=reuse_port)
            try:
                return await session.listen("::", port, backlog=backlog, reuse_port=reuse_port)
            except OSError as exc:
                if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                    raise
                return await session.listen("0.0.0.0", port, backlog=backlog, reuse_port=reuse_port)

        listener = await self._call(listen)
        server = Server(self, listener, client_connected_cb, ssl, limit, ssl_handshake_timeout)
        if start_serving:
            await server.start_serving()
        return server

    async def getaddrinfo(self, host: str | bytes | None, port: str | bytes | int | None, *, family: int = 0,
                          type: int = 0, proto: int = 0, flags: int = 0) -> list[AddrInfo]:
        """Like ``loop.getaddrinfo``, with names looked up by the monitor."""
        return await self._call(getaddrinfo, host, port, family, type, proto, flags)

    async def stats(self) -> SessionStats:
        """This session's counters, from the monitor (as ``ArcaSession.stats``)."""
        return await self._call(stats)

    async def aclose(self) -> None:
        """Close the session (and the monitor it spawned), without blocking the loop."""
        await asyncio.to_thread(self._portal.close)

    async def _call(self, fn: Callable[[ArcaSession, *Args], Awaitable[T]], *args: *Args) -> T:
        """Run ``fn(session, *args)`` in the session's thread and await it; cancelling withdraws it."""
        future = self._portal.submit(fn, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            self._portal.cancel(future)
            future.add_done_callback(self._discard)
            raise

    def _discard(self, future: concurrent.futures.Future[T]) -> None:
        """What a withdrawn call produced anyway: nobody will use it, so close it."""
        result = future.result() if not future.cancelled() and future.exception() is None else None
        if isinstance(result, ArcaListener):
            self._portal.submit(close_listener, result)
        else:
            discard_result(future)


class _Address:
    """What ``Server.sockets`` holds: the bound address, as ``getsockname()`` gives it."""

    def __init__(self, address: IPAddress) -> None:
        self._address = address

    def getsockname(self) -> IPAddress:
        return self._address

    def __repr__(self) -> str:
        return f"<arca listening socket {self._address}>"


class Server:
    """Like ``asyncio.Server``: ``serve_forever``, ``close``, ``wait_closed``, ``sockets``.

    Resource handling: ``close()`` stops accepting and closes the monitor's
    listening socket; connections already made stay open, and
    ``wait_closed()`` waits for them too (asyncio 3.12's rule).
    """

    def __init__(self, session: Session, listener: ArcaListener, callback: ConnectedCallback,
                 ssl: SSLContext | None, limit: int, ssl_handshake_timeout: float | None) -> None:
        self._session = session
        self._listener = listener
        self._callback = callback
        self._ssl = ssl
        self._limit = limit
        self._ssl_handshake_timeout = ssl_handshake_timeout
        self._loop = asyncio.get_running_loop()
        self._accepting: asyncio.Task[None] | None = None
        self._closed = False
        self._listener_closed: asyncio.Future[None] | None = None
        self._connections: set[asyncio.BaseProtocol] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        #: The bound address, with the kernel's port for port 0, as ``server.sockets[0].getsockname()``.
        self.sockets = (_Address(listener.local.ip_sockaddr()),)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._accepting is not None and not self._accepting.done()

    async def start_serving(self) -> None:
        self._start()
        await asyncio.sleep(0)

    async def serve_forever(self) -> None:
        """Serve until cancelled; then close the server, as asyncio's does."""
        accepting = self._start()
        await asyncio.sleep(0)
        try:
            await asyncio.shield(accepting)
        except asyncio.CancelledError:
            try:
                self.close()
                await self.wait_closed()
            finally:
                raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._accepting is not None:
            self._accepting.cancel()
        self._listener_closed = asyncio.wrap_future(self._session._portal.submit(close_listener, self._listener))

    async def wait_closed(self) -> None:
        if self._listener_closed is not None:
            try:
                await self._listener_closed
            except OSError as exc:
                log.debug("closing the listener: %r", exc)
        if self._accepting is not None:
            await asyncio.gather(self._accepting, return_exceptions=True)
        await self._idle.wait()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()

    def _start(self) -> asyncio.Task[None]:
        """The task that accepts connections, started the first time."""
        if self._closed:
            raise RuntimeError(f"server {self!r} is closed")
        if self._accepting is None:
            self._accepting = self._loop.create_task(self._accept_loop())
        return self._accepting

    async def _accept_loop(self) -> None:
        while not self._closed:
            try:
                sock = await self._session._call(accept, self._listener)
            except OSError as exc:
                if self._closed or exc.errno == errno.EBADF:
                    return
                log.error("accepting on %s: %r", self.sockets[0].getsockname(), exc)
                await asyncio.sleep(ACCEPT_BACKOFF)
                continue
            sock.setblocking(False)
            self._loop.create_task(self._connected(sock))

    async def _connected(self, sock: socket.socket) -> None:
        reader = asyncio.StreamReader(limit=self._limit, loop=self._loop)
        protocol = _ServerProtocol(self, reader, self._callback)
        try:
            await self._loop.connect_accepted_socket(
                lambda: protocol, sock, ssl=self._ssl, ssl_handshake_timeout=self._ssl_handshake_timeout if self._ssl else None
            )
        except Exception as exc:  # a failed TLS handshake ends that connection, not the server
            log.debug("connection from %s failed to start: %r", sock.getpeername(), exc)
            sock.close()

    def _attach(self, protocol: asyncio.BaseProtocol) -> None:
        self._connections.add(protocol)
        self._idle.clear()

    def _detach(self, protocol: asyncio.BaseProtocol) -> None:
        self._connections.discard(protocol)
        if not self._connections:
            self._idle.set()


class _ServerProtocol(asyncio.StreamReaderProtocol):
    """asyncio's own server-side stream protocol, counted by its server for ``wait_closed``."""

    def __init__(self, server: Server, reader: asyncio.StreamReader, callback: ConnectedCallback) -> None:
        super().__init__(reader, callback, loop=server.get_loop())
        self._server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._server._attach(self)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._detach(self)
        super().connection_lost(exc)


@asynccontextmanager
async def open_session(*monitor_args: str) -> AsyncIterator[Session]:
    """An asyncio session: attaches to ``ARCA_MONITOR`` when set, else spawns a monitor.

    ``monitor_args`` are extra ``arca-monitor`` options. Leaving the block
    closes the session.
    """
    portal = Portal(lambda: _open_trio_session(*monitor_args, socket_channel=True))
    starting = asyncio.get_running_loop().run_in_executor(None, portal.start)
    try:
        await asyncio.shield(starting)
    except asyncio.CancelledError:
        # The start goes on in its thread: close what it opens (off the loop) once it is done.
        starting.add_done_callback(lambda _: threading.Thread(target=portal.close, daemon=True).start())
        raise
    session = Session(portal)
    try:
        yield session
    finally:
        await session.aclose()

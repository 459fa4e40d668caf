"""The guest's view of a connection and of a listener, as trio stream types.

An :class:`ArcaStream` reads the connection's rx pipe and writes its tx pipe,
the two descriptors the monitor passed with ConnectionReady. It is a faithful
``trio.abc.HalfCloseableStream``: ``send_eof`` closes tx (the monitor then
shuts the socket down for writing), EOF on rx is confirmed by the monitor's
ConnectionEnd status (a reset raises ``trio.BrokenResourceError`` instead of
looking like a clean end), and use after close or by two tasks at once raises
``ClosedResourceError`` or ``BusyResourceError`` as trio specifies.

An :class:`ArcaListener` is a ``trio.abc.Listener``, so
``trio.serve_listeners(handler, [listener])`` works on it.
"""

from __future__ import annotations

import errno
from collections import deque
from contextlib import contextmanager
from typing import TYPE_CHECKING

import trio

from .errors import error_from_errno
from .wire import Endpoint

if TYPE_CHECKING:
    from .session import ArcaSession


class _ConflictDetector:
    """Raise BusyResourceError when two tasks use one side of a stream at once."""

    def __init__(self, message: str) -> None:
        self._message = message
        self._held = False

    @contextmanager
    def hold(self):
        if self._held:
            raise trio.BusyResourceError(self._message)
        self._held = True
        try:
            yield
        finally:
            self._held = False


class EndStatus:
    """How the monitor says a connection's receive direction ended."""

    def __init__(self) -> None:
        self.event = trio.Event()
        #: 0: clean EOF; an errno: the connection failed; None: the monitor is gone.
        self.status: int | None = None

    def set(self, status: int | None) -> None:
        if not self.event.is_set():
            self.status = status
            self.event.set()


class ArcaStream(trio.abc.HalfCloseableStream):
    """A TCP connection relayed by the monitor.

    Resource handling: owns the two pipe descriptors from construction on;
    :meth:`aclose` closes both, and is safe to call more than once.
    """

    def __init__(
        self,
        session: ArcaSession,
        connection_id: int,
        local: Endpoint,
        peer: Endpoint,
        rx_fd: int,
        tx_fd: int,
        end: EndStatus,
    ) -> None:
        self.session = session
        self.connection_id = connection_id
        self.local = local
        self.peer = peer
        self._rx = trio.lowlevel.FdStream(rx_fd)
        self._tx = trio.lowlevel.FdStream(tx_fd)
        self._end = end
        self._send_conflict = _ConflictDetector("another task is using this stream for sending")
        self._receive_conflict = _ConflictDetector("another task is receiving on this stream")
        self._eof_sent = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<ArcaStream #{self.connection_id} {self.local[0]}:{self.local[1]} -> {self.peer[0]}:{self.peer[1]}>"

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_conflict.hold():
            self._check_open()
            if self._eof_sent:
                raise trio.ClosedResourceError("send_eof() was called on this stream")
            await self._tx.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_conflict.hold():
            self._check_open()
            if self._eof_sent:
                raise trio.ClosedResourceError("send_eof() was called on this stream")
            await self._tx.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        with self._send_conflict.hold():
            self._check_open()
            if self._eof_sent:
                await trio.lowlevel.checkpoint()
                return
            self._eof_sent = True
            self._tx.close()
            await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        with self._receive_conflict.hold():
            self._check_open()
            data = await self._rx.receive_some(max_bytes)
            if data:
                return data
            # EOF on the pipe: the monitor's ConnectionEnd says whether it was clean.
            await self._end.event.wait()
            self._check_open()
            status = self._end.status
            if status is None:
                raise trio.BrokenResourceError("the monitor is gone; the connection may be incomplete")
            if status:
                raise trio.BrokenResourceError(f"connection {self.connection_id} failed") from error_from_errno(status)
            return b""

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.session._forget_stream(self)
            # Wake a receive_some still waiting for the end status.
            self._end.set(errno.EBADF)
        # Close both before the checkpoint: a cancelled aclose must still close everything.
        self._rx.close()
        self._tx.close()
        await trio.lowlevel.checkpoint()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this stream is closed")


class ArcaListener(trio.abc.Listener[ArcaStream]):
    """A listening socket in the monitor.

    ``accept`` may be called by many tasks at once: the monitor queues them.
    A connection accepted for an ``accept`` that was cancelled meanwhile is
    kept in :attr:`backlog` and handed to the next ``accept``, so none is lost.
    """

    def __init__(self, session: ArcaSession, listener_id: int, local: Endpoint) -> None:
        self.session = session
        self.listener_id = listener_id
        self.local = local
        self.backlog: deque[ArcaStream] = deque()
        self._closed = False

    def __repr__(self) -> str:
        return f"<ArcaListener #{self.listener_id} {self.local[0]}:{self.local[1]}>"

    @property
    def closed(self) -> bool:
        return self._closed

    async def accept(self) -> ArcaStream:
        if self._closed:
            raise trio.ClosedResourceError("this listener is closed")
        if self.backlog:
            await trio.lowlevel.checkpoint()
            return self.backlog.popleft()
        try:
            return await self.session._accept(self)
        except OSError as exc:
            if self._closed and exc.errno == errno.EBADF:
                raise trio.ClosedResourceError("this listener was closed") from None
            raise

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        while self.backlog:
            await self.backlog.popleft().aclose()
        await self.session._close_listener(self)

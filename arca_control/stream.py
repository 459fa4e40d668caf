"""The guest's view of a connection and of a listener, as trio stream types.

An :class:`ArcaStream` reads the connection's rx pipe and writes its tx
socket (one-way, a pipe in all but speed), the two descriptors the monitor
passed with ConnectionReady. It is a faithful
``trio.abc.HalfCloseableStream``: ``send_eof`` closes tx (the monitor then
shuts the socket down for writing), EOF on rx is confirmed by the monitor's
ConnectionEnd status (a reset raises ``trio.BrokenResourceError`` instead of
looking like a clean end), and use after close or by two tasks at once raises
``ClosedResourceError`` or ``BusyResourceError`` as trio specifies.

On the socket channel (a session opened with ``socket_channel=True``) the
stream reads and writes one AF_UNIX stream socket instead, through one fd
for both directions, and ``send_eof`` is ``shutdown(SHUT_WR)``; :meth:`ArcaStream.detach`
then hands the caller that socket as a plain ``socket.socket``.

An :class:`ArcaListener` is a ``trio.abc.Listener``, so
``trio.serve_listeners(handler, [listener])`` works on it.

Both reach their session only through their :class:`~arca_control.handle.Handle`
(options, abort, close) and, for a listener, its :class:`Connections` (accepted
streams, and the nursery that fetches them ahead).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections import deque
from typing import TYPE_CHECKING, Protocol, Self

import trio

from .protocol.errors import error_from_errno, stream_failure

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from typing import TypeVar

    from .handle import Handle
    from .protocol.wire import Endpoint

    T = TypeVar("T")
    R = TypeVar("R")


#: How long a failed send waits for the monitor to say why the connection failed.
SEND_FAILURE_WAIT = 1.0
#: What ``receive_some()`` with no size reads at most (trio's own default for its streams).
DEFAULT_RECEIVE_SIZE = 65536


def _readv_into(fd: int, buffer: bytearray | memoryview) -> int:
    return os.readv(fd, [buffer])


def _shutdown_write(fd: int) -> None:
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass  # the monitor's end is gone: the connection is over anyway
    finally:
        sock.detach()


class _Fd:
    """One descriptor a stream owns, non-blocking; its number is -1 once closed.

    What trio's FdStream holds, without what this stream does not need: FdStream reads the
    blocking mode, sets it, and sets it back at close (3 syscalls per descriptor, 6 per
    connection), for a descriptor the guest shares with no one. A use after close finds -1
    (EBADF), never another descriptor that reused the number.
    """

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd  # owned from here on: __del__ closes it if setting the mode fails
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self.fd

    async def wait_writable(self) -> None:
        if self.fd < 0:
            raise trio.ClosedResourceError("file was already closed")
        await trio.lowlevel.wait_writable(self.fd)

    def close(self, *, waited_on: bool = True) -> None:
        """Close it; ``waited_on=False`` says no task can be waiting on it, so there is none to wake
        (trio's ``notify_closing`` also unregisters the fd from epoll: a failing syscall for an fd
        no task waits on, which the kernel drops from epoll at close anyway)."""
        fd, self.fd = self.fd, -1
        if fd >= 0:
            if waited_on:
                trio.lowlevel.notify_closing(fd)  # wakes a task still waiting on it, with ClosedResourceError
            os.close(fd)

    def __del__(self) -> None:
        # Garbage without aclose(): no task can be waiting on it, so there is none to wake.
        if self.fd >= 0:
            os.close(self.fd)


class ConflictDetector:
    """Raise BusyResourceError when two tasks use one side of a stream (or socket) at once.

    Use it as ``with detector:`` (or ``with detector.hold():``). A plain class
    rather than a generator context manager: it is entered on every read and
    write, and a generator's enter and exit cost more than the rest of a 64 KiB
    ``send_all`` in Python (docs/PERFORMANCE.md, "Where the time goes").
    """

    __slots__ = ("_held", "_message")

    def __init__(self, message: str) -> None:
        self._message = message
        self._held = False

    def hold(self) -> Self:
        return self

    def __enter__(self) -> None:
        if self._held:
            raise trio.BusyResourceError(self._message)
        self._held = True

    def __exit__(self, *exc_info: object) -> None:
        self._held = False

    @property
    def held(self) -> bool:
        """Whether a task is inside it now (so perhaps waiting on the stream's fds)."""
        return self._held


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

    Resource handling: owns the descriptors passed to it (the rx pipe's and tx socket's ends, or
    one socket) from construction on; :meth:`aclose` closes them, and is safe
    to call more than once; :meth:`detach` gives a socket away instead.
    """

    def __init__(self, handle: Handle, local: Endpoint, peer: Endpoint, fds: list[int], end: EndStatus) -> None:
        #: The connection in its session: options and abort by connection id, also after :meth:`detach`.
        self.handle = handle
        self.connection_id = handle.id
        self.local = local
        self.peer = peer
        #: True on the socket channel: one AF_UNIX stream socket, not an rx pipe and a tx socket.
        self.is_socket = len(fds) == 1
        self._rx = _Fd(fds[0])
        # On the socket channel one descriptor serves both directions: one fd per connection,
        # not two, so that as many connections fit as the monitor can hold.
        self._tx = self._rx if self.is_socket else _Fd(fds[1])
        self._end = end
        self._send_conflict = ConflictDetector("another task is using this stream for sending")
        self._receive_conflict = ConflictDetector("another task is receiving on this stream")
        self._eof_sent = False
        self._closed = False

    def __repr__(self) -> str:
        return f"<ArcaStream #{self.connection_id} {self.local[0]}:{self.local[1]} -> {self.peer[0]}:{self.peer[1]}>"

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        # Writes tx directly, as trio's SocketStream writes its socket: a cancel point before
        # the first write, a schedule point after it unless a wait was one already; one layer,
        # not ArcaStream over FdStream (half the guest's CPU on a 64 KiB upload was Python).
        with self._send_conflict:
            self._check_open()
            if self._eof_sent:
                raise trio.ClosedResourceError("send_eof() was called on this stream")
            fd = self._tx.fileno()
            await trio.lowlevel.checkpoint_if_cancelled()
            waited = False
            with memoryview(data) as view:
                sent, length = 0, len(view)
                while sent < length:
                    try:
                        sent += os.write(fd, view[sent:] if sent else view)
                    except BlockingIOError:
                        waited = True
                        await trio.lowlevel.wait_writable(fd)
                    except OSError as exc:
                        if exc.errno == errno.EBADF:
                            raise trio.ClosedResourceError("this stream is closed") from None
                        broken = trio.BrokenResourceError()
                        broken.__cause__ = exc
                        raise await self._send_failure(broken) from broken
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_conflict.hold():
            self._check_open()
            if self._eof_sent:
                raise trio.ClosedResourceError("send_eof() was called on this stream")
            await self._tx.wait_writable()

    async def send_eof(self) -> None:
        with self._send_conflict.hold():
            self._check_open()
            if self._eof_sent:
                await trio.lowlevel.checkpoint()
                return
            self._eof_sent = True
            if self.is_socket:
                _shutdown_write(self._tx.fileno())  # rx reads on through the same fd
            else:
                self._tx.close()
            await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        with self._receive_conflict:
            self._check_open()
            if max_bytes is None:
                max_bytes = DEFAULT_RECEIVE_SIZE
            elif not isinstance(max_bytes, int):
                raise TypeError("max_bytes must be integer >= 1")
            elif max_bytes < 1:
                raise ValueError("max_bytes must be integer >= 1")
            fd = self._rx.fileno()
            await trio.lowlevel.checkpoint_if_cancelled()
            data = await self._read(fd, os.read, max_bytes)
            if not data:
                await self._confirm_eof()
            return data

    async def receive_into(self, buffer: bytearray | memoryview) -> int:
        """Like ``receive_some``, into ``buffer``: the bytes read, 0 at EOF.

        Reads straight from the rx pipe into the caller's buffer, with no
        allocation per chunk: the fast way to take in bulk data.
        """
        with self._receive_conflict:
            self._check_open()
            if not len(buffer):
                raise ValueError("the buffer must not be empty")
            fd = self._rx.fileno()
            await trio.lowlevel.checkpoint_if_cancelled()
            count = await self._read(fd, _readv_into, buffer)
            if not count:
                await self._confirm_eof()
            return count

    @staticmethod
    async def _read(fd: int, read: Callable[[int, T], R], arg: T) -> R:
        """``read(fd, arg)`` on the non-blocking rx, waiting for it when it has nothing.

        Tries before waiting, as trio's own sockets do: a read that finds bytes
        costs no trip through the scheduler's I/O wait, and ends with a schedule
        point; one that had to wait has had its checkpoint in the wait. The
        caller has passed its cancel point (``checkpoint_if_cancelled``) already.
        """
        waited = False
        while True:
            try:
                result = read(fd, arg)
                break
            except BlockingIOError:
                waited = True
                await trio.lowlevel.wait_readable(fd)
            except OSError as exc:
                if exc.errno == errno.EBADF:
                    raise trio.ClosedResourceError("this stream is closed") from None
                raise trio.BrokenResourceError from exc
        if not waited:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return result

    async def _send_failure(self, exc: trio.BrokenResourceError) -> BaseException:
        """Why tx broke: the monitor closes it when the connection failed, and says how
        in the ConnectionEnd that follows; a reset then raises as ConnectionResetError."""
        with trio.move_on_after(SEND_FAILURE_WAIT):
            await self._end.event.wait()
        if self._end.status:
            return stream_failure(self._end.status, f"connection {self.connection_id} failed")
        return exc

    async def _confirm_eof(self) -> None:
        """EOF on the pipe: the monitor's ConnectionEnd says whether it was clean."""
        await self._end.event.wait()
        self._check_open()
        status = self._end.status
        if status is None:
            raise trio.BrokenResourceError("the monitor is gone; the connection may be incomplete")
        if status:
            raise stream_failure(status, f"connection {self.connection_id} failed") from error_from_errno(status)

    async def abort(self) -> None:
        """Close with a reset: the peer sees ECONNRESET, not EOF; unsent bytes are dropped."""
        self._check_open()
        try:
            await self.handle.abort()
        except OSError as exc:
            # Already ended both ways and forgotten by the monitor: nothing left to reset.
            if exc.errno != errno.EBADF:
                raise
        finally:
            await self.aclose()

    async def setsockopt(self, level: int, name: int, value: int | bool) -> int:
        """Set an option on the monitor's real socket; returns the value the kernel reports after."""
        self._check_open()
        return await self.handle.set_option(level, name, value)

    async def getsockopt(self, level: int, name: int) -> int:
        """An option's value on the monitor's real socket."""
        self._check_open()
        return await self.handle.get_option(level, name)

    def detach(self) -> socket.socket:
        """Take the connection's socket out of this stream (socket channel only).

        The caller owns the returned blocking ``socket.socket`` (family AF_UNIX)
        from then on, and the stream is closed. Its reads end at EOF for a
        reset too: only the stream saw the monitor's ConnectionEnd status.
        """
        self._check_open()
        if not self.is_socket:
            raise TypeError("a pipe-channel stream has no socket; open the session with socket_channel=True")
        with self._send_conflict.hold(), self._receive_conflict.hold():
            sock = socket.socket(fileno=fcntl.fcntl(self._rx.fileno(), fcntl.F_DUPFD_CLOEXEC, 0))
            self._closed = True
            self.handle.release()
            self._end.set(errno.EBADF)
            self._rx.close()
            self._tx.close()
        sock.setblocking(True)
        return sock

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self.handle.release()
            # Wake a receive_some still waiting for the end status.
            self._end.set(errno.EBADF)
        # Close both before the checkpoint: a cancelled aclose must still close everything.
        # Every wait on the fds is inside one of the conflict detectors: with neither held,
        # no task waits on them, and there is no one for notify_closing to wake.
        waited_on = self._send_conflict.held or self._receive_conflict.held
        self._rx.close(waited_on=waited_on)
        self._tx.close(waited_on=waited_on)
        await trio.lowlevel.checkpoint()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this stream is closed")


class Connections(Protocol):
    """What a listener needs of its session besides its handle."""

    async def accept(self, handle: Handle) -> ArcaStream:
        """Accept one connection on the listener ``handle`` names: a stream of the session."""
        ...

    def start_soon(self, fn: Callable[[], Awaitable[None]]) -> None:
        """Run ``fn`` in the background, in a nursery that ends with the session."""
        ...


class ArcaListener(trio.abc.Listener[ArcaStream]):
    """A listening socket in the monitor.

    ``accept`` may be called by many tasks at once: the monitor queues them.
    A connection accepted for an ``accept`` that was cancelled meanwhile is
    kept in :attr:`backlog` and handed to the next ``accept``, so none is lost.

    With ``prefetch`` N > 0 the listener keeps up to N Accepts outstanding in
    the background, so connections are ready before ``accept`` asks: a server
    then pays one control round trip per connection off its critical path.
    Connections fetched ahead and never taken are closed with the listener.
    An error fetching one is raised by the next ``accept``, which also
    restarts fetching (so EMFILE backs off the way ``serve_listeners`` wants).
    """

    def __init__(self, handle: Handle, connections: Connections, local: Endpoint, prefetch: int = 0) -> None:
        #: The listener in its session: options and close by listener id.
        self.handle = handle
        self.listener_id = handle.id
        self.local = local
        self.prefetch = prefetch
        self.backlog: deque[ArcaStream] = deque()
        self._connections = connections
        self._closed = False
        self._outstanding = 0
        self._errors: deque[BaseException] = deque()
        self._arrived = trio.Event()

    def __repr__(self) -> str:
        return f"<ArcaListener #{self.listener_id} {self.local[0]}:{self.local[1]}>"

    @property
    def closed(self) -> bool:
        return self._closed

    async def accept(self) -> ArcaStream:
        self._check_open()
        if self.backlog:
            await trio.lowlevel.checkpoint()
            self._refill()
            return self.backlog.popleft()
        if self.prefetch:
            return await self._accept_fetched()
        try:
            return await self._connections.accept(self.handle)
        except OSError as exc:
            if self._closed and exc.errno == errno.EBADF:
                raise trio.ClosedResourceError("this listener was closed") from None
            raise

    async def _accept_fetched(self) -> ArcaStream:
        self._refill()
        while not self.backlog and not self._errors:
            if self._arrived.is_set():
                self._arrived = trio.Event()
            await self._arrived.wait()
            if self._closed:
                raise trio.ClosedResourceError("this listener was closed")
        if self.backlog:
            stream = self.backlog.popleft()
            self._refill()
            return stream
        raise self._errors.popleft()

    def _refill(self) -> None:
        """Start background Accepts until ``prefetch`` are outstanding or waiting in the backlog."""
        while (
            not self._closed
            and not self._errors
            and self._outstanding + len(self.backlog) < self.prefetch
        ):
            self._outstanding += 1
            self._connections.start_soon(self._fetch_one)

    async def _fetch_one(self) -> None:
        try:
            stream = await self._connections.accept(self.handle)
        except (OSError, trio.ClosedResourceError) as exc:
            if not self._closed:
                self._errors.append(exc)
        else:
            if self._closed:
                await stream.aclose()
            else:
                self.backlog.append(stream)
        finally:
            self._outstanding -= 1
            self._arrived.set()

    async def setsockopt(self, level: int, name: int, value: int | bool) -> int:
        """Set an option on the listening socket; returns the value the kernel reports after."""
        self._check_open()
        return await self.handle.set_option(level, name, value)

    async def getsockopt(self, level: int, name: int) -> int:
        """An option's value on the listening socket."""
        self._check_open()
        return await self.handle.get_option(level, name)

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this listener is closed")

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._arrived.set()  # wake accepts waiting for fetched connections
        while self.backlog:
            await self.backlog.popleft().aclose()
        await self.handle.close()

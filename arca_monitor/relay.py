"""Moving bytes between kernel sockets and guests' channels: one task and one epoll per session.

Each connection has two one-way channels. *rx* is a pipe; *tx* is an AF_UNIX
stream socket the guest only writes to (PROTOCOL.md section 5 says why). The
guest holds the read end of rx and the write end of tx; the monitor holds the
other two ends and relays:

* downstream: socket -> rx write end, until the socket reaches EOF or fails,
  or the guest closes its rx read end;
* upstream: tx read end -> socket, until the guest closes its tx write end
  (then the socket is shut down for writing) or the socket fails.

Downstream bytes move with splice(2), so they never enter user space.
Upstream bytes are copied through one buffer per session: copying from a
socket into TCP costs less than splicing a pipe into TCP here (measured in
docs/PERFORMANCE.md). Buffering is bounded by the pipe and socket buffers
(and, upstream, by the bytes a full TCP socket did not take, which wait in
the connection): when the guest stops reading, the rx pipe fills, the monitor
stops reading the socket, and TCP flow control pushes back on the peer.

Why one loop and not tasks: a trio task per direction costs several KiB per
connection; a session with 10,000 connections would spend most of its memory
on them. Here a connection is one small object and three epoll registrations,
and one task waits on the session's epoll fd (trio watches it like any other
fd) and runs whatever is ready. Each fd is registered only while the relay
waits on it, so a level-triggered epoll never reports the same idle fd twice.
The rx write end stays registered, with no events asked for, for as long as
the downstream runs: the error event it reports when its reader is gone wakes
an idle relay when the guest closes.

Before closing rx after the socket's EOF or error, the monitor sends a
ConnectionEnd event with the status (0 or an errno): a pipe cannot tell a FIN
from a reset.

A session granted SOCKET_CHANNEL gets one AF_UNIX stream socket per
connection instead (PROTOCOL.md section 5). The monitor's end then plays both
ends, as two fds of one socket (so that each direction keeps its own epoll
registration), and downstream bytes are copied too (through the same
monitor-wide buffer), since splice needs a pipe on one side. Ends map onto shutdown(2): EOF to the
guest is SHUT_WR on the monitor's end, a dead upstream is SHUT_RD.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import logging
import math
import os
import select
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import trio

from arca_control.protocol.channel import close_fds
from arca_control.protocol.messages import ConnectionEnd, Endpoint

log = logging.getLogger("arca_monitor.relay")

PIPE_SIZE = 1 << 20
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
#: Moves (splices or copies) per ready fd per round: enough to amortise a round, few enough to stay fair.
SPLICES_PER_TURN = 4
IN, OUT = select.EPOLLIN, select.EPOLLOUT
ERR = select.EPOLLERR | select.EPOLLHUP
#: The copy buffer, one for the whole monitor: every session's relay runs in the one trio
#: thread and copies a chunk with no checkpoint between its read and its write, and bytes
#: a sink did not take are copied out (pending_*) before anyone reads again.
#: 1 MiB: a quarter of that nearly halved upload speed (docs/PERFORMANCE.md).
COPY_SIZE = 1 << 20
_COPY_BUFFER = bytearray(COPY_SIZE)
_COPY_VIEW = memoryview(_COPY_BUFFER)
#: Each guest-side AF_UNIX socket's send buffer.
CHANNEL_BUFFER = 1 << 20
#: A socket-channel write that fails these way means the guest's end is gone.
GUEST_GONE = (errno.EPIPE, errno.ECONNRESET)


class Wait(enum.Enum):
    """What one direction of a connection waits for."""

    SOURCE = "source readable"
    SINK = "sink writable"
    DONE = "done"


def make_pipe() -> tuple[int, int]:
    """A close-on-exec pipe, grown to PIPE_SIZE where the limits allow."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        # Over pipe-max-size or the per-user pipe budget: the default size works, only slower.
        pass
    return read_end, write_end


class DataChannel(NamedTuple):
    """A connection's channel to the guest: the monitor's two ends, and what the guest gets."""

    #: Where downstream bytes go, and where upstream bytes come from.
    rx_write: int
    tx_read: int
    guest_fds: list[int]
    #: True for the socket channel (one AF_UNIX stream socket), False for an rx pipe and a tx socket.
    is_socket: bool


def make_pipe_channel() -> DataChannel:
    """The default channel: the guest gets the rx pipe's read end and the tx socket's write end.

    tx is a one-way AF_UNIX stream socket, not a pipe: it behaves as one (the
    guest closing it is EOF, the monitor closing it makes the guest's writes
    fail with EPIPE), and copying from it into TCP beats splicing a pipe into
    TCP on this kernel (docs/PERFORMANCE.md, "upload").
    """
    rx_read, rx_write = make_pipe()
    try:
        tx_read, tx_write = _one_way_socket()
    except OSError:
        close_fds([rx_read, rx_write])
        raise
    return DataChannel(rx_write, tx_read, [rx_read, tx_write], is_socket=False)


def _one_way_socket() -> tuple[int, int]:
    """(the monitor's read end, the guest's write end) of an AF_UNIX stream socketpair."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _grow_send_buffer(theirs)
        ours.setblocking(False)
    except OSError:
        ours.close()
        theirs.close()
        raise
    return ours.detach(), theirs.detach()


def make_socket_channel() -> DataChannel:
    """An AF_UNIX stream socketpair: the guest gets one end, the monitor two fds of the other."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        for end in (ours, theirs):
            _grow_send_buffer(end)
        ours.setblocking(False)
        second = fcntl.fcntl(ours.fileno(), fcntl.F_DUPFD_CLOEXEC, 0)
    except OSError:
        ours.close()
        theirs.close()
        raise
    return DataChannel(ours.detach(), second, [theirs.detach()], is_socket=True)


def _grow_send_buffer(sock: socket.socket) -> None:
    # An AF_UNIX stream socket queues what it sends on the receiver, counted against the
    # sender's SO_SNDBUF: the default (~208 KiB) costs a wakeup per 200 KiB.
    for option in (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, CHANNEL_BUFFER)
            return
        except OSError:
            continue


def _shutdown(fd: int, how: int) -> None:
    if fd < 0:
        return  # already closed (an Abort came first)
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(how)
    except OSError:
        pass  # already shut down, or the guest's end is gone: nothing left to tell
    finally:
        sock.detach()


def _rest(data: bytes | memoryview, moved: int) -> bytes:
    """What a sink did not take, copied out of the shared buffer before the next read reuses it."""
    return bytes(data[moved:]) if moved < len(data) else b""


class GuestGone(Exception):
    """The guest closed its end of the downstream."""


def _readable_now(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class Connection:
    """One relayed connection: the socket, the monitor's two channel ends, and where each direction is."""

    __slots__ = (
        "connection_id", "sock", "sock_fd", "local", "peer", "rx_write", "tx_read",
        "down", "up", "announced", "end_status", "write_error", "bytes_up", "bytes_down", "opened",
        "is_socket", "pending_down", "pending_up",
    )

    def __init__(self, connection_id: int, sock: socket.socket, local: Endpoint, peer: Endpoint,
                 channel: DataChannel) -> None:
        self.connection_id = connection_id
        self.sock = sock
        self.sock_fd = sock.fileno()
        self.local = local
        self.peer = peer
        self.rx_write = channel.rx_write
        self.tx_read = channel.tx_read
        self.is_socket = channel.is_socket
        #: Bytes read but not yet taken by a full sink, per direction (downstream: socket channel only).
        self.pending_down = b""
        self.pending_up = b""
        self.down = Wait.SOURCE
        self.up = Wait.SOURCE
        #: The guest has its ConnectionReady: its ConnectionEnd may follow.
        self.announced = False
        #: The downstream's status, while its ConnectionEnd waits to be sent.
        self.end_status: int | None = None
        #: The errno of a failed write to the socket: it may have used up the
        #: socket's pending error, so the read side would see a plain EOF.
        self.write_error = 0
        #: Bytes moved guest -> peer and peer -> guest, and when it opened (for the audit log).
        self.bytes_up = 0
        self.bytes_down = 0
        self.opened = time.monotonic()


class RelayEngine:
    """Every relayed connection of one session.

    Resource handling: owns every connection added to it (socket and pipe
    ends) and its epoll fd; :meth:`close` closes all of them, and a finished
    connection is closed and forgotten as soon as both directions end.
    Error handling: socket and pipe errors end the direction they hit and go
    to the guest as ConnectionEnd statuses; only a failure to send on the
    control channel leaves :meth:`run`, raised by ``send_event``.
    """

    def __init__(
        self,
        send_event: Callable[[ConnectionEnd], Awaitable[None]],
        on_change: Callable[..., None] = lambda event, conn, **fields: None,
    ) -> None:
        self._send_event = send_event
        #: Told of half-closes and closes, for the audit log: (event, connection, **fields).
        self._on_change = on_change
        self._epoll = select.epoll()
        self._registered: dict[int, int] = {}
        self._owners: dict[int, Connection] = {}
        self.connections: dict[int, Connection] = {}
        self._buffer, self._view = _COPY_BUFFER, _COPY_VIEW
        # At most one end per connection is ever queued, so this is bounded by the connections.
        self._ends_in, self._ends_out = trio.open_memory_channel[Connection](math.inf)

    # --- life cycle -----------------------------------------------------------------

    def add(self, conn: Connection) -> None:
        """Start relaying ``conn``; its ConnectionEnd waits for :meth:`announce`."""
        self.connections[conn.connection_id] = conn
        for fd in (conn.sock_fd, conn.rx_write, conn.tx_read):
            self._owners[fd] = conn
        self._update(conn)

    def announce(self, conn: Connection) -> None:
        """The guest has been told of ``conn``: its ConnectionEnd may go out now."""
        conn.announced = True
        if conn.end_status is not None:
            self._ends_in.send_nowait(conn)

    async def run(self) -> None:
        """Relay until cancelled. Sends the ConnectionEnd events too."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_ends)
            while True:
                await trio.lowlevel.wait_readable(self._epoll.fileno())
                for fd, events in self._epoll.poll(0, 1024):
                    conn = self._owners.get(fd)
                    if conn is not None:
                        self._on_event(conn, fd, events)

    def abort(self, conn: Connection) -> None:
        """Reset ``conn``: the peer sees an RST, and the guest's channel ends close after it.

        The socket goes first, with SO_LINGER 0: closing the channel first would let
        the upstream see EOF and send a FIN, and after a FIN Linux reports EOF to
        the peer even when the RST follows.
        """
        for fd in (conn.sock_fd, conn.rx_write, conn.tx_read):
            self._unregister(fd)
            self._owners.pop(fd, None)
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.sock.close()
        for fd in (conn.rx_write, conn.tx_read):
            if fd >= 0:
                _close(fd)
        conn.rx_write = conn.tx_read = -1
        conn.down = conn.up = Wait.DONE
        self.connections.pop(conn.connection_id, None)
        self._closed(conn, "aborted")

    def close(self) -> None:
        """Close every connection and the epoll fd (the session is over)."""
        for conn in list(self.connections.values()):
            for fd in (conn.rx_write, conn.tx_read):
                if fd >= 0:
                    _close(fd)
            conn.sock.close()
            self._closed(conn, "session ended")
        self.connections.clear()
        self._owners.clear()
        self._epoll.close()

    # --- events --------------------------------------------------------------------------

    def _on_event(self, conn: Connection, fd: int, events: int) -> None:
        if fd == conn.rx_write:
            if events & ERR:
                self._finish_down(conn, reader_gone=True)
            elif conn.down is Wait.SINK:
                self._pump_down(conn)
        elif fd == conn.tx_read:
            if conn.up is Wait.SOURCE:
                self._pump_up(conn)
        else:  # the socket
            if conn.down is Wait.SOURCE and events & (IN | ERR):
                self._pump_down(conn)
            if conn.up is Wait.SINK and events & (OUT | ERR):
                self._pump_up(conn)
        if conn.connection_id in self.connections:
            self._update(conn)

    def _pump_down(self, conn: Connection) -> None:
        for _ in range(SPLICES_PER_TURN):
            try:
                moved = self._copy_down(conn) if conn.is_socket else self._splice(conn.sock_fd, conn.rx_write)
            except BlockingIOError:
                # EAGAIN does not say which side is blocked; ask the source.
                conn.down = Wait.SINK if _readable_now(conn.sock_fd) else Wait.SOURCE
                return
            except GuestGone:
                self._finish_down(conn, reader_gone=True)
                return
            except OSError as exc:
                self._finish_down(conn, status=exc.errno or errno.EIO)
                return
            except EOFError:
                if not conn.write_error:
                    self._on_change("peer_eof", conn)
                self._finish_down(conn, status=conn.write_error)
                return
            conn.bytes_down += moved
            if conn.pending_down:
                conn.down = Wait.SINK  # the guest's socket is full: wait for it, then the rest
                return
        conn.down = Wait.SOURCE

    def _pump_up(self, conn: Connection) -> None:
        for _ in range(SPLICES_PER_TURN):
            try:
                moved = self._copy_up(conn)
            except BlockingIOError:
                conn.up = Wait.SOURCE  # a full socket keeps what it did not take in pending_up
                return
            except OSError as exc:
                # A write after the peer's reset: the downstream reports it, unless it already ended.
                conn.write_error = exc.errno or errno.EIO
                self._finish_up(conn)
                return
            except EOFError:
                # Everything the guest wrote is in the socket now; only then the FIN.
                try:
                    conn.sock.shutdown(socket.SHUT_WR)
                    self._on_change("guest_eof", conn)
                except OSError as exc:
                    conn.write_error = exc.errno or errno.EIO
                self._finish_up(conn)
                return
            conn.bytes_up += moved
            if conn.pending_up:
                conn.up = Wait.SINK
                return
        conn.up = Wait.SOURCE

    # --- moving one chunk: each returns the bytes the sink took, raises EOFError at the
    # --- source's EOF, BlockingIOError when a side must be waited for, GuestGone when the
    # --- guest's downstream end is closed, and OSError for the TCP socket's failures.

    @staticmethod
    def _splice(source: int, sink: int) -> int:
        try:
            moved = os.splice(source, sink, PIPE_SIZE, flags=SPLICE_FLAGS)
        except BrokenPipeError:
            # Only the pipe can be broken: downstream, the guest closed rx.
            raise GuestGone from None
        if moved == 0:
            raise EOFError
        return moved

    def _copy_down(self, conn: Connection) -> int:
        data = conn.pending_down
        if not data:
            count = conn.sock.recv_into(self._buffer)
            if count == 0:
                raise EOFError
            data = self._view[:count]
        try:
            moved = os.write(conn.rx_write, data)
        except BlockingIOError:
            moved = 0
        except OSError as exc:
            if exc.errno in GUEST_GONE:
                raise GuestGone from None
            raise
        conn.pending_down = _rest(data, moved)
        return moved

    def _copy_up(self, conn: Connection) -> int:
        data = conn.pending_up
        if not data:
            try:
                count = os.readv(conn.tx_read, [self._buffer])
            except BlockingIOError:
                raise
            except OSError:
                count = 0  # ECONNRESET: the guest closed with bytes unread; its writes are over
            if count == 0:
                raise EOFError
            data = self._view[:count]
        try:
            moved = conn.sock.send(data)
        except BlockingIOError:
            moved = 0
        conn.pending_up = _rest(data, moved)
        return moved

    # --- endings ---------------------------------------------------------------------------

    def _finish_down(self, conn: Connection, *, reader_gone: bool = False, status: int = 0) -> None:
        if conn.down is Wait.DONE:
            return
        conn.down = Wait.DONE
        self._unregister(conn.rx_write)
        if reader_gone:
            # The guest closed its end: nobody to tell.
            self._close_rx(conn)
        else:
            conn.end_status = status
            if conn.announced:
                self._ends_in.send_nowait(conn)
        if status:
            # The socket is dead: stop taking bytes from the guest, so its next send fails.
            self._finish_up(conn)
        log.debug("connection %d: downstream ended, status %d, reader gone %s",
                  conn.connection_id, status, reader_gone)

    def _finish_up(self, conn: Connection) -> None:
        if conn.up is Wait.DONE:
            return
        conn.up = Wait.DONE
        self._unregister(conn.tx_read)
        if conn.is_socket:
            # Closing one of two fds of the socket would not be seen: refuse the guest's writes.
            _shutdown(conn.tx_read, socket.SHUT_RD)
            conn.pending_up = b""
        _close(conn.tx_read)
        self._owners.pop(conn.tx_read, None)
        conn.tx_read = -1
        self._forget_if_done(conn)

    def _close_rx(self, conn: Connection) -> None:
        if conn.is_socket:
            _shutdown(conn.rx_write, socket.SHUT_WR)  # the guest's EOF, whatever the other fd does
            conn.pending_down = b""
        _close(conn.rx_write)
        self._owners.pop(conn.rx_write, None)
        conn.rx_write = -1
        self._forget_if_done(conn)

    def _forget_if_done(self, conn: Connection) -> None:
        if conn.up is Wait.DONE and conn.down is Wait.DONE and conn.rx_write < 0:
            self._unregister(conn.sock_fd)
            self._owners.pop(conn.sock_fd, None)
            conn.sock.close()
            self.connections.pop(conn.connection_id, None)
            failure = conn.end_status or conn.write_error
            self._closed(conn, errno.errorcode.get(failure, str(failure)) if failure else "closed")

    def _closed(self, conn: Connection, how: str) -> None:
        self._on_change("close", conn, how=how, bytes_up=conn.bytes_up, bytes_down=conn.bytes_down,
                        seconds=round(time.monotonic() - conn.opened, 6))

    async def _send_ends(self) -> None:
        async for conn in self._ends_out:
            if conn.connection_id not in self.connections:
                continue  # the session closed it meanwhile
            await self._send_event(ConnectionEnd(connection_id=conn.connection_id, status=conn.end_status))
            # Only now may rx close: the guest, at EOF, waits for this status. Unless an
            # Abort (or the session closing) came while the event was being sent: then it is closed.
            if conn.connection_id in self.connections and conn.rx_write >= 0:
                self._close_rx(conn)

    # --- epoll interest --------------------------------------------------------------------

    def _update(self, conn: Connection) -> None:
        """Register each fd of ``conn`` for exactly what its direction waits for."""
        sock_events = (IN if conn.down is Wait.SOURCE else 0) | (OUT if conn.up is Wait.SINK else 0)
        self._register(conn.sock_fd, sock_events)
        if conn.down is not Wait.DONE:
            # Always registered, for the error event that says the guest closed its end.
            self._register(conn.rx_write, OUT if conn.down is Wait.SINK else 0, keep_empty=True)
        if conn.up is not Wait.DONE:
            self._register(conn.tx_read, IN if conn.up is Wait.SOURCE else 0)

    def _register(self, fd: int, events: int, *, keep_empty: bool = False) -> None:
        old = self._registered.get(fd)
        if not events and not keep_empty:
            if old is not None:
                self._unregister(fd)
        elif old is None:
            self._epoll.register(fd, events)
            self._registered[fd] = events
        elif old != events:
            self._epoll.modify(fd, events)
            self._registered[fd] = events

    def _unregister(self, fd: int) -> None:
        if self._registered.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass

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
Upstream bytes are copied through one buffer for the whole monitor: copying
from a socket into TCP costs less than splicing a pipe into TCP here (measured
in docs/PERFORMANCE.md). The channels are made in ``channels``; a connection,
and moving one chunk of it, are in ``connection``. Buffering is bounded by the pipe and socket buffers
(and, upstream, by the bytes a full TCP socket did not take, which wait in
the connection): when the guest stops reading, the rx pipe fills, the monitor
stops reading the socket, and TCP flow control pushes back on the peer.

Why one loop and not tasks: a trio task per direction costs several KiB per
connection; a session with 10,000 connections would spend most of its memory
on them. Here a connection is one small object and three epoll registrations (two on the socket channel),
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
ends with one fd: ``rx_write`` and ``tx_read`` are the same number, registered
once for what both directions wait on, and closed when the second of them is
done with it; two fds per connection, not three. Downstream bytes are spliced
through one monitor-wide pipe (TCP -> pipe -> socket;
``connection.splice_to_channel``), so no pipe per connection is needed for it.
Ends map onto shutdown(2): EOF to the guest is SHUT_WR on the monitor's end, a
dead upstream is SHUT_RD.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import select
import socket
import struct
import time
from typing import TYPE_CHECKING

import trio

from arca_control.protocol.messages import ConnectionEnd

from .connection import (
    Connection,
    GuestGone,
    Wait,
    channel_fds,
    close_fd,
    copy_up,
    readable_now,
    shutdown,
    splice_down,
    splice_to_channel,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = logging.getLogger("arca_monitor.relay")

#: Moves (splices or copies) per ready fd per round: enough to amortise a round, few enough to stay fair.
SPLICES_PER_TURN = 4
IN, OUT = select.EPOLLIN, select.EPOLLOUT
ERR = select.EPOLLERR | select.EPOLLHUP


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
        for fd in channel_fds(conn):
            close_fd(fd)
        conn.rx_write = conn.tx_read = -1
        conn.down = conn.up = Wait.DONE
        self.connections.pop(conn.connection_id, None)
        self._closed(conn, "aborted")

    def close(self) -> None:
        """Close every connection and the epoll fd (the session is over)."""
        for conn in list(self.connections.values()):
            for fd in channel_fds(conn):
                close_fd(fd)
            conn.sock.close()
            self._closed(conn, "session ended")
        self.connections.clear()
        self._owners.clear()
        self._epoll.close()

    # --- events --------------------------------------------------------------------------

    def _on_event(self, conn: Connection, fd: int, events: int) -> None:
        if fd != conn.sock_fd:
            # A channel fd: tx, rx, or (the socket channel) both, upstream first.
            if fd == conn.tx_read and conn.up is Wait.SOURCE and events & (IN | ERR):
                self._pump_up(conn)
            if fd == conn.rx_write:
                if events & ERR:
                    self._finish_down(conn, reader_gone=True)
                elif conn.down is Wait.SINK and events & OUT:
                    self._pump_down(conn)
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
                moved = splice_to_channel(conn) if conn.is_socket else splice_down(conn)
            except BlockingIOError:
                # EAGAIN does not say which side is blocked; ask the source.
                conn.down = Wait.SINK if readable_now(conn.sock_fd) else Wait.SOURCE
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
                moved = copy_up(conn)
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

    # --- endings ---------------------------------------------------------------------------

    def _finish_down(self, conn: Connection, *, reader_gone: bool = False, status: int = 0) -> None:
        if conn.down is Wait.DONE:
            return
        conn.down = Wait.DONE
        if conn.rx_write != conn.tx_read:
            self._unregister(conn.rx_write)  # else the upstream may still want it: _update decides
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
        fd, conn.tx_read = conn.tx_read, -1
        if conn.is_socket:
            # The downstream may keep the socket open: refuse the guest's writes now.
            shutdown(fd, socket.SHUT_RD)
            conn.pending_up = b""
        self._release(conn, fd)
        self._forget_if_done(conn)

    def _close_rx(self, conn: Connection) -> None:
        fd, conn.rx_write = conn.rx_write, -1
        if conn.is_socket:
            shutdown(fd, socket.SHUT_WR)  # the guest's EOF, while the upstream may go on
            conn.pending_down = b""
        self._release(conn, fd)
        self._forget_if_done(conn)

    def _release(self, conn: Connection, fd: int) -> None:
        """One direction is done with channel fd ``fd``: close it, unless the other direction still uses it."""
        if fd < 0 or fd in (conn.rx_write, conn.tx_read):
            return
        self._unregister(fd)
        self._owners.pop(fd, None)
        close_fd(fd)

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
            if conn.connection_id not in self.connections or conn.end_status is None:
                continue  # the session closed it meanwhile (a queued connection always has its status)
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
        rx_events = OUT if conn.down is Wait.SINK else 0
        tx_events = IN if conn.up is Wait.SOURCE else 0
        # rx stays registered while the downstream runs, for the error event that says the guest closed its end.
        if conn.is_socket:
            fd = conn.rx_write if conn.rx_write >= 0 else conn.tx_read
            if fd >= 0:
                self._register(fd, rx_events | tx_events, keep_empty=conn.down is not Wait.DONE)
            return
        if conn.down is not Wait.DONE:
            self._register(conn.rx_write, rx_events, keep_empty=True)
        if conn.up is not Wait.DONE:
            self._register(conn.tx_read, tx_events)

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
            with contextlib.suppress(OSError):
                self._epoll.unregister(fd)

"""Moving bytes between one kernel socket and the guest's two pipes.

Each connection has two one-way pipes. The guest holds the read end of *rx*
and the write end of *tx*; the monitor holds the other two ends and relays:

* downstream: socket -> rx write end, until the socket reaches EOF or fails,
  or the guest closes its rx read end;
* upstream: tx read end -> socket, until the guest closes its tx write end
  (then the socket is shut down for writing) or the socket fails.

Bytes move with splice(2), so they never enter user space and buffering is
bounded by the pipe and socket buffers: when the guest stops reading, the rx
pipe fills, the monitor stops reading the socket, and TCP flow control pushes
back on the peer. Nothing busy-waits: a splice that would block tells us,
with a zero-timeout poll, which side to wait for.

Before closing rx after the socket's EOF or error, the monitor sends a
ConnectionEnd event with the status (0 or an errno): a pipe cannot tell a FIN
from a reset.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from arca_control.messages import ConnectionEnd, Endpoint

log = logging.getLogger("arca_monitor.relay")

PIPE_SIZE = 1 << 20
SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
#: Errors that mean "the guest closed its end of the pipe".
GUEST_GONE = (errno.EPIPE,)


def close_fd(fd: int) -> None:
    """Close an fd that trio may be watching, waking any waiter first."""
    if fd < 0:
        return
    trio.lowlevel.notify_closing(fd)
    try:
        os.close(fd)
    except OSError:
        pass


def _poll_ready(fd: int, events: int) -> bool:
    poller = select.poll()
    poller.register(fd, events)
    return bool(poller.poll(0))


async def splice_pump(src: int, dst: int) -> None:
    """Move bytes from ``src`` to ``dst`` until ``src`` reaches EOF. One side must be a pipe.

    Raises the ``OSError`` of either side. Both fds must be non-blocking.
    """
    while True:
        try:
            moved = os.splice(src, dst, PIPE_SIZE, flags=SPLICE_FLAGS)
        except BlockingIOError:
            # EAGAIN does not say which side is blocked; ask the source.
            if _poll_ready(src, select.POLLIN):
                await trio.lowlevel.wait_writable(dst)
            else:
                await trio.lowlevel.wait_readable(src)
            continue
        if moved == 0:
            return
        # Let other connections run between chunks; a busy one must not starve them.
        await trio.lowlevel.checkpoint()


def make_pipe() -> tuple[int, int]:
    """A close-on-exec pipe, grown to PIPE_SIZE where the limits allow."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        # Over pipe-max-size or the per-user pipe budget: the default size works, only slower.
        pass
    return read_end, write_end


@dataclass(eq=False)
class Connection:
    """One relayed connection: the socket, the monitor's two pipe ends, and its state."""

    connection_id: int
    sock: socket.socket
    local: Endpoint
    peer: Endpoint
    rx_write: int
    tx_read: int
    #: Set once the guest has been told about the connection (register before announce).
    announced: trio.Event = field(default_factory=trio.Event)
    reader_gone: bool = False
    #: The errno of a failed write to the socket: it may have used up the
    #: socket's pending error, so the read side would see a plain EOF.
    write_error: int = 0

    async def run(self, send_event: Callable[[ConnectionEnd], Awaitable[None]]) -> None:
        """Relay both directions until both are finished, then close everything.

        Resource handling: owns the socket and both pipe ends, and closes them
        when it returns, however it returns (cancellation included).
        Error handling: a socket error ends the direction it hits; a read
        error, or a write error before the read side has ended, goes to the
        guest as the ConnectionEnd status. Nothing propagates out of here.
        """
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._downstream, send_event, nursery.cancel_scope)
                nursery.start_soon(self._upstream)
        finally:
            close_fd(self.rx_write)
            close_fd(self.tx_read)
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()

    async def _downstream(self, send_event, relay_scope: trio.CancelScope) -> None:
        status = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_reader, nursery.cancel_scope)
            try:
                await splice_pump(self.sock.fileno(), self.rx_write)
            except OSError as exc:
                if exc.errno in GUEST_GONE:
                    self.reader_gone = True
                else:
                    status = exc.errno or errno.EIO
            nursery.cancel_scope.cancel()
        status = status or self.write_error
        log.debug("connection %d: downstream ended, status %d, reader gone %s",
                  self.connection_id, status, self.reader_gone)
        if not self.reader_gone:
            await self.announced.wait()
            await send_event(ConnectionEnd(connection_id=self.connection_id, status=status))
        close_fd(self.rx_write)
        self.rx_write = -1
        if status:
            # The socket is dead: stop taking bytes from the guest, so its next send fails.
            relay_scope.cancel()

    async def _watch_reader(self, scope: trio.CancelScope) -> None:
        # The write end of a pipe whose reader is gone reports an error event;
        # it never becomes readable otherwise. This wakes an idle relay.
        await trio.lowlevel.wait_readable(self.rx_write)
        self.reader_gone = True
        scope.cancel()

    async def _upstream(self) -> None:
        try:
            await splice_pump(self.tx_read, self.sock.fileno())
            # Everything the guest wrote is in the socket now; only then the FIN.
            self.sock.shutdown(socket.SHUT_WR)
            log.debug("connection %d: upstream EOF, socket shut down for writing", self.connection_id)
        except OSError as exc:
            # The connection failed (a write after the peer's reset): the
            # downstream reports it, in ConnectionEnd, unless it already ended.
            self.write_error = exc.errno or errno.EIO
            log.debug("connection %d: upstream ended: %s", self.connection_id, exc)
        finally:
            close_fd(self.tx_read)
            self.tx_read = -1

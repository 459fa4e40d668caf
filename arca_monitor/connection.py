"""One relayed connection: its socket, the monitor's ends of its channel, where each direction is,
and moving one chunk of bytes along either direction.

Downstream bytes move with splice(2), so they never enter user space: into
the rx pipe, or on the socket channel through one pipe for the whole monitor
(``splice_to_channel``); upstream bytes are copied through one buffer for
the whole monitor. That is safe because every session's relay runs in the one
trio thread and copies a chunk with no checkpoint between its read and its
write, and the bytes a sink did not take are copied out (``pending_*``)
before anyone reads again.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import os
import select
import socket
import time
from typing import TYPE_CHECKING

from .channels import PIPE_SIZE

if TYPE_CHECKING:
    from arca_control.protocol.wire import Endpoint

    from .channels import DataChannel

SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
#: The copy buffer, one for the whole monitor (see above).
#: 1 MiB: a quarter of that nearly halved upload speed (docs/PERFORMANCE.md).
COPY_SIZE = 1 << 20
_COPY_BUFFER = bytearray(COPY_SIZE)
_COPY_VIEW = memoryview(_COPY_BUFFER)
#: A socket-channel write that fails these way means the guest's end is gone.
GUEST_GONE = (errno.EPIPE, errno.ECONNRESET)


class Wait(enum.Enum):
    """What one direction of a connection waits for."""

    SOURCE = "source readable"
    SINK = "sink writable"
    DONE = "done"



class GuestGone(Exception):
    """The guest closed its end of the downstream."""


def shutdown(fd: int, how: int) -> None:
    """shutdown(2) on a socket fd we keep open; nothing if it is closed already or the other end is gone."""
    if fd < 0:
        return  # already closed (an Abort came first)
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(how)
    except OSError:
        pass  # already shut down, or the guest's end is gone: nothing left to tell
    finally:
        sock.detach()


def close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def channel_fds(conn: Connection) -> set[int]:
    """The monitor's channel fds of ``conn`` still open: rx's and tx's, one fd on the socket channel."""
    return {fd for fd in (conn.rx_write, conn.tx_read) if fd >= 0}


def readable_now(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class Connection:
    """One relayed connection: the socket, the monitor's channel ends (one fd for both on the socket channel), and where each direction is."""

    __slots__ = (
        "announced",
        "bytes_down",
        "bytes_up",
        "connection_id",
        "down",
        "end_status",
        "is_socket",
        "local",
        "opened",
        "peer",
        "pending_down",
        "pending_up",
        "rx_write",
        "sock",
        "sock_fd",
        "tx_read",
        "up",
        "write_error",
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



# --- moving one chunk: each returns the bytes the sink took, raises EOFError at the
# --- source's EOF, BlockingIOError when a side must be waited for, GuestGone when the
# --- guest's downstream end is closed, and OSError for the TCP socket's failures.


def splice_down(conn: Connection) -> int:
    """Socket to rx pipe, in the kernel."""
    try:
        moved = os.splice(conn.sock_fd, conn.rx_write, PIPE_SIZE, flags=SPLICE_FLAGS)
    except BrokenPipeError:
        # Only the pipe can be broken: downstream, the guest closed rx.
        raise GuestGone from None
    if moved == 0:
        raise EOFError
    return moved


def copy_down(conn: Connection) -> int:
    """Socket to the socket channel, through the shared buffer."""
    data: bytes | memoryview = conn.pending_down
    if not data:
        count = conn.sock.recv_into(_COPY_BUFFER)
        if count == 0:
            raise EOFError
        data = _COPY_VIEW[:count]
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


def _make_relay_pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return read_end, write_end


#: The pipe every socket-channel downstream splices through (see splice_to_channel): one for
#: the whole monitor, like the copy buffer, made with the module so that it is part of the
#: monitor's idle descriptors (a session's end leaves the monitor with the fds it started with).
_RELAY_READ, _RELAY_WRITE = _make_relay_pipe()


def splice_to_channel(conn: Connection) -> int:
    """Socket to the socket channel, spliced through the monitor's one relay pipe.

    TCP -> pipe -> AF_UNIX socket moves the bytes without copying them through
    user space: a third of copy_down's CPU, and 1.6x its rate, measured alone
    (tools/bench/profile/channel_copy.py, docs/PERFORMANCE.md). The pipe is one
    for the whole monitor, like the copy buffer, so it must be empty again
    before this returns: whatever the guest's socket did not take is read out
    of it into ``pending_down``, which copy_down then writes first.
    """
    if conn.pending_down:
        return copy_down(conn)
    count = os.splice(conn.sock_fd, _RELAY_WRITE, PIPE_SIZE, flags=SPLICE_FLAGS)
    if count == 0:
        raise EOFError
    moved = 0
    try:
        moved = os.splice(_RELAY_READ, conn.rx_write, count, flags=SPLICE_FLAGS)
    except BlockingIOError:
        pass
    except OSError as exc:
        _drain(count)
        if exc.errno in GUEST_GONE:
            raise GuestGone from None
        raise
    if moved < count:
        conn.pending_down = _drain(count - moved)
    return moved


def _drain(count: int) -> bytes:
    """Read ``count`` bytes that are in the relay pipe out of it."""
    parts = []
    while count > 0:
        part = os.read(_RELAY_READ, count)
        parts.append(part)
        count -= len(part)
    return b"".join(parts)


def copy_up(conn: Connection) -> int:
    """tx to the socket, through the shared buffer."""
    data: bytes | memoryview = conn.pending_up
    if not data:
        try:
            count = os.readv(conn.tx_read, [_COPY_BUFFER])
        except BlockingIOError:
            raise
        except OSError:
            count = 0  # ECONNRESET: the guest closed with bytes unread; its writes are over
        if count == 0:
            raise EOFError
        data = _COPY_VIEW[:count]
    try:
        moved = conn.sock.send(data)
    except BlockingIOError:
        moved = 0
    conn.pending_up = _rest(data, moved)
    return moved


def _rest(data: bytes | memoryview, moved: int) -> bytes:
    """What a sink did not take, copied out of the shared buffer before the next read reuses it."""
    return bytes(data[moved:]) if moved < len(data) else b""

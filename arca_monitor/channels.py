"""A connection's data channel to the guest: an rx pipe and a tx socket, or one socket.

*rx* is a pipe the monitor writes downstream bytes into; *tx* is an AF_UNIX
stream socket the guest only writes to (PROTOCOL.md section 5 says why). The
guest gets the read end of rx and the write end of tx, passed beside the
ConnectOk or AcceptOk; the monitor keeps the other two ends. A session
granted SOCKET_CHANNEL gets one AF_UNIX stream socket per connection instead:
the guest gets one end, the monitor keeps the other, one fd for both
directions (the relay registers it once, for what both wait on).

So a connection costs the monitor three fds on the pipe channel (the TCP
socket, rx's write end, tx's read end: three kernel objects, none to spare)
and two on the socket channel.

Resource handling: each factory returns every fd it made, or closes them all
and raises (EMFILE, ENFILE, ...).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from typing import NamedTuple

from arca_control.protocol.channel import close_fds

PIPE_SIZE = 1 << 20
#: Each guest-side AF_UNIX socket's send buffer.
CHANNEL_BUFFER = 1 << 20
#: The monitor's end of a socket channel: its send buffer bounds the downstream bytes queued
#: for the guest. Twice the guest's: fewer full-socket waits per GiB (docs/PERFORMANCE.md, issue 15).
DOWNSTREAM_BUFFER = 2 << 20


def make_pipe() -> tuple[int, int]:
    """A close-on-exec pipe, grown to PIPE_SIZE where the limits allow."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    # Over pipe-max-size or the per-user pipe budget, the default size works, only slower.
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    return read_end, write_end


class DataChannel(NamedTuple):
    """A connection's channel to the guest: the monitor's two ends, and what the guest gets."""

    #: Where downstream bytes go, and where upstream bytes come from (one fd on the socket channel).
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
    """An AF_UNIX stream socketpair: the guest gets one end, the monitor the other (as rx and tx both)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _grow_send_buffer(ours, DOWNSTREAM_BUFFER)
        _grow_send_buffer(theirs)
        ours.setblocking(False)
    except OSError:
        ours.close()
        theirs.close()
        raise
    fd = ours.detach()
    return DataChannel(fd, fd, [theirs.detach()], is_socket=True)


def _grow_send_buffer(sock: socket.socket, size: int = CHANNEL_BUFFER) -> None:
    # An AF_UNIX stream socket queues what it sends on the receiver, counted against the
    # sender's SO_SNDBUF: the default (~208 KiB) costs a wakeup per 200 KiB.
    for option in (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
            return
        except OSError:
            continue


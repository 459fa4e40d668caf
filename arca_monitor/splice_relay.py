"""Relay one TCP connection between two kernel sockets, zero-copy: splice(2) through a pipe per direction.

The intercept front end holds two real sockets per connection: the one the
sandbox's program connected (accepted on an intercept listener) and the one
the broker connected from the host. :func:`relay` moves bytes between them
until both directions end. splice(2) cannot join two sockets, but socket →
pipe → socket works on Linux: each direction splices from its source into
its own pipe, then from the pipe into its sink, so the bytes never enter
this process. The pipe is the direction's only buffer (at most
:data:`PIPE_SIZE`): the source is not read again until the pipe is drained,
so a slow sink holds the sender back through TCP's own flow control.

Waiting is trio's (``wait_readable``/``wait_writable`` on each socket): no
thread, no busy loop. Chosen over the session's epoll RelayEngine, which
serves a socket and a guest's channel ends (with ConnectionEnd events over
the control protocol) and has no place for a second kernel socket; measured
on this machine the two splices per chunk run at about the speed of plain
loopback TCP (see the issue 13 report).

What goes across, as a TCP peer would see it:

* EOF on one side (its FIN) becomes ``shutdown(SHUT_WR)`` on the other, and
  the other direction goes on: half-close works both ways.
* A reset (ECONNRESET, or EPIPE writing to a side that is gone) ends the
  whole connection: both sockets get SO_LINGER 0, so closing them sends an
  RST to whichever side is still there. The reason is returned.

Resource handling: the pipes are made and closed here; the two sockets stay
the caller's (to close after :func:`relay` returns, which sends the RST when
linger was set). Error handling: every socket or pipe error ends the relay
and is returned as ``how`` (the errno's name); nothing is raised but
cancellation, on which both sockets are set to reset too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import Callable

#: The bytes a direction holds at most: its pipe, grown from the 64 KiB default (F_SETPIPE_SZ matters most).
PIPE_SIZE = 1 << 20
#: A smaller pipe when the user's pipe allowance is used up (pipe-user-pages-soft): still bounded, slower.
FALLBACK_PIPE_SIZE = 1 << 16
_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_RESET = struct.pack("ii", 1, 0)


@dataclass
class Flow:
    """One relayed connection as the broker counts it (``broker.Metered``): its id, bytes each way, since when."""

    connection_id: int
    bytes_up: int = 0
    bytes_down: int = 0
    opened: float = field(default_factory=time.monotonic)


class _Reset(Exception):
    """A direction hit an error: the connection ends as a reset, for ``how``."""

    def __init__(self, how: str) -> None:
        super().__init__(how)
        self.how = how


def reset_on_close(sock: socket.socket) -> None:
    """Make closing ``sock`` send an RST rather than a FIN (nothing if it is closed already)."""
    with contextlib.suppress(OSError):  # gone already: nothing to tell that side
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)


def _make_pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    for size in (PIPE_SIZE, FALLBACK_PIPE_SIZE):
        try:
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, size)
            break
        except OSError:
            continue  # EPERM: over the allowance; keep the pipe as the kernel made it
    return read_end, write_end


def _how(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


async def _pump(source: socket.socket, sink: socket.socket, count: Callable[[int], None]) -> None:
    """Move ``source`` to ``sink`` until EOF (then shut ``sink``'s writing down); raises _Reset on an error."""
    read_end, write_end = _make_pipe()
    try:
        held = 0
        eof = False
        while not eof:
            # Fill the pipe with what the source has now before draining it: fewer, larger
            # writes to the sink, and one wakeup of the reader on the far side per batch.
            while held < PIPE_SIZE:
                try:
                    moved_in = os.splice(source.fileno(), write_end, PIPE_SIZE - held, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    if held:
                        break
                    await trio.lowlevel.wait_readable(source)
                    continue
                except OSError as exc:
                    raise _Reset(_how(exc)) from None
                if moved_in == 0:
                    eof = True
                    break
                held += moved_in
            while held:
                try:
                    moved = os.splice(read_end, sink.fileno(), held, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(sink)
                    continue
                except OSError as exc:
                    raise _Reset(_how(exc)) from None
                held -= moved
                count(moved)
            await trio.lowlevel.checkpoint()  # a flood of data must not starve the other tasks
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise _Reset(_how(exc)) from None
    finally:
        os.close(read_end)
        os.close(write_end)


async def relay(guest: socket.socket, peer: socket.socket, flow: Flow,
                changed: Callable[[str], None] = lambda event: None) -> str:
    """Relay ``guest`` (the sandbox's side) and ``peer`` (the host's) until both directions end.

    Counts into ``flow`` (``bytes_up``: guest to peer). ``changed`` hears
    "guest_eof" and "peer_eof" as each side half-closes. Returns how the
    connection ended: "closed", or the errno's name of the error that reset it.
    """
    guest.setblocking(False)
    peer.setblocking(False)
    how = "closed"

    def up(moved: int) -> None:
        flow.bytes_up += moved

    def down(moved: int) -> None:
        flow.bytes_down += moved

    async def direction(source: socket.socket, sink: socket.socket, count: Callable[[int], None], eof: str) -> None:
        nonlocal how
        try:
            await _pump(source, sink, count)
        except _Reset as reset:
            how = reset.how
            nursery.cancel_scope.cancel()
            return
        changed(eof)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(direction, guest, peer, up, "guest_eof")
            nursery.start_soon(direction, peer, guest, down, "peer_eof")
    except BaseException:
        how = "aborted"
        raise
    finally:
        if how != "closed":
            reset_on_close(guest)
            reset_on_close(peer)
        for sock in (guest, peer):
            trio.lowlevel.notify_closing(sock)  # the caller closes them; no task may be left waiting
    return how

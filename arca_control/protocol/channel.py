"""The control channel's transport: one frame per AF_UNIX SOCK_SEQPACKET message, fds beside it.

Both the guest session and the monitor move frames through this class. A
SEQPACKET socket keeps message boundaries, so one ``recvmsg`` returns exactly
one frame, and the descriptors passed with SCM_RIGHTS stay tied to the frame
they were sent with. A frame larger than the receive buffer is cut by the
kernel and flagged (MSG_TRUNC), so the size limit holds before any allocation
beyond one buffer.

Resource handling: descriptors received belong to the caller of
:meth:`receive` from the moment it returns (trio does not cancel a call whose
syscall has completed, so none can be dropped between the two). They arrive
close-on-exec. Sending never closes the descriptors it passes: the sender
closes its copies, or the receiver would never see EOF on a pipe.
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from .wire import DEFAULT_MAX_PAYLOAD, HEADER_SIZE

if TYPE_CHECKING:
    from collections.abc import Sequence

#: More descriptors than any frame carries, so an excess is seen, not cut silently.
MAX_FDS_PER_FRAME = 4
_FD_SIZE = array.array("i").itemsize
_ANCILLARY_SIZE = socket.CMSG_SPACE(MAX_FDS_PER_FRAME * _FD_SIZE)
# As plain ints: ``flags & socket.MSG_TRUNC`` would build an IntFlag member for each frame (a microsecond each).
_MSG_TRUNC = int(socket.MSG_TRUNC)
_MSG_CTRUNC = int(socket.MSG_CTRUNC)


@dataclass(frozen=True)
class Datagram:
    """One received frame, with the descriptors that came with it."""

    data: bytes
    fds: list[int]
    #: The frame did not fit the buffer (MSG_TRUNC), or its fds did not (MSG_CTRUNC).
    truncated: bool = False
    fds_truncated: bool = False


def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def socketpair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of control channel sockets (close-on-exec)."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


class ControlChannel:
    """Frames in and out over a SEQPACKET socket. Sends are serialised; one task receives."""

    def __init__(self, sock: socket.socket, *, max_payload: int = DEFAULT_MAX_PAYLOAD) -> None:
        if sock.type != socket.SOCK_SEQPACKET:
            raise ValueError("the control channel must be an AF_UNIX SOCK_SEQPACKET socket")
        self._raw = sock
        self.sock = trio.socket.from_stdlib_socket(sock)
        self.max_payload = max_payload
        # trio allows one task at a time to wait for writability on a socket.
        self._send_lock = trio.Lock()

    async def send_bytes(self, data: bytes, fds: Sequence[int] = ()) -> None:
        """Send one frame. When nobody else is waiting to send and the socket has room, it
        leaves at once, before any checkpoint; otherwise this waits its turn."""
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        if not self._send_lock.locked():
            try:
                self._raw.sendmsg([data], ancillary, socket.MSG_DONTWAIT)
                return
            except BlockingIOError:
                pass
        async with self._send_lock:
            await self.sock.sendmsg([data], ancillary)

    def send_nowait(self, data: bytes) -> bool:
        """Send one frame without waiting, even from a cancelled task; False if it would block.

        SEQPACKET sends are atomic, so this cannot cut into a frame another task is sending.
        Raises OSError if the peer is gone.
        """
        try:
            self._raw.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        return True

    async def receive(self) -> Datagram | None:
        """The next frame, or None at end of stream."""
        data, ancillary, flags, _ = await self.sock.recvmsg(
            HEADER_SIZE + self.max_payload, _ANCILLARY_SIZE, socket.MSG_CMSG_CLOEXEC
        )
        fds = _fds_from(ancillary) if ancillary else []
        if not data and not fds:
            return None
        return Datagram(data, fds, truncated=bool(flags & _MSG_TRUNC), fds_truncated=bool(flags & _MSG_CTRUNC))

    def close(self) -> None:
        self.sock.close()

    def close_after_fork(self) -> None:
        """Close this process's copy of the socket, outside trio (a forked child has no trio
        run): the far end then sees EOF once the parent closes its copy."""
        fd = self._raw.detach()
        if fd >= 0:
            os.close(fd)


def _fds_from(ancillary: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % fds.itemsize
            fds.frombytes(payload[:usable])
    return list(fds)

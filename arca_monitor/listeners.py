"""One guest listener: the kernel socket and its queue of pending Accept requests.

The kernel accept runs only while an Accept request is queued. The acceptor
waits for the socket to be readable, then, with no checkpoint in between,
checks that a request is still queued and accepts. So a connection is never
taken from the kernel's backlog without a request to hand it to; a request
withdrawn by Cancel simply leaves the connection where it was.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
from collections import deque
from typing import TYPE_CHECKING

import trio

from arca_control.protocol.messages import AcceptErr, Endpoint

from . import net

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from arca_control.protocol.messages import Accept, ControlReply

log = logging.getLogger("arca_monitor.listeners")

#: accept(2) errors about one connection, not the listener: try the next one.
TRANSIENT_ACCEPT_ERRORS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR}


def _pending(sock: socket.socket) -> bool:
    """Whether a connection waits in the kernel's accept queue, without taking it."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class Listener:
    """Resource handling: owns ``sock`` and closes it in :meth:`close`. Connections
    it accepts go to ``on_accept``, which owns them from then on.

    Error handling: an accept(2) error that concerns the listener (EMFILE, ...)
    is the reply to the first queued Accept; errors that concern only the
    incoming connection are skipped, as every TCP server does.
    """

    def __init__(
        self,
        listener_id: int,
        sock: socket.socket,
        local: Endpoint,
        on_accept: Callable[[socket.socket, Accept], Awaitable[None]],
        reply: Callable[[ControlReply], Awaitable[None]],
        admit: Callable[[], None],
        cleanup: Callable[[], None] | None = None,
        peer_allowed: Callable[[Endpoint], bool] = lambda peer: True,
    ) -> None:
        self.listener_id = listener_id
        self.sock = sock
        self.local = local
        self._on_accept = on_accept
        self._reply = reply
        # Raises the session's connection-limit error: then the connection stays
        # in the kernel's queue, and the Accept waiting for it gets the error.
        self._admit = admit
        #: Run once the socket is closed (an AF_UNIX listener removes its file).
        self._cleanup = cleanup
        #: The policy's peer rules: a connection from elsewhere is closed at once, unseen by the guest.
        self._peer_allowed = peer_allowed
        self._waiting: deque[Accept] = deque()
        self._wakeup = trio.Event()
        #: Covers only the waiting, never a handover: closing must not cut an AcceptOk short.
        self._wait_scope = trio.CancelScope()
        self.closed = False

    def enqueue(self, request: Accept) -> None:
        self._waiting.append(request)
        self._wakeup.set()

    def withdraw(self, request_id: int) -> Accept | None:
        """Remove a queued Accept (for Cancel); None if it is not queued."""
        for request in self._waiting:
            if request.request_id == request_id:
                self._waiting.remove(request)
                return request
        return None

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def holds(self, request_id: int) -> bool:
        return any(request.request_id == request_id for request in self._waiting)

    async def run(self) -> None:
        """Accept connections for queued requests until the listener is closed."""
        while not self.closed:
            if not self._waiting:
                # A fresh scope for each wait (a scope is entered once); close() cancels the current one.
                # Only when there is a wait: with Accepts queued ahead (prefetch), a connection
                # after another goes through no cancel scope at all.
                self._wait_scope = trio.CancelScope()
                with self._wait_scope:
                    while not self._waiting:
                        self._wakeup = trio.Event()
                        await self._wakeup.wait()
                if self._wait_scope.cancel_called:  # by close(), meanwhile
                    return
            if not _pending(self.sock):
                # Nothing waiting in the kernel's queue: wait for a connection.
                # (A busy listener skips this: connection after connection, no epoll round.)
                self._wait_scope = trio.CancelScope()
                with self._wait_scope:
                    await trio.lowlevel.wait_readable(self.sock)
                continue
            try:
                # Only now, with a connection waiting, does the session's limit decide.
                self._admit()
                conn, _ = self.sock.accept()
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno in TRANSIENT_ACCEPT_ERRORS:
                    continue
                # EMFILE, ENFILE, ENOBUFS, ...: the waiting guest hears about it.
                request = self._waiting.popleft()
                await self._reply(AcceptErr.make(request.request_id, exc.errno or errno.EIO, f"accept: {exc.strerror}"))
                continue
            try:
                peer = net.endpoint_of(conn.getpeername())
            except OSError:  # gone already, or from an address the wire has no form for
                conn.close()
                continue
            if not self._peer_allowed(peer):
                log.info("listener %d: connection from %s refused by policy", self.listener_id, peer)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                conn.close()
                continue
            conn.setblocking(False)
            await self._on_accept(conn, self._waiting.popleft())

    def close(self) -> list[Accept]:
        """Close the kernel socket; the queued Accepts, which the caller must answer."""
        if not self.closed:
            self.closed = True
            self._wait_scope.cancel()
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()
            if self._cleanup is not None:
                self._cleanup()
        withdrawn = list(self._waiting)
        self._waiting.clear()
        return withdrawn

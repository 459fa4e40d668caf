"""The init's half of ConnectInside: connecting to a port on the sandbox's own loopback for the monitor.

The monitor cannot connect to the sandbox's loopback itself (it lives in the
host's namespace), so the init does, and hands back the connected socket.
Connects never block the init: each socket is non-blocking, registered with
the init's selector until it is writable, and given :data:`CONNECT_TIMEOUT`
(a loopback connect only waits when the server's backlog is full).
``Loopback.EITHER`` tries 127.0.0.1 and, if that is refused, ::1.

Resource handling: a socket belongs to its attempt until it comes back in an
:class:`Outcome`; the caller sends it to the monitor and closes its copy.
:meth:`Connector.close` closes every socket still waiting. At most
:data:`MAX_PENDING` connects wait at once; more are refused with EAGAIN.
Error handling: every failure becomes a ConnectFailed reply with its errno;
nothing here raises.
"""

from __future__ import annotations

import errno
import selectors
import socket
import time
from dataclasses import dataclass

from .messages import Connected, ConnectFailed, ConnectInside, Loopback

CONNECT_TIMEOUT = 10.0
MAX_PENDING = 256
ADDRESSES = {Loopback.EITHER: ("127.0.0.1", "::1"), Loopback.V4: ("127.0.0.1",), Loopback.V6: ("::1",)}


@dataclass(frozen=True)
class Outcome:
    reply: Connected | ConnectFailed
    #: With Connected: the connected (non-blocking) socket, for the caller to send and close.
    sock: socket.socket | None = None


@dataclass(frozen=True)
class _Attempt:
    request: ConnectInside
    sock: socket.socket
    deadline: float
    #: Addresses to try next if this one is refused.
    then: tuple[str, ...]


class Connector:
    """Connects in progress, each registered with ``selector`` for writability (its data: this connector)."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        self._waiting: dict[int, _Attempt] = {}

    def start(self, request: ConnectInside) -> Outcome | None:
        """The outcome now, or None if the connect is in progress."""
        if len(self._waiting) >= MAX_PENDING:
            return Outcome(ConnectFailed(request.request_id, errno.EAGAIN))
        deadline = time.monotonic() + CONNECT_TIMEOUT
        return self._try(request, ADDRESSES[request.loopback], deadline)

    def _try(self, request: ConnectInside, addresses: tuple[str, ...], deadline: float) -> Outcome | None:
        code = errno.ECONNREFUSED
        for index, host in enumerate(addresses):
            try:
                sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            except OSError as exc:
                return Outcome(ConnectFailed(request.request_id, exc.errno or errno.EIO))
            sock.setblocking(False)
            code = sock.connect_ex((host, request.port))
            if code == 0:
                return Outcome(Connected(request.request_id), sock)
            if code == errno.EINPROGRESS:
                attempt = _Attempt(request, sock, deadline, addresses[index + 1 :])
                self._waiting[sock.fileno()] = attempt
                self._selector.register(sock, selectors.EVENT_WRITE, self)
                return None
            sock.close()
            if code != errno.ECONNREFUSED:
                break
        return Outcome(ConnectFailed(request.request_id, code))

    def writable(self, fileno: int) -> Outcome | None:
        """A waiting socket became writable: its connect completed or failed."""
        attempt = self._forget(fileno)
        if attempt is None:
            return None
        code = attempt.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code == 0:
            return Outcome(Connected(attempt.request.request_id), attempt.sock)
        attempt.sock.close()
        if code == errno.ECONNREFUSED and attempt.then:
            return self._try(attempt.request, attempt.then, attempt.deadline)
        return Outcome(ConnectFailed(attempt.request.request_id, code))

    def expired(self) -> list[Outcome]:
        """ETIMEDOUT for every connect past its deadline."""
        now = time.monotonic()
        outcomes = []
        for fileno in [fileno for fileno, attempt in self._waiting.items() if attempt.deadline <= now]:
            attempt = self._forget(fileno)
            if attempt is not None:
                attempt.sock.close()
                outcomes.append(Outcome(ConnectFailed(attempt.request.request_id, errno.ETIMEDOUT)))
        return outcomes

    def timeout(self) -> float | None:
        """Seconds until the next deadline, or None if nothing waits."""
        if not self._waiting:
            return None
        return max(0.0, min(attempt.deadline for attempt in self._waiting.values()) - time.monotonic())

    def _forget(self, fileno: int) -> _Attempt | None:
        attempt = self._waiting.pop(fileno, None)
        if attempt is not None:
            self._selector.unregister(attempt.sock)
        return attempt

    def close(self) -> None:
        for fileno in list(self._waiting):
            attempt = self._forget(fileno)
            if attempt is not None:
                attempt.sock.close()

"""DNS over sockets handed in: UDP datagrams, and TCP with its length prefix, within bounds.

What to answer is the caller's (``answer(message, transport)`` gives the
reply, or None for none); this module only carries messages and keeps a
client from holding the server: at most ``max_in_flight`` UDP queries are
answered at once (the rest wait in the socket's buffer, which drops what
overflows, as any busy UDP server does), at most ``max_tcp_connections`` TCP
connections are served at once (one more is closed at once), and a TCP
connection ends after ``tcp_max_queries`` messages, ``tcp_idle_timeout``
seconds without a whole message, ``tcp_lifetime`` seconds in all, or at the
first message that gets no reply (RFC 7766 section 8 lets a server close
then). Pipelined TCP queries are answered one after another, in order.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    import socket
    from collections.abc import Awaitable, Callable, Sequence

log = logging.getLogger(__name__)

#: The largest datagram: a UDP payload cannot be longer.
MAX_DATAGRAM = 65535


class Transport(enum.Enum):
    UDP = "udp"
    TCP = "tcp"


#: What answers a message that came over a transport: the reply, or None for none. It must not raise.
@dataclass(frozen=True)
class Limits:
    max_in_flight: int = 64
    max_tcp_connections: int = 32
    tcp_max_queries: int = 100
    tcp_idle_timeout: float = 5.0
    tcp_lifetime: float = 30.0


DEFAULT_LIMITS = Limits()


async def serve_dns(
    answer: Callable[[bytes, Transport], Awaitable[bytes | None]],
    udp: Sequence[socket.socket],
    tcp: Sequence[socket.socket],
    limits: Limits = DEFAULT_LIMITS,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve bound UDP sockets and listening TCP sockets until cancelled; they are taken over and closed at the end.

    ``answer`` is called with each message and the transport it came over; it must not raise.
    """
    server = _Server(answer, limits)
    datagram_sockets = [trio.socket.from_stdlib_socket(sock) for sock in udp]
    listeners = [trio.SocketListener(trio.socket.from_stdlib_socket(sock)) for sock in tcp]
    try:
        async with trio.open_nursery() as nursery:
            for sock in datagram_sockets:
                nursery.start_soon(server.serve_udp, sock, nursery)
            if listeners:
                nursery.start_soon(trio.serve_listeners, server.serve_tcp, listeners)
            task_status.started()
    finally:
        for sock in datagram_sockets:
            sock.close()
        for listener in listeners:
            await trio.aclose_forcefully(listener)


class _Server:
    def __init__(self, answer: Callable[[bytes, Transport], Awaitable[bytes | None]], limits: Limits) -> None:
        self.answer = answer
        self.limits = limits
        self._in_flight = trio.Semaphore(limits.max_in_flight)
        self._tcp_slots = trio.Semaphore(limits.max_tcp_connections)

    async def serve_udp(self, sock: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        while True:
            await self._in_flight.acquire()
            try:
                data, peer = await sock.recvfrom(MAX_DATAGRAM)
            except BaseException:
                self._in_flight.release()
                raise
            nursery.start_soon(self._answer_datagram, sock, data, peer)

    async def _answer_datagram(self, sock: trio.socket.SocketType, data: bytes, peer: tuple[object, ...]) -> None:
        try:
            reply = await self.answer(data, Transport.UDP)
            if reply is not None:
                await sock.sendto(reply, peer)
        except OSError as error:  # the client is gone (or netfilter said no): nothing to tell it
            log.debug("DNS: no reply sent to %r: %s", peer, error)
        finally:
            self._in_flight.release()

    async def serve_tcp(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                self._tcp_slots.acquire_nowait()
            except trio.WouldBlock:
                return  # too many connections at once: this one is closed, the client may retry
            try:
                with trio.move_on_after(self.limits.tcp_lifetime):
                    await self._tcp_queries(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as error:
                log.debug("DNS: TCP connection ended: %s", error)
            finally:
                self._tcp_slots.release()

    async def _tcp_queries(self, stream: trio.SocketStream) -> None:
        for _ in range(self.limits.tcp_max_queries):
            data = None
            with trio.move_on_after(self.limits.tcp_idle_timeout):
                prefix = await _receive_exactly(stream, 2)
                data = await _receive_exactly(stream, int.from_bytes(prefix, "big")) if prefix else None
            if data is None:
                return  # end of stream, or idle too long
            reply = await self.answer(data, Transport.TCP)
            if reply is None:
                return  # a message that gets no reply ends the connection
            await stream.send_all(len(reply).to_bytes(2, "big") + reply)


async def _receive_exactly(stream: trio.SocketStream, size: int) -> bytes | None:
    """``size`` bytes from ``stream``; None at end of stream (before or amid them)."""
    buffer = bytearray()
    while len(buffer) < size:
        chunk = await stream.receive_some(size - len(buffer))
        if not chunk:
            return None
        buffer += chunk
    return bytes(buffer)


__all__ = ["DEFAULT_LIMITS", "Limits", "Transport", "serve_dns"]

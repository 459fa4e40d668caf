"""The kernel side of listen, accept and connect, on non-blocking sockets and IP literals only.

Nothing here resolves a name: ``socket.bind`` and ``socket.connect`` would ask
the system resolver, without saying so, for anything that is not an IP
literal, so every address is checked with ``ipaddress`` first.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

import trio

from arca_control.messages import Endpoint


def _sockaddr(endpoint: Endpoint) -> tuple[str, int]:
    host, port = endpoint
    try:
        address = ipaddress.IPv4Address(host)
    except ValueError:
        raise OSError(errno.EAFNOSUPPORT, f"not an IPv4 address literal: {host!r}") from None
    return str(address), port


def endpoint_of(sockaddr: tuple) -> Endpoint:
    return Endpoint(sockaddr[0], sockaddr[1])


def new_tcp_socket() -> socket.socket:
    return socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)


def open_listener(endpoint: Endpoint, backlog: int) -> socket.socket:
    """A bound, listening, non-blocking socket. Raises OSError (EADDRINUSE, EACCES, ...)."""
    address = _sockaddr(endpoint)
    sock = new_tcp_socket()
    try:
        # Like every TCP server: rebinding while old connections sit in TIME_WAIT is fine.
        # (Not SO_REUSEPORT: two listeners must never share a port silently.)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


async def open_connection(endpoint: Endpoint, timeout: float) -> socket.socket:
    """A connected non-blocking socket. Raises OSError: ECONNREFUSED, ETIMEDOUT, ENETUNREACH, ..."""
    address = _sockaddr(endpoint)
    sock = new_tcp_socket()
    try:
        try:
            sock.connect(address)
        except BlockingIOError:
            with trio.move_on_after(timeout) as scope:
                await trio.lowlevel.wait_writable(sock)
            if scope.cancelled_caught:
                raise OSError(errno.ETIMEDOUT, f"no answer within {timeout:g} s") from None
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise OSError(code, f"connect to {address[0]}:{address[1]}")
    except BaseException:
        trio.lowlevel.notify_closing(sock)
        sock.close()
        raise
    return sock

"""The kernel side of listen, accept and connect, on non-blocking sockets and IP literals only.

Nothing here resolves a name: ``socket.bind`` and ``socket.connect`` would ask
the system resolver, without saying so, for anything that is not an IP
literal. Every address arrives here as an ``Endpoint``, parsed strictly where
it entered (the wire, a guest's text), so the kernel only ever sees the
numeric form its ``sockaddr()`` gives.
"""

from __future__ import annotations

import errno
import os
import select
import socket

import trio

from arca_control.protocol.wire import Endpoint, SockAddr


def sockaddr_of(endpoint: Endpoint) -> tuple[socket.AddressFamily, SockAddr]:
    """The socket family and address for an endpoint; EINVAL for the unnamed AF_UNIX address."""
    if endpoint.is_unix and not endpoint.host:
        raise OSError(errno.EINVAL, "an unnamed AF_UNIX address cannot be bound or connected to")
    return endpoint.socket_family, endpoint.sockaddr()


def endpoint_of(sockaddr: SockAddr | bytes) -> Endpoint:
    """The Endpoint of an address a socket of ours gave (``getsockname``, ``getpeername``).

    EAFNOSUPPORT for one the wire cannot carry (an AF_UNIX peer bound to an
    abstract-namespace name), as for any other address of a family it has no form for.
    """
    try:
        return Endpoint.from_sockaddr(sockaddr)
    except ValueError as exc:
        raise OSError(errno.EAFNOSUPPORT, f"an address the protocol cannot carry: {exc}") from None


def new_stream_socket(family: socket.AddressFamily) -> socket.socket:
    return socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)


def open_listener(endpoint: Endpoint, backlog: int, *, v6only: bool = False, reuse_port: bool = False) -> socket.socket:
    """A bound, listening, non-blocking socket. Raises OSError (EADDRINUSE, EACCES, ...)."""
    family, address = sockaddr_of(endpoint)
    if v6only and family != socket.AF_INET6:
        raise OSError(errno.EINVAL, "V6ONLY applies to IPv6 listeners only")
    sock = new_stream_socket(family)
    try:
        # Like every TCP server: rebinding while old connections sit in TIME_WAIT is fine.
        # (SO_REUSEPORT only on request: two listeners must never share a port silently.)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # only when asked: then every sharer has asked for it
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # Set either way: the system default (net.ipv6.bindv6only) must not decide.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind(address)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock


def unlink_socket_file(sock: socket.socket, path: str, identity: tuple[int, int] | None) -> None:
    """Remove the file of a closed AF_UNIX listener, if it is still the one it bound."""
    try:
        st = os.stat(path)
        if identity == (st.st_dev, st.st_ino):
            os.unlink(path)
    except OSError:
        pass


def socket_file_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def open_udp(
    endpoint: Endpoint, *, v6only: bool = False, reuse_port: bool = False, reuse_addr: bool = False
) -> socket.socket:
    """A bound, non-blocking UDP socket. Raises OSError (EADDRINUSE, EADDRNOTAVAIL, ...)."""
    family, address = sockaddr_of(endpoint)
    if family == socket.AF_UNIX:
        raise OSError(errno.EAFNOSUPPORT, "UDP needs an IP address")
    if v6only and family != socket.AF_INET6:
        raise OSError(errno.EINVAL, "V6ONLY applies to IPv6 sockets only")
    sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        if reuse_addr:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def start_connection(endpoint: Endpoint) -> tuple[socket.socket, bool]:
    """Begin a non-blocking connect: the socket, and whether it is connected already.

    On loopback the handshake is done by the time connect() returns
    EINPROGRESS, so a zero-timeout poll settles it without a task or a wait.
    Raises OSError (ECONNREFUSED, ENETUNREACH, ...) if it has failed already.
    """
    family, address = sockaddr_of(endpoint)
    sock = new_stream_socket(family)
    try:
        try:
            sock.connect(address)
            return sock, True
        except BlockingIOError:
            if family == socket.AF_UNIX:
                # For AF_UNIX this is EAGAIN, not EINPROGRESS: the listener's backlog is full.
                raise OSError(errno.EAGAIN, "the listener's backlog is full") from None
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        if not poller.poll(0):
            return sock, False
        _raise_connect_error(sock)
        return sock, True
    except BaseException:
        sock.close()
        raise


async def finish_connection(sock: socket.socket, seconds: float) -> None:
    """Wait for a connect begun by :func:`start_connection`. Raises OSError: ETIMEDOUT, ...

    ``seconds`` is the Connect's own timeout. Running out of it is an answer
    to the guest (ETIMEDOUT), not a cancellation of the caller, so it is an
    OSError from here rather than a cancel scope around the call.

    Resource handling: the caller still owns ``sock`` and closes it on failure.
    """
    with trio.move_on_after(seconds) as scope:
        await trio.lowlevel.wait_writable(sock)
    if scope.cancelled_caught:
        raise OSError(errno.ETIMEDOUT, f"no answer within {seconds:g} s")
    _raise_connect_error(sock)


def _raise_connect_error(sock: socket.socket) -> None:
    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if code:
        raise OSError(code, "connect failed")

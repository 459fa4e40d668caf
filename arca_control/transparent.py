"""Transparent mode: the process's own TCP connects and name lookups go through the monitor.

    import arca_control
    arca_control.install()      # from here on, urllib, http.client, requests... use arca
    arca_control.uninstall()    # and back

``install()`` replaces, for the rest of the process, ``socket.create_connection``,
``socket.getaddrinfo``, ``socket.gethostbyname``, ``socket.gethostbyname_ex``
and ``socket.socket.connect`` / ``connect_ex`` (for TCP sockets: AF_INET or
AF_INET6, SOCK_STREAM). A connect asks the monitor for the connection (the
socket channel, PROTOCOL.md section 5), then puts that connection's socket
under the caller's socket object with ``dup2``: the object the program holds
is now relayed, and ``getpeername()``/``getsockname()`` give the TCP
connection's addresses. Everything else passes through untouched: AF_UNIX,
UDP, ``bind``/``listen``.

Limits, stated plainly:

* only the names looked up at call time are replaced: a module that did
  ``from socket import create_connection`` before ``install()`` keeps the
  original (``arca-run --transparent`` installs before the program starts);
* a TCP socket's ``family`` stays what the program asked for, but the fd is an
  AF_UNIX socket: TCP-level options (IPPROTO_TCP, SO_KEEPALIVE) are forwarded to
  the monitor's real socket (those the monitor allows, PROTOCOL.md section 5),
  other options act on the AF_UNIX socket; code that hands the fd to C
  (``os.sendfile`` works, a C extension's own ``setsockopt`` does not) sees it;
* a non-blocking connect (asyncio's ``sock_connect``) completes before it
  returns, so an event loop waits for it; use ``arca_control.aio`` for asyncio;
* the monitor picks a connection's source address: a ``bind()`` before
  ``connect()`` binds only the socket that the relayed one then replaces;
* listening sockets and UDP are not routed (in ``arca-run``'s empty namespace
  they reach nothing); use the session APIs for those;
* a peer's reset reads as EOF on the relayed socket.

After ``fork()`` the child opens its own session on first use.
"""

from __future__ import annotations

import atexit
import errno
import os
import socket
import threading
from typing import TYPE_CHECKING, NamedTuple, Protocol, overload

from . import sync
from .portal import in_portal_thread

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from _typeshed import ReadableBuffer

    #: An address as the socket methods take one.
    SocketAddress = tuple[object, ...] | str | ReadableBuffer

_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)
_lock = threading.RLock()
_session: sync.Session | None = None
_own_session = False
_monitor_args: tuple[str, ...] = ()


class _CreateConnection(Protocol):
    def __call__(
        self,
        address: tuple[str | None, bytes | str | int | None],
        timeout: float | None = ...,
        source_address: SocketAddress | None = ...,
        *,
        all_errors: bool = ...,
    ) -> socket.socket: ...


class _SetSockOpt(Protocol):
    @overload
    def __call__(self, sock: socket.socket, level: int, optname: int, value: int | ReadableBuffer, /) -> None: ...

    @overload
    def __call__(self, sock: socket.socket, level: int, optname: int, value: None, optlen: int, /) -> None: ...


class _GetSockOpt(Protocol):
    @overload
    def __call__(self, sock: socket.socket, level: int, optname: int, /) -> int: ...

    @overload
    def __call__(self, sock: socket.socket, level: int, optname: int, buflen: int, /) -> bytes: ...


class _Stdlib(NamedTuple):
    """What ``install`` replaces, as it found it: the stdlib's own functions (or whatever stood in for them)."""

    create_connection: _CreateConnection
    getaddrinfo: Callable[[bytes | str | None, bytes | str | int | None, int, int, int, int], Sequence[sync.AddrInfo]]
    gethostbyname: Callable[[str], str]
    gethostbyname_ex: Callable[[str], tuple[str, list[str], list[str]]]
    connect: Callable[[socket.socket, SocketAddress], None]
    connect_ex: Callable[[socket.socket, SocketAddress], int]
    getpeername: Callable[[socket.socket], object]
    getsockname: Callable[[socket.socket], object]
    setsockopt: _SetSockOpt
    getsockopt: _GetSockOpt

    @classmethod
    def now(cls) -> _Stdlib:
        """The functions as they are now."""
        return cls(
            socket.create_connection, socket.getaddrinfo, socket.gethostbyname, socket.gethostbyname_ex,
            socket.socket.connect, socket.socket.connect_ex, socket.socket.getpeername, socket.socket.getsockname,
            socket.socket.setsockopt, socket.socket.getsockopt,
        )


#: What install() replaced, while it is installed.
_replaced: _Stdlib | None = None


def installed() -> bool:
    return _replaced is not None


def current_session() -> sync.Session | None:
    """The session this process's connects go through, while installed (None before the first use after a fork)."""
    return _session


def install(*monitor_args: str, session: sync.Session | None = None) -> None:
    """Route this process's TCP connects and name lookups through an arca monitor.

    ``session`` is a ``sync.Session`` to use; by default one is opened
    (attaching to ``ARCA_MONITOR`` when set, else spawning a monitor with
    ``monitor_args``) and closed again by :func:`uninstall`. Calling it
    again while installed does nothing.
    """
    global _session, _own_session, _monitor_args, _replaced
    with _lock:
        if installed():
            return
        _own_session = session is None
        _monitor_args = monitor_args
        _session = session or sync.open_session(*monitor_args)
        _replaced = _Stdlib.now()
        for owner, name, replacement in _REPLACEMENTS:
            setattr(owner, name, replacement)


def uninstall() -> None:
    """Give the process its own networking back, and close the session ``install`` opened."""
    global _session, _replaced
    with _lock:
        if _replaced is not None:
            originals = _replaced._asdict()
            for owner, name, _ in _REPLACEMENTS:
                setattr(owner, name, originals[name])
        _replaced = None
        session, _session = _session, None
    if session is not None and _own_session:
        session.close()


def _current() -> sync.Session:
    """The session, opened again in a forked child (the parent's thread did not survive the fork)."""
    global _session
    with _lock:
        if _session is None:
            _session = sync.open_session(*_monitor_args)
        return _session


def _after_fork() -> None:
    global _session, _own_session
    if installed() and _session is not None:
        parents, _session, _own_session = _session, None, True
        parents.forget_after_fork()


os.register_at_fork(after_in_child=_after_fork)
atexit.register(uninstall)


def _stdlib() -> _Stdlib:
    """The functions the replacements fall back on: those install() replaced (or, once
    uninstalled, those in place now, for a replacement someone kept a reference to)."""
    return _replaced or _Stdlib.now()


# --- the replacements -------------------------------------------------------------------


def _create_connection(
    address: tuple[str, int],
    timeout: object = sync.DEFAULT_TIMEOUT,
    source_address: SocketAddress | None = None,
    *,
    all_errors: bool = False,
) -> socket.socket:
    if in_portal_thread():
        seconds = socket.getdefaulttimeout() if timeout is sync.DEFAULT_TIMEOUT else timeout
        if seconds is not None and not isinstance(seconds, (int, float)):
            raise TypeError(f"a timeout is a number of seconds or None, not {seconds!r}")
        return _stdlib().create_connection(address, seconds, source_address, all_errors=all_errors)
    return _current().create_connection(address, timeout, source_address, all_errors=all_errors)


def _getaddrinfo(
    host: bytes | str | None, port: bytes | str | int | None, family: int = 0, type: int = 0, proto: int = 0,
    flags: int = 0,
) -> list[sync.AddrInfo]:
    if in_portal_thread():
        return list(_stdlib().getaddrinfo(host, port, family, type, proto, flags))
    return _current().getaddrinfo(host, port, family, type, proto, flags)


def _gethostbyname(name: str) -> str:
    if in_portal_thread():
        return _stdlib().gethostbyname(name)
    return _current().gethostbyname(name)


def _gethostbyname_ex(name: str) -> tuple[str, list[str], list[str]]:
    if in_portal_thread():
        return _stdlib().gethostbyname_ex(name)
    infos = _current().getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    return name, [], list(dict.fromkeys(str(info[4][0]) for info in infos))


def _routed(sock: socket.socket) -> bool:
    # Never from the portal's own thread: it would wait on itself.
    return sock.family in _TCP_FAMILIES and sock.type == socket.SOCK_STREAM and not in_portal_thread()


#: Keepalive's tuning, carried over with SO_KEEPALIVE when a program set it before connect().
_KEEPALIVE_OPTIONS = (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)


def _options_set_before(sock: socket.socket) -> list[tuple[int, int, int]]:
    """TCP_NODELAY and keepalive as the program set them on its own socket (urllib3 does,
    before connecting): to be set again on the relayed connection's real socket."""
    getsockopt = _stdlib().getsockopt
    carried = []
    if getsockopt(sock, socket.IPPROTO_TCP, socket.TCP_NODELAY):
        carried.append((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1))
    if getsockopt(sock, socket.SOL_SOCKET, socket.SO_KEEPALIVE):
        carried.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
        carried += [(socket.IPPROTO_TCP, name, getsockopt(sock, socket.IPPROTO_TCP, name))
                    for name in _KEEPALIVE_OPTIONS]
    return carried


def _connect(self: socket.socket, address: SocketAddress) -> None:
    if not _routed(self):
        return _stdlib().connect(self, address)
    if sync.relayed(self) is not None:
        raise OSError(errno.EISCONN, os.strerror(errno.EISCONN))
    host, port = _tcp_address(self, address)
    carried = _options_set_before(self)
    timeout = self.gettimeout()
    # A non-blocking socket (timeout 0) still gets a whole connect: see the limits above.
    relayed = _current().create_connection((host, port), timeout=timeout or None, family=self.family)
    try:
        for level, name, value in carried:
            relayed.setsockopt(level, name, value)
        # The same socket, so sync.relayed() knows it: getpeername and TCP options keep working.
        os.dup2(relayed.fileno(), self.fileno(), inheritable=self.get_inheritable())
    finally:
        relayed.close()
    self.settimeout(timeout)  # the new file description needs the object's blocking mode


def _tcp_address(sock: socket.socket, address: SocketAddress) -> tuple[str, int]:
    """``(host, port)`` of the address a TCP socket connects to; TypeError if it is not one, as connect says."""
    if not (isinstance(address, tuple) and len(address) >= 2 and isinstance(address[0], str)
            and isinstance(address[1], int)):
        raise TypeError(f"{sock.family.name} address must be a tuple (host, port), not {address!r}")
    host, port = address[0], address[1]
    if sock.family == socket.AF_INET6 and len(address) >= 4 and address[3]:
        host = f"{host}%{address[3]}"  # a link-local address needs its scope
    return host, port


def _connect_ex(self: socket.socket, address: SocketAddress) -> int:
    if not _routed(self):
        return _stdlib().connect_ex(self, address)
    try:
        _connect(self, address)
    except TimeoutError:
        return errno.EAGAIN  # as connect_ex reports a timed-out connect
    except OSError as exc:
        if exc.errno is None:
            raise
        return exc.errno
    return 0


def _getpeername(self: socket.socket) -> object:
    entry = sync.relayed(self)
    return entry.peer if entry else _stdlib().getpeername(self)


def _getsockname(self: socket.socket) -> object:
    entry = sync.relayed(self)
    return entry.local if entry else _stdlib().getsockname(self)


def _setsockopt(self: socket.socket, level: int, name: int, value: int | ReadableBuffer | None, *rest: int) -> None:
    forward = isinstance(value, int) and sync.is_tcp_option(level, name, value, rest) and not in_portal_thread()
    entry = sync.relayed(self) if forward else None
    if entry and entry.options is not None and isinstance(value, int):
        entry.options.set(level, name, value)
    else:
        _stdlib().setsockopt(self, level, name, value, *rest)


def _getsockopt(self: socket.socket, level: int, name: int, *rest: int) -> int | bytes:
    forward = sync.is_tcp_option(level, name, 0, rest) and not in_portal_thread()
    entry = sync.relayed(self) if forward else None
    if entry and entry.options is not None:
        return entry.options.get(level, name)
    return _stdlib().getsockopt(self, level, name, *rest)


_REPLACEMENTS: tuple[tuple[object, str, Callable[..., object]], ...] = (
    (socket, "create_connection", _create_connection),
    (socket, "getaddrinfo", _getaddrinfo),
    (socket, "gethostbyname", _gethostbyname),
    (socket, "gethostbyname_ex", _gethostbyname_ex),
    (socket.socket, "connect", _connect),
    (socket.socket, "connect_ex", _connect_ex),
    (socket.socket, "getpeername", _getpeername),
    (socket.socket, "getsockname", _getsockname),
    (socket.socket, "setsockopt", _setsockopt),
    (socket.socket, "getsockopt", _getsockopt),
)

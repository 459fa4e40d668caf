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
from typing import Any

from . import sync
from .portal import in_portal_thread
from .protocol.launch import TRANSPARENT_ENV


_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)
_lock = threading.RLock()
_originals: dict[tuple[object, str], Any] = {}
_session: sync.Session | None = None
_own_session = False
_monitor_args: tuple[str, ...] = ()


def installed() -> bool:
    return bool(_originals)


def install(*monitor_args: str, session: sync.Session | None = None) -> None:
    """Route this process's TCP connects and name lookups through an arca monitor.

    ``session`` is a ``sync.Session`` to use; by default one is opened
    (attaching to ``ARCA_MONITOR`` when set, else spawning a monitor with
    ``monitor_args``) and closed again by :func:`uninstall`. Calling it
    again while installed does nothing.
    """
    global _session, _own_session, _monitor_args
    with _lock:
        if installed():
            return
        _own_session = session is None
        _monitor_args = monitor_args
        _session = session or sync.open_session(*monitor_args)
        for owner, name, replacement in _REPLACEMENTS:
            _originals[(owner, name)] = getattr(owner, name)
            setattr(owner, name, replacement)


def uninstall() -> None:
    """Give the process its own networking back, and close the session ``install`` opened."""
    global _session
    with _lock:
        for (owner, name), original in _originals.items():
            setattr(owner, name, original)
        _originals.clear()
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
        session, _session, _own_session = _session, None, True
        session._portal.forget_after_fork()


os.register_at_fork(after_in_child=_after_fork)
atexit.register(uninstall)


def _original(owner: object, name: str) -> Any:
    return _originals.get((owner, name)) or getattr(owner, name)


# --- the replacements -------------------------------------------------------------------


def _create_connection(address, timeout=sync._DEFAULT, source_address=None, *, all_errors=False):
    if in_portal_thread():
        return _original(socket, "create_connection")(address, timeout, source_address, all_errors=all_errors)
    return _current().create_connection(address, timeout, source_address, all_errors=all_errors)


def _getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
    if in_portal_thread():
        return _original(socket, "getaddrinfo")(host, port, family, type, proto, flags)
    return _current().getaddrinfo(host, port, family, type, proto, flags)


def _gethostbyname(name):
    if in_portal_thread():
        return _original(socket, "gethostbyname")(name)
    return _current().gethostbyname(name)


def _gethostbyname_ex(name):
    if in_portal_thread():
        return _original(socket, "gethostbyname_ex")(name)
    infos = _current().getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
    return name, [], list(dict.fromkeys(info[4][0] for info in infos))


def _routed(sock: socket.socket) -> bool:
    # Never from the portal's own thread: it would wait on itself.
    return sock.family in _TCP_FAMILIES and sock.type == socket.SOCK_STREAM and not in_portal_thread()


#: Keepalive's tuning, carried over with SO_KEEPALIVE when a program set it before connect().
_KEEPALIVE_OPTIONS = (socket.TCP_KEEPIDLE, socket.TCP_KEEPINTVL, socket.TCP_KEEPCNT)


def _options_set_before(sock: socket.socket) -> list[tuple[int, int, int]]:
    """TCP_NODELAY and keepalive as the program set them on its own socket (urllib3 does,
    before connecting): to be set again on the relayed connection's real socket."""
    getsockopt = _original(socket.socket, "getsockopt")
    carried = []
    if getsockopt(sock, socket.IPPROTO_TCP, socket.TCP_NODELAY):
        carried.append((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1))
    if getsockopt(sock, socket.SOL_SOCKET, socket.SO_KEEPALIVE):
        carried.append((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1))
        carried += [(socket.IPPROTO_TCP, name, getsockopt(sock, socket.IPPROTO_TCP, name))
                    for name in _KEEPALIVE_OPTIONS]
    return carried


def _connect(self: socket.socket, address) -> None:
    if not _routed(self):
        return _original(socket.socket, "connect")(self, address)
    if sync.relayed(self) is not None:
        raise OSError(errno.EISCONN, os.strerror(errno.EISCONN))
    host, port = address[0], address[1]
    if self.family == socket.AF_INET6 and len(address) >= 4 and address[3]:
        host = f"{host}%{address[3]}"  # a link-local address needs its scope
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


def _connect_ex(self: socket.socket, address) -> int:
    if not _routed(self):
        return _original(socket.socket, "connect_ex")(self, address)
    try:
        _connect(self, address)
    except TimeoutError:
        return 11  # EAGAIN, as connect_ex reports a timed-out connect
    except OSError as exc:
        if exc.errno is None:
            raise
        return exc.errno
    return 0


def _getpeername(self: socket.socket):
    entry = sync.relayed(self)
    return entry.peer if entry else _original(socket.socket, "getpeername")(self)


def _getsockname(self: socket.socket):
    entry = sync.relayed(self)
    return entry.local if entry else _original(socket.socket, "getsockname")(self)


def _setsockopt(self: socket.socket, level, name, value, *rest):
    forward = sync.is_tcp_option(level, name, value, rest) and not in_portal_thread()
    entry = sync.relayed(self) if forward else None
    if entry and entry.options is not None:
        entry.options.set(level, name, int(value))
    else:
        _original(socket.socket, "setsockopt")(self, level, name, value, *rest)


def _getsockopt(self: socket.socket, level, name, *rest):
    forward = sync.is_tcp_option(level, name, 0, rest) and not in_portal_thread()
    entry = sync.relayed(self) if forward else None
    if entry and entry.options is not None:
        return entry.options.get(level, name)
    return _original(socket.socket, "getsockopt")(self, level, name, *rest)


_REPLACEMENTS = (
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

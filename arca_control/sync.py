"""The blocking API: stdlib-shaped calls that return real sockets, safe from any thread.

    with arca_control.sync.open_session() as s:
        sock = s.create_connection(("example.org", 80), timeout=10)
        infos = s.getaddrinfo("example.org", 443)
        with s.listen("127.0.0.1", 0) as listener:
            conn, peer = listener.accept()

Every connection comes over the socket channel (PROTOCOL.md section 5), so
``create_connection`` and ``accept`` return an :class:`ArcaSocket`: a real
``socket.socket`` (an AF_UNIX stream socket whose far end the monitor
relays) that ``ssl.SSLContext.wrap_socket``, ``makefile``, selectors and
``asyncio.open_connection(sock=...)`` take as they are. Its
``getpeername()`` and ``getsockname()`` give the TCP connection's addresses
(a socket object made from its fd, as ``wrap_socket`` and ``dup`` make one,
answers as the AF_UNIX socket it is, ``''``, except in transparent mode).

The calls run in the session's own trio thread (``portal.py``); many threads
may call one session at once. Errors are the stdlib's: ``OSError``
subclasses with the real errno, ``socket.gaierror``, ``TimeoutError``.
"""

from __future__ import annotations

import collections
import errno
import os
import socket
import threading
from contextlib import nullcontext
from typing import Any, NamedTuple

import trio

from .protocol import errors
from .portal import Portal
from .session import ArcaSession, open_session as _open_trio_session
from .protocol.wire import Endpoint, OptionTarget

#: The stdlib's own "no timeout given" marker, so that callers passing it along (http.client) mean the same.
_DEFAULT = socket._GLOBAL_DEFAULT_TIMEOUT


class ArcaSocket(socket.socket):
    """A connection's socket, as the monitor hands it over; its addresses are the TCP ones.

    TCP-level options (IPPROTO_TCP, and SO_KEEPALIVE) are set on and read from
    the monitor's real TCP socket, so that code which tunes them, as
    ``http.client`` sets TCP_NODELAY, works as on a TCP socket; the monitor
    allows the options listed in PROTOCOL.md and answers others ENOPROTOOPT.
    """

    def __init__(self, *args: Any, relayed: Relayed | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        #: What this socket stands for (None for a plain copy, as ``dup()`` makes).
        self.arca = relayed
        if relayed is not None:
            _remember(self, relayed)

    def getpeername(self):
        return self.arca.peer if self.arca is not None else super().getpeername()

    def getsockname(self):
        return self.arca.local if self.arca is not None else super().getsockname()

    def setsockopt(self, level: int, name: int, value: Any, *rest: Any) -> None:
        if self.arca is not None and self.arca.options is not None and is_tcp_option(level, name, value, rest):
            self.arca.options.set(level, name, int(value))
        else:
            super().setsockopt(level, name, value, *rest)

    def getsockopt(self, level: int, name: int, *rest: Any):
        if self.arca is not None and self.arca.options is not None and is_tcp_option(level, name, 0, rest):
            return self.arca.options.get(level, name)
        return super().getsockopt(level, name, *rest)


class Relayed(NamedTuple):
    """What a relayed connection's socket stands for: its TCP addresses, and its options."""

    local: tuple | str
    peer: tuple | str
    options: ConnectionOptions | None


#: Socket inode -> Relayed, for every connection handed out, so that transparent mode can
#: answer for any socket object over it (an SSLSocket, a dup). Inodes of sockets are not
#: reused in practice (a 32-bit counter); the oldest entries go past RELAYED_MAX.
_relayed: collections.OrderedDict[int, Relayed] = collections.OrderedDict()
RELAYED_MAX = 65536
_relayed_lock = threading.Lock()


def _remember(sock: socket.socket, entry: Relayed) -> None:
    with _relayed_lock:
        _relayed[os.fstat(sock.fileno()).st_ino] = entry
        while len(_relayed) > RELAYED_MAX:
            _relayed.popitem(last=False)


def relayed(sock: socket.socket) -> Relayed | None:
    """The relayed connection under ``sock`` (any socket object over its fd), or None."""
    try:
        inode = os.fstat(sock.fileno()).st_ino
    except (OSError, ValueError):
        return None
    return _relayed.get(inode)


def is_tcp_option(level: int, name: int, value: Any, rest: tuple) -> bool:
    """An integer option that belongs to the TCP socket, not to the AF_UNIX one under it."""
    tcp = level == socket.IPPROTO_TCP or (level == socket.SOL_SOCKET and name == socket.SO_KEEPALIVE)
    return tcp and not rest and isinstance(value, int)


class ConnectionOptions:
    """Socket options of one relayed connection, set in the monitor through a portal."""

    def __init__(self, portal: Portal, connection_id: int) -> None:
        self._portal = portal
        self._connection_id = connection_id

    def set(self, level: int, name: int, value: int) -> int:
        return self._portal.call(_set_option, self._connection_id, level, name, value)

    def get(self, level: int, name: int) -> int:
        return self._portal.call(_get_option, self._connection_id, level, name)


async def _set_option(session: ArcaSession, connection_id: int, level: int, name: int, value: int) -> int:
    return await session._set_option(OptionTarget.CONNECTION, connection_id, level, name, value)


async def _get_option(session: ArcaSession, connection_id: int, level: int, name: int) -> int:
    return await session._get_option(OptionTarget.CONNECTION, connection_id, level, name)


def _address(endpoint: Endpoint) -> tuple:
    """An Endpoint as the stdlib gives addresses: (host, port), or (host, port, 0, scope) for IPv6."""
    if endpoint.is_unix:
        return endpoint.host
    if ":" in endpoint.host:
        host, _, scope = endpoint.host.partition("%")
        return (host, endpoint.port, 0, int(scope) if scope.isdigit() else socket.if_nametoindex(scope) if scope else 0)
    return (endpoint.host, endpoint.port)


def socket_from(stream) -> ArcaSocket:
    """The ArcaSocket of a socket-channel stream, which it takes over (in the portal's thread)."""
    options = ConnectionOptions(stream.session.portal, stream.connection_id) if stream.session.portal else None
    plain = stream.detach()
    try:
        relayed = Relayed(_address(stream.local), _address(stream.peer), options)
        return ArcaSocket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=plain.detach(), relayed=relayed)
    except BaseException:
        plain.close()
        raise


def _timeout(timeout: Any) -> float | None:
    return socket.getdefaulttimeout() if timeout is _DEFAULT else timeout


async def connect(session: ArcaSession, host: str, port: int, timeout: float | None, family: int = 0) -> ArcaSocket:
    """Connect through ``session`` (in its thread): the socket, or the stdlib's error."""
    try:
        with trio.fail_after(timeout) if timeout is not None else nullcontext():
            stream = await session.connect(host, port, timeout=timeout, family=family)
    except trio.TooSlowError:
        raise TimeoutError(f"connecting to {host}:{port} timed out") from None
    return socket_from(stream)


_PROTOCOL_OF = {socket.SOCK_STREAM: socket.IPPROTO_TCP, socket.SOCK_DGRAM: socket.IPPROTO_UDP}
_TYPE_OF = {protocol: kind for kind, protocol in _PROTOCOL_OF.items()}


async def getaddrinfo(session: ArcaSession, host, port, family=0, type=0, proto=0, flags=0) -> list[tuple]:
    """``socket.getaddrinfo``, answered by the monitor (in the session's thread).

    A numeric host (or None, with AI_PASSIVE for the wildcard) is answered
    here without the monitor, as the stdlib answers it without DNS. Names
    give stream and datagram entries (no SOCK_RAW ones), the canonical name
    (AI_CANONNAME) being the name asked, on the first entry.
    """
    if isinstance(host, bytes):
        host = host.decode("idna")
    if proto and type and _PROTOCOL_OF.get(type) != proto:
        raise socket.gaierror(socket.EAI_SOCKTYPE, "ai_socktype not supported")
    type = type or _TYPE_OF.get(proto, 0)
    port, type = _service(port, type, flags)
    if host is None or _is_numeric(host) or flags & socket.AI_NUMERICHOST:
        return socket.getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
    found = await session.resolve(host, port, family, type)
    return [
        (socket.AddressFamily(fam), socket.SocketKind(kind), _PROTOCOL_OF[kind],
         host if flags & socket.AI_CANONNAME and number == 0 else "", _address(endpoint))
        for number, (fam, kind, endpoint) in enumerate(found)
    ]


def _service(port, type: int, flags: int) -> tuple[int | None, int]:
    """A port given as a number, a numeric string or a service name: (port, socket type).

    A name known for one protocol only narrows ``type`` to it, as the stdlib does.
    """
    if isinstance(port, bytes):
        port = port.decode()
    if not isinstance(port, str) or port.isdigit():
        return (int(port) if port is not None else None), type
    if flags & socket.AI_NUMERICSERV:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    kinds = [type] if type else [socket.SOCK_STREAM, socket.SOCK_DGRAM]
    found = {}
    for kind in kinds:
        try:
            found[kind] = socket.getservbyname(port, "tcp" if kind == socket.SOCK_STREAM else "udp")
        except OSError:
            continue
    if not found:
        raise socket.gaierror(socket.EAI_SERVICE, f"unknown service {port!r}")
    return next(iter(found.values())), (type or (next(iter(found)) if len(found) == 1 else 0))


def _is_numeric(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None, flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        return False
    return True


class Listener:
    """A listening socket in the monitor, with a blocking ``accept()``.

    Resource handling: closing it (or leaving its ``with`` block) closes the
    monitor's socket; connections already accepted stay open.
    """

    def __init__(self, portal: Portal, listener) -> None:
        self._portal = portal
        self._listener = listener

    def getsockname(self) -> tuple:
        """The address really bound (the kernel's port for port 0)."""
        return _address(self._listener.local)

    def accept(self) -> tuple[ArcaSocket, tuple]:
        """Wait for the next connection: ``(socket, peer address)``, as ``socket.accept`` gives."""
        sock = self._portal.call(_accept, self._listener)
        return sock, sock.getpeername()

    def close(self) -> None:
        """Close the listener; like a socket's ``close``, it never fails (a closed session closed it)."""
        try:
            self._portal.call(lambda session: self._listener.aclose())
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


async def _stats(session: ArcaSession) -> dict:
    return await session.stats()


async def _accept(session: ArcaSession, listener) -> ArcaSocket:
    return socket_from(await listener.accept())


class Session:
    """A blocking session with a monitor; build it with :func:`open_session`."""

    def __init__(self, portal: Portal) -> None:
        self._portal = portal

    def create_connection(
        self, address: tuple[str, int], timeout: Any = _DEFAULT, source_address: Any = None, *,
        all_errors: bool = False, family: int = 0,
    ) -> ArcaSocket:
        """Like ``socket.create_connection``: a connected socket, with ``timeout`` set on it.

        ``timeout`` bounds the whole connect (each address tried gets it too);
        it defaults to ``socket.getdefaulttimeout()``. ``source_address`` is
        not supported: the monitor picks the source (EOPNOTSUPP if given).
        ``family`` (AF_INET or AF_INET6) limits the addresses a name may give.
        """
        if source_address is not None:
            raise errors.error_from_errno(errno.EOPNOTSUPP, "arca connects from the monitor's own address: no source_address")
        host, port = address[0], address[1]
        timeout = _timeout(timeout)
        sock = self._portal.call(connect, host, port, timeout, family)
        sock.settimeout(timeout)
        return sock

    def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0) -> list[tuple]:
        """Like ``socket.getaddrinfo``, with names looked up by the monitor."""
        return self._portal.call(getaddrinfo, host, port, family, type, proto, flags)

    def gethostbyname(self, name: str) -> str:
        """Like ``socket.gethostbyname``: the first IPv4 address of ``name``."""
        return self.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]

    def listen(self, host: str, port: int, *, backlog: int = 128) -> Listener:
        """Listen on ``host:port`` in the monitor (port 0: the kernel chooses)."""

        async def _listen(session: ArcaSession):
            return await session.listen(host, port, backlog=backlog)

        return Listener(self._portal, self._portal.call(_listen))

    def stats(self) -> dict:
        """This session's counters, from the monitor (as ``ArcaSession.stats``)."""
        return self._portal.call(_stats)

    def close(self) -> None:
        self._portal.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def open_session(*monitor_args: str) -> Session:
    """A blocking session: attaches to ``ARCA_MONITOR`` when set, else spawns a monitor.

    ``monitor_args`` are extra ``arca-monitor`` options. Use it as a context
    manager, or call ``close()``.
    """
    portal = Portal(lambda: _open_trio_session(*monitor_args, socket_channel=True))
    portal.start()
    return Session(portal)

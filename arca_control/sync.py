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
from typing import TYPE_CHECKING, NamedTuple, Self, overload

import trio

from .portal import Portal, current_portal
from .protocol import errors
from .protocol.values import IPSockAddr, SockAddr
from .session import ArcaSession, SessionStats
from .session import open_session as _open_trio_session

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

    from .handle import Handle
    from .stream import ArcaListener, ArcaStream

#: The stdlib's own "no timeout given" marker, so that callers passing it along (http.client) mean the same.
#: (Not in the stdlib's type stubs, hence read from the module's namespace.)
DEFAULT_TIMEOUT: object = vars(socket)["_GLOBAL_DEFAULT_TIMEOUT"]

#: An IP address as the stdlib's sockets give it: (host, port), or (host, port, flowinfo, scope id) for IPv6.
IPAddress = IPSockAddr
#: Any address a relayed connection has: an IP address, or an AF_UNIX path.
Address = SockAddr
#: One entry of ``getaddrinfo``, as the stdlib types it.
AddrInfo = tuple[
    socket.AddressFamily, socket.SocketKind, int, str, tuple[str, int] | tuple[str, int, int, int] | tuple[int, bytes]
]


class ArcaSocket(socket.socket):
    """A connection's socket, as the monitor hands it over; its addresses are the TCP ones.

    TCP-level options (IPPROTO_TCP, and SO_KEEPALIVE) are set on and read from
    the monitor's real TCP socket, so that code which tunes them, as
    ``http.client`` sets TCP_NODELAY, works as on a TCP socket; the monitor
    allows the options listed in PROTOCOL.md and answers others ENOPROTOOPT.
    """

    def __init__(
        self,
        family: int = -1,
        type: int = -1,
        proto: int = -1,
        fileno: int | None = None,
        *,
        relayed: Relayed | None = None,
    ) -> None:
        super().__init__(family, type, proto, fileno)
        #: What this socket stands for (None for a plain copy, as ``dup()`` makes).
        self.arca = relayed
        if relayed is not None:
            _remember(self, relayed)

    def getpeername(self) -> Address:
        return self.arca.peer if self.arca is not None else super().getpeername()

    def getsockname(self) -> Address:
        return self.arca.local if self.arca is not None else super().getsockname()

    def setsockopt(self, level: int, name: int, value: int | ReadableBuffer | None, *rest: int) -> None:
        options = self.arca.options if self.arca is not None else None
        if options is not None and isinstance(value, int) and is_tcp_option(level, name, value, rest):
            options.set(level, name, value)
        else:
            super().setsockopt(level, name, value, *rest)

    @overload
    def getsockopt(self, level: int, name: int, /) -> int: ...

    @overload
    def getsockopt(self, level: int, name: int, buflen: int, /) -> bytes: ...

    def getsockopt(self, level: int, name: int, buflen: int | None = None, /) -> int | bytes:
        options = self.arca.options if self.arca is not None else None
        if buflen is not None:
            return super().getsockopt(level, name, buflen)
        if options is not None and is_tcp_option(level, name, 0, ()):
            return options.get(level, name)
        return super().getsockopt(level, name)


class Relayed(NamedTuple):
    """What a relayed connection's socket stands for: its TCP addresses, and its options."""

    local: Address
    peer: Address
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


def is_tcp_option(level: int, name: int, value: object, rest: tuple[object, ...]) -> bool:
    """An integer option that belongs to the TCP socket, not to the AF_UNIX one under it."""
    tcp = level == socket.IPPROTO_TCP or (level == socket.SOL_SOCKET and name == socket.SO_KEEPALIVE)
    return tcp and not rest and isinstance(value, int)


class ConnectionOptions:
    """Socket options of one relayed connection, set in the monitor through a portal.

    ``handle`` is the connection's, which outlives the stream the socket was detached from.
    """

    def __init__(self, portal: Portal, handle: Handle) -> None:
        self._portal = portal
        self._handle = handle

    def set(self, level: int, name: int, value: int) -> int:
        return self._portal.call(_set_option, self._handle, level, name, value)

    def get(self, level: int, name: int) -> int:
        return self._portal.call(_get_option, self._handle, level, name)


async def _set_option(session: ArcaSession, handle: Handle, level: int, name: int, value: int) -> int:
    return await handle.set_option(level, name, value)


async def _get_option(session: ArcaSession, handle: Handle, level: int, name: int) -> int:
    return await handle.get_option(level, name)




def socket_from(stream: ArcaStream, portal: Portal | None = None) -> ArcaSocket:
    """The ArcaSocket of a socket-channel stream, which it takes over (in the portal's thread).

    With ``portal`` (the one whose thread this is), its TCP options are set through it.
    """
    options = ConnectionOptions(portal, stream.handle) if portal is not None else None
    plain = stream.detach()
    try:
        relayed = Relayed(stream.local.sockaddr(), stream.peer.sockaddr(), options)
        return ArcaSocket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=plain.detach(), relayed=relayed)
    except BaseException:
        plain.close()
        raise


def _timeout(timeout: object) -> float | None:
    if timeout is DEFAULT_TIMEOUT:
        return socket.getdefaulttimeout()
    if timeout is None or isinstance(timeout, (int, float)):
        return timeout
    raise TypeError(f"a timeout is a number of seconds or None, not {timeout!r}")


async def connect(
    # The caller waits in another thread: its timeout comes along, to bound the connect here.
    session: ArcaSession, host: str, port: int, timeout: float | None, family: int = 0  # noqa: ASYNC109
) -> ArcaSocket:
    """Connect through ``session`` (in its thread): the socket, or the stdlib's error."""
    try:
        with trio.fail_after(timeout) if timeout is not None else nullcontext():
            stream = await session.connect(host, port, timeout=timeout, family=family)
    except trio.TooSlowError:
        raise TimeoutError(f"connecting to {host}:{port} timed out") from None
    return socket_from(stream, current_portal())


_PROTOCOL_OF = {socket.SOCK_STREAM: socket.IPPROTO_TCP, socket.SOCK_DGRAM: socket.IPPROTO_UDP}
_TYPE_OF = {protocol: kind for kind, protocol in _PROTOCOL_OF.items()}


async def getaddrinfo(
    session: ArcaSession,
    host: str | bytes | None,
    port: str | bytes | int | None,
    family: int = 0,
    type: int = 0,
    proto: int = 0,
    flags: int = 0,
) -> list[AddrInfo]:
    """``socket.getaddrinfo``, answered by the monitor (in the session's thread).

    A numeric host (or None, with AI_PASSIVE for the wildcard) is answered
    here without the monitor, as the stdlib answers it without DNS. Names
    give stream and datagram entries (no SOCK_RAW ones), the canonical name
    (AI_CANONNAME) being the name asked, on the first entry.
    """
    if isinstance(host, bytes):
        host = host.decode("idna")
    if proto and type and _PROTOCOL_OF.get(socket.SocketKind(type)) != proto:
        raise socket.gaierror(socket.EAI_SOCKTYPE, "ai_socktype not supported")
    kind = type or _TYPE_OF.get(proto, 0)
    number, kind = _service(port, kind, flags)
    if host is None or _is_numeric(host) or flags & socket.AI_NUMERICHOST:
        return list(socket.getaddrinfo(host, number, family, kind, proto, flags | socket.AI_NUMERICHOST))
    found = await session.resolve(host, number, family, kind)
    return [
        (socket.AddressFamily(found_family), socket.SocketKind(found_kind), _PROTOCOL_OF[socket.SocketKind(found_kind)],
         host if flags & socket.AI_CANONNAME and index == 0 else "", endpoint.ip_sockaddr())
        for index, (found_family, found_kind, endpoint) in enumerate(found)
    ]


def _service(port: str | bytes | int | None, kind: int, flags: int) -> tuple[int | None, int]:
    """A port given as a number, a numeric string or a service name: (port, socket type).

    A name known for one protocol only narrows ``kind`` to it, as the stdlib does.
    """
    if isinstance(port, bytes):
        port = port.decode()
    if not isinstance(port, str) or port.isdigit():
        return (int(port) if port is not None else None), kind
    if flags & socket.AI_NUMERICSERV:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    kinds = [kind] if kind else [socket.SOCK_STREAM, socket.SOCK_DGRAM]
    found: dict[int, int] = {}
    for candidate in kinds:
        try:
            found[candidate] = socket.getservbyname(port, "tcp" if candidate == socket.SOCK_STREAM else "udp")
        except OSError:
            continue
    if not found:
        raise socket.gaierror(socket.EAI_SERVICE, f"unknown service {port!r}")
    return next(iter(found.values())), (kind or (next(iter(found)) if len(found) == 1 else 0))


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

    def __init__(self, portal: Portal, listener: ArcaListener) -> None:
        self._portal = portal
        self._listener = listener

    def getsockname(self) -> IPAddress:
        """The address really bound (the kernel's port for port 0)."""
        return self._listener.local.ip_sockaddr()

    def accept(self) -> tuple[ArcaSocket, Address]:
        """Wait for the next connection: ``(socket, peer address)``, as ``socket.accept`` gives."""
        sock = self._portal.call(accept, self._listener)
        return sock, sock.getpeername()

    def close(self) -> None:
        """Close the listener; like a socket's ``close``, it never fails (a closed session closed it)."""
        try:
            self._portal.call(close_listener, self._listener)
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


async def stats(session: ArcaSession) -> SessionStats:
    """``session.stats()`` (in the session's thread)."""
    return await session.stats()


async def accept(session: ArcaSession, listener: ArcaListener) -> ArcaSocket:
    """The next connection on ``listener``, as a socket (in the session's thread)."""
    return socket_from(await listener.accept(), current_portal())


async def close_listener(session: ArcaSession, listener: ArcaListener) -> None:
    """Close ``listener`` (in the session's thread)."""
    await listener.aclose()


class Session:
    """A blocking session with a monitor; build it with :func:`open_session`."""

    def __init__(self, portal: Portal) -> None:
        self._portal = portal

    @property
    def portal(self) -> Portal:
        """The portal whose thread runs this session's trio session."""
        return self._portal

    def create_connection(
        self, address: tuple[str, int], timeout: object = DEFAULT_TIMEOUT, source_address: object = None, *,
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
        seconds = _timeout(timeout)
        sock = self._portal.call(connect, host, port, seconds, family)
        sock.settimeout(seconds)
        return sock

    def getaddrinfo(
        self,
        host: str | bytes | None,
        port: str | bytes | int | None,
        family: int = 0,
        type: int = 0,
        proto: int = 0,
        flags: int = 0,
    ) -> list[AddrInfo]:
        """Like ``socket.getaddrinfo``, with names looked up by the monitor."""
        return self._portal.call(getaddrinfo, host, port, family, type, proto, flags)

    def gethostbyname(self, name: str) -> str:
        """Like ``socket.gethostbyname``: the first IPv4 address of ``name``."""
        return str(self.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])

    def listen(self, host: str, port: int, *, backlog: int = 128) -> Listener:
        """Listen on ``host:port`` in the monitor (port 0: the kernel chooses)."""

        async def listen(session: ArcaSession) -> ArcaListener:
            return await session.listen(host, port, backlog=backlog)

        return Listener(self._portal, self._portal.call(listen))

    def stats(self) -> SessionStats:
        """This session's counters, from the monitor (as ``ArcaSession.stats``)."""
        return self._portal.call(stats)

    def forget_after_fork(self) -> None:
        """In a forked child: let go of the parent's session without ending it (``Portal.forget_after_fork``)."""
        self._portal.forget_after_fork()

    def close(self) -> None:
        self._portal.close()

    def __enter__(self) -> Self:
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

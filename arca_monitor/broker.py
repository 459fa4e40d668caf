"""One guest's access to the network, whichever front end asks: the decisions, the sockets, the audit and the counts.

A front end (today the control-protocol session; later also connections
redirected inside the sandbox) asks the broker for what its guest wants: a
listener, a connection, a UDP socket, a name lookup. The broker refuses what
cannot be done at all (EAFNOSUPPORT, EINVAL), then checks the policy and the
limits, opens the socket through ``net``, and returns it; or raises an
``OSError`` with the errno to report: ``policy.Denied`` (EACCES, counted as a
denial), a limit's errno (``config``), or the kernel's. A front end asks, say,
``sock = await broker.connect(endpoint, name=...)`` and decides itself how to hand
the socket to its client. The broker knows nothing of the control protocol:
no messages, no request ids.

What every front end of one guest shares lives here too: the audit log (and
the session number its lines carry), what is open (which the limits and Stats
read), the operations in flight, the denials, and the bytes of connections
already closed.

Resource handling: a socket the broker returns belongs to the caller. The
broker counts it from then on until the caller reports it gone
(:meth:`Broker.released` for a listener or UDP socket, a "close" to
:meth:`Broker.connection_changed` for a connection registered with
:meth:`Broker.connection_opened`). A socket that fails on the way (denied
after binding, a connect that fails or is cancelled) is closed here.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import errno
import functools
import itertools
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import trio

from . import net
from .inflight import Connecting, Slot
from .policy import Denied, Kind
from .resolver import ResolveError, parse_literal
from .splice_relay import Flow, relay

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from arca_control.protocol.wire import Endpoint

    from .audit import AuditLog
    from .config import Config
    from .policy import Policy
    from .resolver import Names, Resolver


class Held(enum.Enum):
    """What the broker counts while a front end holds it (connections are counted one by one)."""

    LISTENER = "listeners"
    DATAGRAM_SOCKET = "datagram sockets"


class Metered(Protocol):
    """A relayed connection as the broker counts it: its id and the bytes it moved each way so far."""

    @property
    def connection_id(self) -> int: ...
    @property
    def bytes_up(self) -> int: ...
    @property
    def bytes_down(self) -> int: ...


@dataclass(frozen=True)
class Bound:
    """A bound socket the broker opened: ``local`` as the kernel bound it; ``cleanup`` to run after closing it."""

    sock: socket.socket
    local: Endpoint
    #: An AF_UNIX listener's: removes its socket file (if it is still the one it bound).
    cleanup: Callable[[], None] | None = None


class Broker:
    """One guest's decisions, counts and audit log, shared by its front ends."""

    def __init__(self, config: Config, policy: Policy, resolver: Resolver, audit: AuditLog, session: int) -> None:
        self.config = config
        self.policy = policy
        #: Shared by every session of the monitor (one cache).
        self.resolver = resolver
        self.audit = audit
        #: The number the audit log and the monitor's log name this guest's session by.
        self.session = session
        #: Requests denied by the policy.
        self.denials = 0
        #: Listeners and UDP sockets open.
        self.held: collections.Counter[Held] = collections.Counter()
        #: Relayed connections open, by id.
        self.connections: dict[int, Metered] = {}
        #: Bytes moved by connections already closed: guest to peer, peer to guest.
        self.closed_bytes_up = 0
        self.closed_bytes_down = 0
        #: Relayed connections opened so far, whichever front end opened them.
        self.opened = 0
        self._slots = 0
        # How many requests each front end keeps waiting on its own (queued Accepts): in flight too.
        self._waiting: list[Callable[[], int]] = []
        self._connection_ids = itertools.count(1)

    # --- limits ------------------------------------------------------------------------------

    def count_waiting(self, waiting: Callable[[], int]) -> None:
        """Count ``waiting()`` requests of a front end as in flight (``--max-in-flight``) from now on."""
        self._waiting.append(waiting)

    @property
    def in_flight(self) -> int:
        """Connects and lookups under way, and the requests front ends keep waiting."""
        return self._slots + sum(waiting() for waiting in self._waiting)

    def check_in_flight(self) -> None:
        """Raise the limit's error (EAGAIN) if one more request may not be in flight."""
        self.config.check("max_in_flight", self.in_flight)

    def admit_connection(self) -> None:
        """Raise the limit's error (EMFILE) if the guest may not hold one more connection."""
        self.config.check("max_connections", len(self.connections))

    def _slot(self) -> Slot:
        self.check_in_flight()
        self._slots += 1
        return Slot(self._end_slot)

    def _end_slot(self) -> None:
        self._slots -= 1

    # --- the policy --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _deciding(self) -> Iterator[None]:
        """The policy's checks inside: each denial is counted where it is made."""
        try:
            yield
        except Denied:
            self.denials += 1
            raise

    def _check_bind(self, kind: Kind, endpoint: Endpoint) -> None:
        """Before binding: the address (and the port, unless the kernel is to choose it)."""
        with self._deciding():
            if endpoint.is_unix:
                self.policy.check_unix(endpoint.host)
            elif endpoint.port:
                self.policy.check_bind(kind, endpoint)

    def _check_bound(self, kind: Kind, sock: socket.socket) -> Endpoint:
        """After binding: the address really bound, checked with the port the kernel gave (port 0). Closes a denied socket."""
        try:
            local = net.endpoint_of(sock.getsockname())
            if not local.is_unix:
                with self._deciding():
                    self.policy.check_bind(kind, local)
        except BaseException:
            sock.close()
            raise
        return local

    def peer_allowed(self, peer: Endpoint) -> bool:
        """Whether a connection accepted from ``peer`` may reach the guest (``--allow-peer``)."""
        return peer.is_unix or self.policy.check_peer(peer)

    @staticmethod
    def _refuse_impossible(endpoint: Endpoint, *, v6only: bool = False, udp: bool = False) -> None:
        """What the monitor cannot do at all is refused for what it is, before any policy (PROTOCOL.md section 6)."""
        if udp and endpoint.is_unix:
            raise OSError(errno.EAFNOSUPPORT if endpoint.host else errno.EINVAL, "UDP needs an IP address")
        family, _ = net.sockaddr_of(endpoint)  # EAFNOSUPPORT, or EINVAL for an unnamed AF_UNIX address
        if v6only and family != socket.AF_INET6:
            raise OSError(errno.EINVAL, "V6ONLY applies to IPv6 sockets only")

    # --- opening -----------------------------------------------------------------------------

    def listen(self, endpoint: Endpoint, backlog: int, *, v6only: bool = False, reuse_port: bool = False) -> Bound:
        """A listening socket on ``endpoint``, its backlog cut to ``--max-backlog``. Counted as a held listener."""
        self._refuse_impossible(endpoint, v6only=v6only)
        self.config.check("max_listeners", self.held[Held.LISTENER])
        self._check_bind(Kind.LISTEN, endpoint)
        sock = net.open_listener(endpoint, min(backlog, self.config.max_backlog), v6only=v6only, reuse_port=reuse_port)
        local = self._check_bound(Kind.LISTEN, sock)
        cleanup = None
        if local.is_unix:
            identity = net.socket_file_identity(local.host)
            cleanup = functools.partial(net.unlink_socket_file, sock, local.host, identity)
        self.held[Held.LISTENER] += 1
        return Bound(sock, local, cleanup)

    def udp_bind(
        self, endpoint: Endpoint, *, v6only: bool = False, reuse_port: bool = False, reuse_addr: bool = False
    ) -> Bound:
        """A bound UDP socket. Counted as a held datagram socket."""
        self._refuse_impossible(endpoint, v6only=v6only, udp=True)
        self.config.check("max_datagram_sockets", self.held[Held.DATAGRAM_SOCKET])
        self._check_bind(Kind.UDP, endpoint)
        sock = net.open_udp(endpoint, v6only=v6only, reuse_port=reuse_port, reuse_addr=reuse_addr)
        local = self._check_bound(Kind.UDP, sock)
        self.held[Held.DATAGRAM_SOCKET] += 1
        return Bound(sock, local)

    def released(self, what: Held) -> None:
        """A listener or UDP socket the broker opened is closed: it no longer counts."""
        self.held[what] -= 1

    def start_connect(self, endpoint: Endpoint, *, name: str | None = None) -> socket.socket | Connecting:
        """Begin a connect the policy and the limits allow: the socket if the kernel settled it at once, else a
        :class:`Connecting` to finish (which counts as in flight until then).

        ``name`` is the name the connect is made for, when the front end knows
        it (one that resolved the name to ``endpoint`` through the monitor):
        the policy's rules for that name decide. Without it, as for a
        control-protocol Connect (which carries only an address), the names
        the monitor answered with that address do.
        """
        self._refuse_impossible(endpoint)
        with self._deciding():
            if endpoint.is_unix:
                self.policy.check_unix(endpoint.host)
            else:
                answered = functools.partial(self.resolver.names_for, fresh=True)
                self.policy.check_connect(endpoint, answered, name=name)
        return self._start_allowed(endpoint)

    def _start_allowed(self, endpoint: Endpoint) -> socket.socket | Connecting:
        self.check_in_flight()
        self.admit_connection()
        sock, connected = net.start_connection(endpoint)
        if connected:
            return sock
        return Connecting(sock, self._slot(), self.config.connect_timeout)

    async def connect(self, endpoint: Endpoint, seconds: float | None = None, *, name: str | None = None) -> socket.socket:
        """A connected socket to ``endpoint``, if the policy and the limits allow it; raises Denied or OSError.

        ``name``: the name the connect is made for, if known (see :meth:`start_connect`).
        """
        return await self._finish(self.start_connect(endpoint, name=name), seconds)

    def addresses_for(self, name: str, port: int, hosts: Iterable[str], names_for: Callable[[str], Names]) -> list[str]:
        """Of ``hosts`` (what ``name`` resolved to), those a connection made for ``name`` may use, by that name's
        rules only (``Policy.addresses_for``); raises Denied (counted) when none is left."""
        with self._deciding():
            return self.policy.addresses_for(name, port, hosts, names_for)

    async def connect_decided(self, endpoint: Endpoint, seconds: float | None = None) -> socket.socket:
        """A connected socket to an address :meth:`addresses_for` gave: the limits are checked, not the policy again."""
        self._refuse_impossible(endpoint)
        return await self._finish(self._start_allowed(endpoint), seconds)

    @staticmethod
    async def _finish(started: socket.socket | Connecting, seconds: float | None) -> socket.socket:
        if isinstance(started, socket.socket):
            await trio.lowlevel.checkpoint()
            return started
        return await started.finish(seconds)

    def start_lookup(self, name: str) -> Slot | None:
        """Allow a lookup of ``name`` (``--allow-resolve``): the slot it holds while it runs. None for an IP
        literal, which answers itself: allowed, at once, with nothing to wait for."""
        try:
            if parse_literal(name) is not None:
                return None
        except ResolveError:
            return None  # a malformed literal: the lookup itself says why, at once
        with self._deciding():
            self.policy.check_resolve(name)
        return self._slot()

    async def lookup(self, name: str, port: int, family: int, socktype: int) -> list[tuple[int, Endpoint]]:
        """``[(socket type, Endpoint), ...]`` for ``name``, in the order to try them; raises ResolveError."""
        found = await self.resolver.resolve(name, port, family, socktype)
        return [(kind, endpoint) for _, kind, endpoint in found]

    # --- connections -------------------------------------------------------------------------

    def new_connection_id(self) -> int:
        """An id for a new connection, unique among the guest's, whichever front end opens it."""
        return next(self._connection_ids)

    def connection_opened(self, conn: Metered, **fields: object) -> None:
        """Count ``conn`` from now on (``--max-connections``, Stats) and write its "open" line."""
        self.connections[conn.connection_id] = conn
        self.opened += 1
        self.record("open", connection_id=conn.connection_id, **fields)

    def connection_changed(self, event: str, conn: Metered, **fields: object) -> None:
        """A half-close or the close of ``conn``: its audit line; at "close" it stops counting, its bytes stay."""
        if event == "close" and self.connections.pop(conn.connection_id, None) is not None:
            self.closed_bytes_up += conn.bytes_up
            self.closed_bytes_down += conn.bytes_down
        self.record(event, connection_id=conn.connection_id, **fields)

    async def relay_counted(self, inner: socket.socket, outer: socket.socket, **fields: object) -> None:
        """Relay two connected sockets (``inner``: the sandbox's side) as one counted, audited connection.

        The "open" line carries ``fields``; the half-closes and the "close" line (how it
        ended, bytes each way, seconds) follow, whatever ends the relay.
        """
        flow = Flow(self.new_connection_id())
        self.connection_opened(flow, **fields)
        how = "aborted"
        try:
            how = await relay(inner, outer, flow, lambda event: self.connection_changed(event, flow))
        finally:
            self.connection_changed("close", flow, how=how, bytes_up=flow.bytes_up, bytes_down=flow.bytes_down,
                                    seconds=round(time.monotonic() - flow.opened, 6))
    def bytes_moved(self) -> tuple[int, int]:
        """Bytes moved guest to peer and peer to guest, by connections closed and open."""
        up = self.closed_bytes_up + sum(conn.bytes_up for conn in self.connections.values())
        down = self.closed_bytes_down + sum(conn.bytes_down for conn in self.connections.values())
        return up, down

    def record_summary(self) -> None:
        """The "summary" line: what this guest did in all (connections, denials, bytes), for the end of its life."""
        up, down = self.bytes_moved()
        self.record("summary", connections=self.opened, still_open=len(self.connections), denials=self.denials,
                    bytes_up=up, bytes_down=down)

    # --- the audit log -----------------------------------------------------------------------

    @property
    def auditing(self) -> bool:
        return self.audit.enabled

    def record(self, event: str, **fields: object) -> None:
        """One audit line for this guest (nothing without ``--audit-log``)."""
        if self.audit.enabled:
            self.audit.write(self.session, event, **fields)

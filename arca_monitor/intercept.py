"""The broker's second front end: TCP connections the sandbox's rules redirected, decided, connected and relayed.

Every TCP connection a program in the sandbox makes to anything but the
sandbox's own 127.0.0.1 and ::1 lands on an intercept listener (one per
family). :meth:`Intercept.serve` accepts each and asks
:func:`~arca_monitor.sandbox.destination.original_destination` where it was
going. Then, in a task of its own:

* an address of the name pool (``name_pool.NamePool``, given out by the
  sandbox's DNS) stands for a name: held for the whole connection
  (``pool.hold``), so it is never given to another name meanwhile.
  ``host.arca.internal`` is the host's 127.0.0.1 and ::1; any other name is
  resolved by the monitor's Resolver. Of the addresses, only those the
  rules for *that* name allow (``Broker.addresses_for``: name rules bound to
  the name, rebinding ranges refused) are tried, in order, until one connects;
* any other address is decided exactly like a Connect request
  (``Broker.connect``: the policy, then the limits).

The connection is then relayed zero-copy (:mod:`.splice_relay`): half-closes
go across, a reset goes across as a reset.

Audit (the broker's log, under the broker's session number): an allowed
connection writes "open" (``via`` "intercept", ``source``, ``destination``,
``name`` or null, ``decision`` "allowed", ``local`` and ``peer`` of the
host's socket), then "guest_eof"/"peer_eof" and "close" (``how``,
``bytes_up``, ``bytes_down``, ``seconds``), as the control protocol's
connections do; it counts against ``--max-connections`` and in the broker's
bytes meanwhile. A connection that is not opened writes one "intercept"
line: ``decision`` "denied" (the reason names the missing rule, ``rule`` the
option that would allow it: ``--allow-connect 127.0.0.1:8000``) or "failed"
(``errno`` and ``reason``: refused, unreachable, timed out, no such name...).

Error handling: a denied or failed connection is reset at once (SO_LINGER
0, then close): the program, whose connect already succeeded against the
listener, sees ECONNRESET on its first read or write, never a timeout.
Nothing a program does can end :meth:`Intercept.serve`; a failed accept is
logged and retried after a pause. Resource handling: each accepted socket
and each host socket is closed by the task that handles it, cancellation
included; every task lives in :meth:`serve`'s nursery.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from typing import TYPE_CHECKING

import trio

from arca_control.protocol.wire import Endpoint

from . import net
from .audit import shown
from .name_pool import HOST_NAME
from .policy import Denied
from .resolver import Names, ResolveError
from .sandbox.destination import original_destination
from .splice_relay import reset_on_close

if TYPE_CHECKING:
    from collections.abc import Callable

    from .broker import Broker
    from .name_pool import NamePool

log = logging.getLogger("arca_monitor.intercept")

#: Where ``host.arca.internal`` leads: the host's loopback, IPv4 first.
HOST_LOOPBACK = ("127.0.0.1", "::1")


class Refused(Exception):
    """A connection that is not opened, for its one audit line: denied by policy, or failed (with its errno)."""

    def __init__(self, decision: str, reason: str, code: int, rule: str | None = None) -> None:
        super().__init__(reason)
        self.decision = decision
        self.reason = reason
        self.code = code
        #: For a denial: the rule that would allow the connection (``Denied.rule``).
        self.rule = rule


def _host_names(_address: str) -> Names:
    return Names([HOST_NAME])


class Intercept:
    """One sandbox's intercepted TCP connections, decided and counted by its broker, names mapped by its pool."""

    def __init__(self, broker: Broker, pool: NamePool) -> None:
        self.broker = broker
        self.pool = pool

    async def serve(self, listener: trio.socket.SocketType) -> None:
        """Accept on ``listener`` (an intercept listener) and handle each connection, until cancelled."""
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    conn, _ = await listener.accept()
                except OSError as exc:  # EMFILE and friends: wait a little rather than spin
                    log.error("intercept listener: accept failed: %s", exc)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(self.handle, socket.socket(fileno=conn.detach()))

    async def handle(self, guest: socket.socket) -> None:
        """Decide, connect and relay one accepted connection; owns ``guest``."""
        with guest:
            try:
                source = net.endpoint_of(guest.getpeername())
                destination = original_destination(guest)
            except OSError as exc:  # the program is gone already, or conntrack has no record of it
                log.info("intercept: no destination for an accepted connection: %s", exc)
                reset_on_close(guest)
                return
            fields: dict[str, object] = {"source": shown(source), "destination": shown(destination)}
            with contextlib.ExitStack() as held:
                try:
                    name = self._name_of(destination, held)
                    fields["name"] = name
                    peer = await self._connect(destination, name)
                except Refused as refused:
                    self._refused(guest, fields, refused)
                    return
                with peer:
                    await self._relay(guest, peer, fields)

    def _name_of(self, destination: Endpoint, held: contextlib.ExitStack) -> str | None:
        """The name a pool address stands for, held in ``held`` for the connection; None for any other address."""
        if not self.pool.in_pool(destination.host):
            return None
        try:
            return held.enter_context(self.pool.hold(destination.host))
        except LookupError as exc:  # never given out, or given to another name since
            raise Refused("failed", f"{exc} (look the name up again)", errno.ECONNREFUSED) from None

    async def _connect(self, destination: Endpoint, name: str | None) -> socket.socket:
        """The host's socket for the connection; raises Refused."""
        try:
            if name is None:
                return await self.broker.connect(destination)
            return await self._connect_name(name, destination.port)
        except Denied as exc:
            raise Refused("denied", exc.strerror or str(exc), errno.EACCES, exc.rule) from None
        except ResolveError as exc:
            raise Refused("failed", f"resolving {name}: {exc}", errno.EHOSTUNREACH) from None
        except OSError as exc:
            code = exc.errno or errno.EIO
            raise Refused("failed", f"{os.strerror(code)} ({exc.strerror or exc})", code) from None

    async def _connect_name(self, name: str, port: int) -> socket.socket:
        """Connect to the first of ``name``'s addresses its own rules allow; the last error if none connects."""
        names_for: Callable[[str], Names]
        if name == HOST_NAME:
            hosts, names_for = list(HOST_LOOPBACK), _host_names
        else:
            found = await self.broker.resolver.resolve(name, port, type=socket.SOCK_STREAM)
            hosts, names_for = [endpoint.host for *_, endpoint in found], self.broker.resolver.names_for
        allowed = self.broker.addresses_for(name, port, hosts, names_for)
        failure: OSError | None = None
        for host in allowed:
            try:
                return await self.broker.connect_decided(Endpoint(host, port))
            except OSError as exc:
                failure = OSError(exc.errno, f"connecting to {shown(Endpoint(host, port))}: {exc.strerror or exc}")
                if exc.errno in (errno.EMFILE, errno.EAGAIN):  # a limit: another address would meet it too
                    break
        assert failure is not None  # addresses_for never returns an empty list
        raise failure

    def _refused(self, guest: socket.socket, fields: dict[str, object], refused: Refused) -> None:
        """Reset the program's connection at once, and write its one audit line."""
        reset_on_close(guest)
        code = errno.errorcode.get(refused.code, str(refused.code)) if refused.code else None
        allowing = {"rule": refused.rule} if refused.decision == "denied" else {}
        self.broker.record("intercept", **fields, decision=refused.decision, errno=code, reason=refused.reason,
                           **allowing)
        log.info("intercept: %s -> %s %s: %s", fields["source"], fields["destination"], refused.decision,
                 refused.reason)

    async def _relay(self, guest: socket.socket, peer: socket.socket, fields: dict[str, object]) -> None:
        try:
            self.broker.admit_connection()  # others may have opened meanwhile: the limit holds
            local, remote = net.endpoint_of(peer.getsockname()), net.endpoint_of(peer.getpeername())
        except OSError as exc:  # the limit, or the host's side reset already
            self._refused(guest, fields, Refused("failed", exc.strerror or str(exc), exc.errno or errno.EIO))
            reset_on_close(peer)
            return
        await self.broker.relay_counted(guest, peer, via="intercept", **fields, decision="allowed",
                                        local=shown(local), peer=shown(remote))

"""Published servers: connections to a host listener relayed to a port on the sandbox's own loopback.

For each ``--publish`` arca-run binds a listener on the host and hands it to
the monitor (``publish_spec``). :meth:`Publisher.serve` accepts on it and,
for each connection, asks the sandbox's init for a connection to the guest
port on the sandbox's loopback (``Sandbox.connect_inside``: 127.0.0.1, or ::1
if that is refused), then relays the two zero-copy with the intercept front
end's relay (:mod:`.splice_relay`: half-closes go across, a reset goes
across as a reset). The server in the sandbox is unmodified: it sees a
connection from its own loopback.

Publishing is the user's choice on arca-run's command line, not a guest's
request, so no policy rule is asked; the limits are (``--max-connections``).

Audit (the sandbox's broker, as for intercepted connections): a relayed
connection writes "open" (``via`` "publish", ``source``: the host's client,
``published``: the host address it came to, ``guest_port``, ``local`` and
``peer`` of the socket inside), "guest_eof"/"peer_eof" (guest: the server in
the sandbox), and "close" (``how``, ``bytes_up``: from the server to the
client, ``bytes_down``, ``seconds``); it counts in the broker's connections
and bytes meanwhile. A connection that cannot be relayed (no server on the
port, the limit, the sandbox gone) writes one "publish" line (``decision``
"failed", ``errno``, ``reason``) and is reset at once: the client sees
ECONNRESET, never a wait.

Resource handling: the listeners are the caller's; each accepted socket and
each socket inside is closed by the task that handles it, cancellation
included, and every task lives in :meth:`Publisher.serve`'s nursery. Error
handling: nothing a client or the sandbox does ends :meth:`Publisher.serve`;
a failed accept is logged and retried after a pause.
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from . import net
from .audit import shown
from .splice_relay import reset_on_close

if TYPE_CHECKING:
    from .broker import Broker
    from .sandbox.handle import Sandbox

log = logging.getLogger("arca_monitor.publish")


@dataclass(frozen=True)
class Published:
    """One published port as the monitor holds it: the host's listening socket and the port inside."""

    listener: socket.socket
    guest_port: int


class Publisher:
    """One sandbox's published ports, relayed to its loopback and counted by its broker."""

    def __init__(self, broker: Broker, sandbox: Sandbox) -> None:
        self.broker = broker
        self.sandbox = sandbox

    async def serve(self, published: Published) -> None:
        """Accept on ``published.listener`` and relay each connection, until cancelled."""
        listener = trio.socket.from_stdlib_socket(published.listener)
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    conn, _ = await listener.accept()
                except OSError as exc:  # EMFILE and friends: wait a little rather than spin
                    log.error("published port %s: accept failed: %s", shown(self._local(published)), exc)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(self.handle, socket.socket(fileno=conn.detach()), published.guest_port)

    @staticmethod
    def _local(published: Published) -> object:
        return net.endpoint_of(published.listener.getsockname())

    async def handle(self, client: socket.socket, guest_port: int) -> None:
        """Connect inside and relay one accepted connection; owns ``client``."""
        with client:
            try:
                fields: dict[str, object] = {
                    "source": shown(net.endpoint_of(client.getpeername())),
                    "published": shown(net.endpoint_of(client.getsockname())),
                    "guest_port": guest_port,
                }
            except OSError as exc:  # the client is gone already
                log.info("published port: a connection gone before it was served: %s", exc)
                reset_on_close(client)
                return
            try:
                self.broker.admit_connection()
                inside = await self.sandbox.connect_inside(guest_port)
            except OSError as exc:
                self._failed(client, fields, exc)
                return
            with inside:
                await self._relay(inside, client, fields)

    def _failed(self, client: socket.socket, fields: dict[str, object], exc: OSError) -> None:
        """Reset the client's connection at once, and write its one audit line."""
        reset_on_close(client)
        code = exc.errno or errno.EIO
        self.broker.record("publish", **fields, decision="failed", errno=errno.errorcode.get(code, str(code)),
                           reason=exc.strerror or str(exc))
        log.info("published port %s -> sandbox port %s: %s", fields["published"], fields["guest_port"], exc)

    async def _relay(self, inside: socket.socket, client: socket.socket, fields: dict[str, object]) -> None:
        try:
            local, remote = net.endpoint_of(inside.getsockname()), net.endpoint_of(inside.getpeername())
        except OSError as exc:  # the server reset it already
            reset_on_close(inside)
            self._failed(client, fields, exc)
            return
        await self.broker.relay_counted(inside, client, via="publish", **fields, local=shown(local), peer=shown(remote))

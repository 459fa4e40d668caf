"""The session's UDP requests: UdpBind and UdpClose, and the table of its UDP sockets.

The broker decides and binds; each socket then has a :class:`~arca_monitor.udp.DatagramRelay`
of its own, run in the session's nursery under a cancel scope that UdpClose cancels.

Resource handling: a relay owns its UDP socket and the monitor's end of the
datagram channel, and closes both when it ends (the guest closed its end,
UdpClose, or the session ended). The socket leaves the table, and stops
counting in the broker, exactly once, whichever of those comes first.
"""

from __future__ import annotations

import errno
import functools
import itertools
from typing import TYPE_CHECKING

import trio

from arca_control.protocol.messages import UdpBindOk, UdpCloseOk
from arca_control.protocol.wire import ListenFlags

from .broker import Broker, Held
from .udp import DatagramRelay, make_channel_pair

if TYPE_CHECKING:
    import socket

    from arca_control.protocol.messages import UdpBind, UdpClose

    from .tcp import Send, Spawn


class UdpRequests:
    """One session's UDP sockets, by id: each one's relay and the scope that ends it."""

    def __init__(self, broker: Broker, send: Send, spawn: Spawn) -> None:
        self.broker = broker
        self._send = send
        self._spawn = spawn
        self.sockets: dict[int, tuple[DatagramRelay, trio.CancelScope]] = {}
        self._ids = itertools.count(1)

    def socket_of(self, socket_id: int) -> socket.socket | None:
        """The kernel socket of a UDP socket still open (for options)."""
        entry = self.sockets.get(socket_id)
        return None if entry is None else entry[0].sock

    async def bind(self, request: UdpBind) -> None:
        bound = self.broker.udp_bind(
            request.endpoint,
            v6only=ListenFlags.V6ONLY in request.flags,
            reuse_port=ListenFlags.REUSEPORT in request.flags,
            reuse_addr=ListenFlags.REUSEADDR in request.flags,
        )
        try:
            ours, theirs = make_channel_pair()
            try:
                relay = DatagramRelay(bound.sock, ours)
            except BaseException:
                ours.close()
                theirs.close()
                raise
        except BaseException:
            bound.sock.close()
            self.broker.released(Held.DATAGRAM_SOCKET)
            raise
        socket_id = next(self._ids)
        scope = trio.CancelScope()
        self.sockets[socket_id] = (relay, scope)
        self._spawn(functools.partial(self._run, socket_id, relay, scope))
        try:
            reply = UdpBindOk(request_id=request.request_id, socket_id=socket_id, local=bound.local)
            await self._send(reply, [theirs.fileno()])
        finally:
            theirs.close()  # ours must go, or the guest's close would not end the relay

    async def _run(self, socket_id: int, relay: DatagramRelay, scope: trio.CancelScope) -> None:
        try:
            with scope:
                await relay.run()
        finally:
            self._forget(socket_id)

    async def close(self, request: UdpClose) -> None:
        entry = self.sockets.get(request.socket_id)
        if entry is None:
            raise OSError(errno.EBADF, f"no UDP socket {request.socket_id}")
        self._forget(request.socket_id)
        entry[1].cancel()
        await self._send(UdpCloseOk(request_id=request.request_id, socket_id=request.socket_id), ())

    def _forget(self, socket_id: int) -> None:
        if self.sockets.pop(socket_id, None) is not None:
            self.broker.released(Held.DATAGRAM_SOCKET)

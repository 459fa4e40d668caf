"""The session's Resolve requests: getaddrinfo in the monitor, answered with ResolveOk or ResolveErr.

An IP literal answers itself, inline and in order. A name's lookup can take
seconds: it runs in a task of its own, holding its in-flight slot until it
ends, so that no other request waits for it. Whether a name may be looked up
at all is the broker's decision; a failed lookup is the resolver's EAI code,
which the guest raises as ``socket.gaierror``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from arca_control.protocol.messages import ResolveErr, ResolveOk, fit_text
from arca_control.protocol.wire import GaiError, SockType

from .resolver import ResolveError

if TYPE_CHECKING:
    from arca_control.protocol.messages import Resolve

    from .broker import Broker
    from .inflight import Slot
    from .tcp import Send, Start

class NameRequests:
    """One session's name lookups."""

    def __init__(self, broker: Broker, send: Send, start: Start) -> None:
        self.broker = broker
        self._send = send
        self._start = start

    async def resolve(self, request: Resolve) -> None:
        slot = self.broker.start_lookup(request.name)
        if slot is None:
            await self._answer(request)
        else:
            self._start(request, functools.partial(self._look_up, request, slot))

    async def _look_up(self, request: Resolve, slot: Slot) -> None:
        with slot:
            await self._answer(request)

    async def _answer(self, request: Resolve) -> None:
        rid = request.request_id
        try:
            found = await self.broker.lookup(
                request.name, request.port, request.family.socket_family, request.socktype.socket_type
            )
        except ResolveError as exc:
            await self._send(ResolveErr(request_id=rid, eai=GaiError(-exc.eai), message=fit_text(exc.message)), ())
            return
        entries = tuple((SockType.of_socket_type(kind), endpoint) for kind, endpoint in found)[:255]
        await self._send(ResolveOk(request_id=rid, addresses=entries), ())

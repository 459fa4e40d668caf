"""A stream's, listener's or UDP socket's one link to its session: the requests that name it by id.

Each of them holds a :class:`Handle`, which its session gives out when it opens
one. The handle knows what the monitor calls the resource (its
``OptionTarget`` kind and id) and sends the requests that name it: socket
options, Abort, CloseListener. It reaches the session only through the
narrow :class:`Link`, so that streams and sockets need nothing else of it.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

import trio

from .protocol.messages import Abort, CloseListener, ControlReply, ControlRequest, GetOption, SetOption
from .protocol.wire import OptionTarget

Reply = TypeVar("Reply", bound=ControlReply)

#: The largest option value a SetOption carries (a u32 the monitor reads as a C int).
OPTION_VALUE_MAX = 0x7FFFFFFF


class Link(Protocol):
    """What a handle needs of its session."""

    @property
    def closed(self) -> bool:
        """Whether the session is over (then nothing more is sent)."""
        ...

    async def request(self, request: ControlRequest[Reply]) -> tuple[Reply, list[int]]:
        """Send ``request``, wait for its success reply (and fds), or raise its error."""
        ...

    def release(self, handle: Handle) -> None:
        """The resource is closed on the guest's side: the session forgets it."""
        ...


class Handle:
    """One resource of a session, as the monitor names it: ``target`` kind and ``id``.

    Resource handling: :meth:`release` (or :meth:`close`) tells the session the
    resource is closed here, once; the requests still work after it, for as
    long as the monitor knows the id (a detached socket's options).
    """

    def __init__(self, link: Link, target: OptionTarget, target_id: int) -> None:
        self.target = target
        self.id = target_id
        self._link = link
        self._released = False

    def __repr__(self) -> str:
        return f"<Handle {self.target.name.lower()} #{self.id}>"

    async def set_option(self, level: int, name: int, value: int | bool) -> int:
        """setsockopt on the monitor's socket; the value the kernel reports after."""
        if not 0 <= int(value) <= OPTION_VALUE_MAX:
            raise ValueError(f"option value {value!r} is out of range")
        request = SetOption(target=self.target, target_id=self.id, level=level, name=name, value=int(value))
        reply, _ = await self._link.request(request)
        return reply.value

    async def get_option(self, level: int, name: int) -> int:
        """getsockopt on the monitor's socket."""
        reply, _ = await self._link.request(GetOption(target=self.target, target_id=self.id, level=level, name=name))
        return reply.value

    async def abort(self) -> None:
        """Reset the connection (SO_LINGER 0 in the monitor); only a connection has one."""
        if self.target is not OptionTarget.CONNECTION:
            raise TypeError(f"only a connection can be aborted, not a {self.target.name.lower()}")
        await self._link.request(Abort(connection_id=self.id))

    def release(self) -> None:
        """The resource is closed on the guest's side: tell the session, once."""
        if not self._released:
            self._released = True
            self._link.release(self)

    async def close(self) -> None:
        """Release, and close the resource in the monitor where its descriptors do not:
        a listener gets a CloseListener (unless the session is over, which closed it)."""
        self.release()
        if self.target is OptionTarget.LISTENER and not self._link.closed:
            await self._link.request(CloseListener(listener_id=self.id))
        else:
            await trio.lowlevel.checkpoint()

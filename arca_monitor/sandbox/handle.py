"""The monitor's handle on one sandbox: the sockets its init made, ConnectInside, refused UDP, its life.

``async with open_sandbox(sock) as sandbox:`` takes the monitor's end of the
channel, receives the init's handoff (every :class:`Role` exactly once, each
descriptor checked to be the socket its role says) and gives a
:class:`Sandbox`:

* ``intercept``, ``dns_udp``, ``dns_tcp``: trio sockets, IPv4 and IPv6
  (:class:`ByFamily`), living in the sandbox's namespace. What arrives on
  ``intercept`` was going elsewhere: ask
  :func:`~arca_monitor.sandbox.destination.original_destination` where.
* ``doorbell``: the SEQPACKET socket on which the command's processes hand
  over their sessions' sockets (served by :func:`..server.serve_doorbell`).
* :meth:`Sandbox.connect_inside`: a connected socket to a port on the
  sandbox's own loopback (how ``--publish`` reaches a server in it).
* :meth:`Sandbox.receive_refusals`: the next batch of refused UDP datagrams.
* ``supervised``: set once the command's process has handed over its seccomp
  filter's listener, then ``listener`` (the descriptor, checked to be one; the
  first only: another is closed), for :mod:`..seccomp_supervisor`.
* ``ended``: set when the init has gone (the command exited); every pending
  and later ConnectInside then fails with ECONNABORTED.

Resource handling: the handle owns every socket it was handed, and closes
them all when the ``async with`` block ends. A socket that
:meth:`~Sandbox.connect_inside` returns is the caller's. A reply that comes
after its request was cancelled has its socket closed here.

Error handling: :class:`SandboxError` if the handoff is not a whole, valid
one (the block is then never entered). Afterwards the channel is treated like
a guest's (the command could take over the init): a bad frame is logged and
dropped, never raised into the monitor.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import socket
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from arca_control.protocol.channel import ControlChannel, Datagram, close_fds

from ..seccomp_notify import is_listener
from . import refusals
from .messages import (
    Connected,
    ConnectFailed,
    ConnectInside,
    Handoff,
    Loopback,
    MessageError,
    Ready,
    Role,
    Supervise,
    decode,
    encode,
    fds_of,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

log = logging.getLogger("arca_monitor.sandbox")

#: How long the init may take to set up and hand over its sockets.
HANDOFF_TIMEOUT = 30.0
_V4, _V6, _NETLINK, _UNIX = socket.AF_INET, socket.AF_INET6, socket.AF_NETLINK, socket.AF_UNIX
_TCP, _UDP, _RAW, _SEQPACKET = socket.SOCK_STREAM, socket.SOCK_DGRAM, socket.SOCK_RAW, socket.SOCK_SEQPACKET
#: What each role's descriptor must be: family, type, listening.
EXPECTED = {
    Role.INTERCEPT4: (_V4, _TCP, True), Role.INTERCEPT6: (_V6, _TCP, True),
    Role.DNS_UDP4: (_V4, _UDP, False), Role.DNS_TCP4: (_V4, _TCP, True),
    Role.DNS_UDP6: (_V6, _UDP, False), Role.DNS_TCP6: (_V6, _TCP, True),
    Role.UDP_REFUSALS: (_NETLINK, _RAW, False), Role.DOORBELL: (_UNIX, _SEQPACKET, False),
}


class SandboxError(Exception):
    """The init did not hand over a whole, valid set of sockets."""


@dataclass(frozen=True)
class ByFamily:
    v4: trio.socket.SocketType
    v6: trio.socket.SocketType

    def __iter__(self) -> Iterator[trio.socket.SocketType]:
        return iter((self.v4, self.v6))


class _Reply:
    """Where the answer to one ConnectInside lands."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.sock: socket.socket | None = None
        self.errno = 0

    def fail(self, code: int) -> None:
        if not self.done.is_set():
            self.errno = code or errno.EIO
            self.done.set()


def _socket_from(fd: int) -> socket.socket | None:
    """The socket on a received descriptor; None (and the descriptor closed) if it is no socket."""
    try:
        return socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return None


class Sandbox:
    """One sandbox, as the monitor holds it (see the module's docstring). Made by :func:`open_sandbox`."""

    def __init__(self, channel: ControlChannel, handed: dict[Role, socket.socket]) -> None:
        self._channel = channel
        trio_socket = trio.socket.from_stdlib_socket
        self.intercept = ByFamily(trio_socket(handed[Role.INTERCEPT4]), trio_socket(handed[Role.INTERCEPT6]))
        self.dns_udp = ByFamily(trio_socket(handed[Role.DNS_UDP4]), trio_socket(handed[Role.DNS_UDP6]))
        self.dns_tcp = ByFamily(trio_socket(handed[Role.DNS_TCP4]), trio_socket(handed[Role.DNS_TCP6]))
        self._refusals = handed[Role.UDP_REFUSALS]
        self._refusals.setblocking(False)
        #: Where the command's processes hand over the sockets of their sessions (server.serve_doorbell).
        self.doorbell = handed[Role.DOORBELL]
        #: The command's seccomp listener, once ``supervised`` is set; the handle's to close.
        self.listener: int | None = None
        self.supervised = trio.Event()
        self.ended = trio.Event()
        self._pending: dict[int, _Reply] = {}
        self._ids = itertools.count()

    async def connect_inside(self, port: int, loopback: Loopback = Loopback.EITHER) -> socket.socket:
        """A (blocking) socket connected to ``port`` on the sandbox's loopback; OSError with the errno if not."""
        if not 1 <= port <= 0xFFFF:
            raise OSError(errno.EINVAL, f"port {port} is not 1-65535")
        if self.ended.is_set():
            raise OSError(errno.ECONNABORTED, "the sandbox has ended")
        request_id = next(self._ids) % 0xFFFFFFFF + 1  # a u32, never 0
        reply = self._pending[request_id] = _Reply()
        try:
            await self._channel.send_bytes(encode(ConnectInside(request_id, port, loopback)))
            await reply.done.wait()
        finally:
            self._pending.pop(request_id, None)
        if reply.sock is None:
            raise OSError(reply.errno, f"connect to port {port} in the sandbox: {os.strerror(reply.errno)}")
        return reply.sock

    async def receive_refusals(self) -> refusals.Batch:
        """The next refused UDP datagrams the kernel reports (waits for at least one message)."""
        while True:
            await trio.lowlevel.wait_readable(self._refusals)
            try:
                data, (sender, _) = self._refusals.recvfrom(65536)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the kernel dropped records: the socket's buffer was full
                    return refusals.Batch((), unreadable=1)
                raise
            if sender == 0:  # only the kernel's messages are records
                return refusals.parse(data)

    async def serve_channel(self) -> None:
        """Read the init's replies until it goes; then set ``ended`` (open_sandbox runs this)."""
        try:
            while (frame := await self._channel.receive()) is not None:
                self._dispatch(frame)
        except OSError as exc:
            log.warning("sandbox channel: %s", exc)
        finally:
            self.ended.set()
            for reply in self._pending.values():
                reply.fail(errno.ECONNABORTED)

    def _dispatch(self, frame: Datagram) -> None:
        try:
            message = decode(frame.data)
            if frame.truncated or frame.fds_truncated or len(frame.fds) != fds_of(message):
                raise MessageError(f"{type(message).__name__} with {len(frame.fds)} descriptors, or cut short")
        except MessageError as exc:
            close_fds(frame.fds)
            log.warning("sandbox channel: dropping a bad frame: %s", exc)
            return
        match message:
            case Connected(request_id):
                self._connected(self._pending.get(request_id), _socket_from(frame.fds[0]))
            case ConnectFailed(request_id, code):
                reply = self._pending.get(request_id)
                if reply is not None:
                    reply.fail(code)
            case Supervise():
                self._supervise(frame.fds[0])
            case _:
                log.warning("sandbox channel: dropping %s: only the monitor sends it, or only the handoff has it",
                            message)

    def _supervise(self, fd: int) -> None:
        if self.listener is not None or not is_listener(fd):
            os.close(fd)
            log.warning("sandbox channel: dropping a Supervise: %s", "a second one" if self.listener is not None
                        else "its descriptor is no seccomp listener")
            return
        self.listener = fd
        self.supervised.set()

    @staticmethod
    def _connected(reply: _Reply | None, sock: socket.socket | None) -> None:
        if reply is None or reply.done.is_set() or sock is None or sock.type != _TCP or sock.family not in (_V4, _V6):
            if sock is not None:
                sock.close()  # the request was cancelled, or this is not a TCP socket at all
            if reply is not None:
                reply.fail(errno.EPROTO)
            return
        sock.setblocking(True)
        reply.sock = sock
        reply.done.set()

    def close(self) -> None:
        for sock in (*self.intercept, *self.dns_udp, *self.dns_tcp):
            sock.close()
        self._refusals.close()
        self.doorbell.close()
        if self.listener is not None:
            os.close(self.listener)
            self.listener = None
        self._channel.close()
        self.ended.set()
        for reply in self._pending.values():
            reply.fail(errno.ECONNABORTED)


async def _receive_handoff(channel: ControlChannel) -> dict[Role, socket.socket]:
    handed: dict[Role, socket.socket] = {}
    try:
        try:
            with trio.fail_after(HANDOFF_TIMEOUT):
                await _receive_each(channel, handed)
        except trio.TooSlowError:
            raise SandboxError(f"the sandbox's init did not hand over its sockets in {HANDOFF_TIMEOUT} s") from None
        missing = set(Role) - set(handed)
        if missing:
            raise SandboxError(f"handoff: no socket for {', '.join(sorted(role.name for role in missing))}")
    except BaseException:
        for sock in handed.values():
            sock.close()
        raise
    return handed


async def _receive_each(channel: ControlChannel, handed: dict[Role, socket.socket]) -> None:
    """Handoffs into ``handed`` until Ready."""
    while True:
        frame = await channel.receive()
        if frame is None:
            raise SandboxError("the sandbox's init ended before handing over its sockets")
        try:
            message = decode(frame.data)
        except MessageError as exc:
            close_fds(frame.fds)
            raise SandboxError(f"handoff: {exc}") from None
        if isinstance(message, Ready) and not frame.fds:
            return
        if not isinstance(message, Handoff) or message.role in handed or len(frame.fds) != 1:
            close_fds(frame.fds)
            raise SandboxError(f"handoff: unexpected {message} with {len(frame.fds)} descriptors")
        sock = _socket_from(frame.fds[0])
        if sock is None:
            raise SandboxError(f"handoff: the {message.role.name} descriptor is not a socket")
        handed[message.role] = _checked(message.role, sock)


def _checked(role: Role, sock: socket.socket) -> socket.socket:
    family, kind, listening = EXPECTED[role]
    accepting = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    if sock.family != family or sock.type != kind or accepting != listening:
        sock.close()
        raise SandboxError(f"handoff: the {role.name} socket must be {family.name} {kind.name}"
                           f"{', listening' if listening else ''}")
    return sock


@asynccontextmanager
async def open_sandbox(sock: socket.socket) -> AsyncIterator[Sandbox]:
    """The sandbox whose init holds the other end of ``sock`` (a SEQPACKET socket); closed on exit."""
    channel = ControlChannel(sock)
    try:
        handed = await _receive_handoff(channel)
    except BaseException:
        channel.close()
        raise
    sandbox = Sandbox(channel, handed)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sandbox.serve_channel)
            yield sandbox
            nursery.cancel_scope.cancel()
    finally:
        sandbox.close()

"""The guest's view of a UDP socket, over the datagram channel the monitor passes with UdpBindOk.

The records that travel on that channel are laid out in ``protocol.records``.
Socket options are the socket's, so they travel with a passed descriptor: the
monitor sets them on the guest's end before passing it, and
:class:`ArcaDatagramSocket` checks them again and grows them if needed.

:class:`ArcaDatagramSocket` behaves like a trio UDP socket: ``sendto`` and
``recvfrom`` move whole datagrams, ``connect`` sets a default peer and filters
what arrives, and use after ``aclose`` raises ``trio.ClosedResourceError``.
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING

import trio

from .protocol.addresses import ip_endpoint
from .protocol.records import (
    MAX_RECORD,
    SNDBUF_NEEDED,
    decode_record,
    encode_endpoint,
    max_payload,
    size_channel,
)
from .protocol.wire import AddressFamily, Endpoint
from .stream import ConflictDetector

if TYPE_CHECKING:
    from collections.abc import Callable

    from .handle import Handle


def _twin(endpoint: Endpoint) -> Endpoint | None:
    """The same peer as an IPv4-mapped IPv6 address sees it, or the other way round; None for plain IPv6."""
    if endpoint.family == AddressFamily.IPV4:
        return endpoint.ipv4_mapped()
    return endpoint.embedded_ipv4()


def checked_endpoint(address: tuple[str, int]) -> Endpoint:
    """``address`` as a canonical Endpoint, checked the way socket.sendto would; ValueError if not."""
    try:
        host, port = address
    except (TypeError, ValueError):
        raise ValueError(f"an address is (host, port), not {address!r}") from None
    return ip_endpoint(host, port)


# --- the guest's socket ------------------------------------------------------------------------


class ArcaDatagramSocket(trio.abc.AsyncResource):
    """A UDP socket in the monitor, reached through a datagram channel.

    Resource handling: owns ``channel`` (the guest's end) from construction on;
    :meth:`aclose` closes it, releases ``handle`` and calls ``on_close(self)``
    once, and may be called again. The monitor sees EOF and closes its UDP socket.
    ``handle`` (which the session gives) carries the socket options; a socket
    made from a bare channel has none.

    Errors: use after :meth:`aclose`, or a send or receive blocked while another
    task closes the socket, raises ``trio.ClosedResourceError``; two tasks
    receiving at once raise ``trio.BusyResourceError`` (which of them gets a
    datagram would be a coin toss). Sends from several tasks are allowed and
    go out one at a time, in order: replying from many tasks through one
    socket is the usual shape of a UDP server. The monitor gone (EOF on the
    channel) raises ``trio.BrokenResourceError``, and so does a malformed
    record from it (a bug in the monitor: nothing to guess a datagram from).

    Peers are compared as the kernel compares them: an IPv4 address and its
    IPv4-mapped IPv6 form are the same peer, because on an IPv6 socket the
    monitor reports an IPv4 sender in the mapped form (as the kernel does).
    Datagrams are returned with the source exactly as the monitor reported it.
    """

    def __init__(
        self,
        channel: socket.socket,
        local: Endpoint,
        *,
        on_close: Callable[[ArcaDatagramSocket], None] | None = None,
        handle: Handle | None = None,
    ) -> None:
        _ensure_room(channel)
        self._sock = trio.socket.from_stdlib_socket(channel)
        self.local = local
        self.peer: Endpoint | None = None
        #: Datagrams dropped by recvfrom/recv because they came from a peer other than :attr:`peer`.
        self.dropped_filtered = 0
        self._ipv4_only = local.family == AddressFamily.IPV4
        self._on_close = on_close
        #: The socket in its session (options by socket id), if it has one.
        self.handle = handle
        #: The monitor's id for this socket, if it has a handle.
        self.socket_id = handle.id if handle is not None else None
        self._closed = False
        # One receive at a time, so one buffer serves them all: no allocation per datagram but the payload.
        self._buffer = bytearray(MAX_RECORD)
        self._view = memoryview(self._buffer)
        self._receive_conflict = ConflictDetector("another task is receiving on this socket")
        self._send_lock = trio.StrictFIFOLock()
        self._accepted: frozenset[Endpoint] = frozenset()
        self._peer_header = b""
        self._peer_limit = 0
        # The last destination of sendto and its (endpoint bytes, payload limit): replies go to one peer in a row.
        self._last_address: tuple[str, int] | None = None
        self._last_target: tuple[bytes, int] = (b"", 0)

    def __repr__(self) -> str:
        peer = f" -> {self.peer.host}:{self.peer.port}" if self.peer else ""
        return f"<ArcaDatagramSocket {self.local.host}:{self.local.port}{peer}>"

    # --- sending ------------------------------------------------------------------------------

    async def sendto(self, data: bytes | bytearray | memoryview, address: tuple[str, int]) -> None:
        """Send one datagram to ``address`` (an IP literal and a port).

        Raises ValueError for an address that is not one, OSError(EAFNOSUPPORT)
        for an IPv6 address on an IPv4 socket and OSError(EMSGSIZE) for a
        payload over the limit, before anything is sent. Blocks while the
        monitor's socket buffer is full (the monitor then stops reading the channel).
        """
        self._check_open()
        header, limit = self._target(address)
        await self._send_record(header, limit, data)

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send one datagram to the connected peer; OSError(EDESTADDRREQ) if not connected."""
        self._check_open()
        if self.peer is None:
            raise OSError(errno.EDESTADDRREQ, "the socket is not connected; use sendto")
        await self._send_record(self._peer_header, self._peer_limit, data)

    def _target(self, address: tuple[str, int]) -> tuple[bytes, int]:
        if address == self._last_address:
            return self._last_target
        endpoint = self._checked_peer(address)
        target = (encode_endpoint(endpoint), max_payload(endpoint))
        self._last_address, self._last_target = address, target
        return target

    def _checked_peer(self, address: tuple[str, int]) -> Endpoint:
        endpoint = checked_endpoint(address)
        if self._ipv4_only and endpoint.family == AddressFamily.IPV6:
            raise OSError(errno.EAFNOSUPPORT, f"{endpoint.host} is IPv6 and this socket is IPv4")
        return endpoint

    async def _send_record(self, header: bytes, limit: int, data: bytes | bytearray | memoryview) -> None:
        size = memoryview(data).nbytes
        if size > limit:
            raise OSError(errno.EMSGSIZE, f"a datagram of {size} bytes is over the limit of {limit}")
        async with self._send_lock:
            self._check_open()
            try:
                # Gathered by the kernel into one message: no copy to join the endpoint and the payload.
                await self._sock.sendmsg([header, data])
            except (BrokenPipeError, ConnectionResetError, ConnectionRefusedError) as exc:
                raise trio.BrokenResourceError("the monitor closed this socket's channel") from exc

    # --- receiving ----------------------------------------------------------------------------

    async def recvfrom(self) -> tuple[bytes, Endpoint]:
        """The next datagram (whole, whatever its size) and its source."""
        with self._receive_conflict.hold():
            self._check_open()
            while True:
                count = await self._receive_record()
                try:
                    source, start = decode_record(self._view[:count])
                except ValueError:
                    raise trio.BrokenResourceError("the monitor sent a malformed datagram record") from None
                if self._accepted and source not in self._accepted:
                    self.dropped_filtered += 1
                    continue
                return bytes(self._view[start:count]), source

    async def recv(self) -> bytes:
        """The next datagram, without its source."""
        data, _ = await self.recvfrom()
        return data

    async def _receive_record(self) -> int:
        try:
            count = await self._sock.recv_into(self._buffer)
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise trio.BrokenResourceError("the monitor closed this socket's channel") from exc
        if not count:
            raise trio.BrokenResourceError("the monitor closed this socket's channel")
        return count

    # --- peer and life cycle -----------------------------------------------------------------

    def connect(self, host: str, port: int) -> None:
        """Set the default peer of :meth:`send`; from now on datagrams from other peers are dropped.

        Only datagrams received after this call are filtered (like the kernel,
        which keeps what it already queued; here they are dropped on reading).
        ``host`` must be an IP literal: ValueError otherwise.
        """
        self._check_open()
        endpoint = self._checked_peer((host, port))
        twin = _twin(endpoint)
        self.peer = endpoint
        self._peer_header = encode_endpoint(endpoint)
        self._peer_limit = max_payload(endpoint)
        self._accepted = frozenset([endpoint] if twin is None else [endpoint, twin])

    async def aclose(self) -> None:
        """Close the channel (the monitor then closes the UDP socket). Idempotent."""
        if not self._closed:
            self._closed = True
            # trio's close wakes tasks blocked on the channel with ClosedResourceError.
            self._sock.close()
            if self.handle is not None:
                self.handle.release()
            if self._on_close is not None:
                self._on_close(self)
        await trio.lowlevel.checkpoint()

    @property
    def closed(self) -> bool:
        return self._closed

    async def setsockopt(self, level: int, name: int, value: int | bool) -> int:
        """Set an option on the monitor's UDP socket; returns the value the kernel reports after."""
        return await self._options().set_option(level, name, value)

    async def getsockopt(self, level: int, name: int) -> int:
        """An option's value on the monitor's UDP socket."""
        return await self._options().get_option(level, name)

    def _options(self) -> Handle:
        self._check_open()
        if self.handle is None:
            raise OSError(errno.EOPNOTSUPP, "this socket was made from a bare channel: no monitor socket has its options")
        return self.handle

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this socket is closed")


def _ensure_room(channel: socket.socket) -> None:
    """Grow the guest's end if it cannot send the largest record (the monitor normally did this)."""
    if channel.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < SNDBUF_NEEDED:
        size_channel(channel)


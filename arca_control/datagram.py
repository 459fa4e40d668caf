"""The guest's view of a UDP socket, and the one layout of a datagram record.

A UDP socket of the guest lives in the monitor; the guest reaches it through
its data channel, one end of an ``AF_UNIX`` ``SOCK_SEQPACKET`` socketpair (the
monitor passes it with UdpBindOk and holds the other end). One SEQPACKET
message is one datagram record:

    endpoint (the protocol's endpoint layout)   payload (0 to 65,527 bytes)
    family u8, address, port u16 LE              the UDP payload, as is

The endpoint is 7 bytes for IPv4 (family 1, 4 address bytes, port) and 23
for IPv6 (family 2, 16 address bytes, scope id u32, port). From the guest to
the monitor it is the destination; from the monitor to the guest, the source.
SEQPACKET keeps message boundaries, so a datagram is never split or merged
with another. A record always holds at least an endpoint, so it is never
empty: a read of 0 bytes means the other end closed its channel.

Limits: a payload is at most 65,507 bytes to an IPv4 destination and 65,527
to an IPv6 one (65,535 less the headers), so a record is at most 23 + 65,527
bytes. Linux refuses a SEQPACKET message longer than the sender's SO_SNDBUF
(as doubled by the kernel) less 32 bytes, so both ends are sized to
CHANNEL_BUFFER (``size_channel``). Socket options are the socket's, so they
travel with a passed descriptor: the monitor sets them on the guest's end
before passing it (``arca_monitor.udp.make_channel_pair``), and
:class:`ArcaDatagramSocket` checks them again and grows them if needed.

:class:`ArcaDatagramSocket` behaves like a trio UDP socket: ``sendto`` and
``recvfrom`` move whole datagrams, ``connect`` sets a default peer and filters
what arrives, and use after ``aclose`` raises ``trio.ClosedResourceError``.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

import trio

from . import fastpath, wire
from .addresses import ip_endpoint
from .stream import _ConflictDetector
from .wire import AddressFamily, Endpoint, ipv6_host, parse_ip

#: The largest UDP payloads: 65,535 less the IPv4 and UDP headers; less the
#: UDP header only for IPv6, whose header is not counted in its payload length.
MAX_PAYLOAD_IPV4 = 65_507
MAX_PAYLOAD_IPV6 = 65_527
#: The longest endpoint in front of a payload (IPv6).
MAX_ENDPOINT = 23
#: A buffer that holds any record, with room to spare for anything the kernel might hand over.
MAX_RECORD = MAX_ENDPOINT + 65_535
#: SO_SNDBUF and SO_RCVBUF asked for on both ends of a channel. Linux doubles
#: it (to 512 KiB, or twice net.core.wmem_max if that is lower): room for
#: several of the largest records, and a bound on what waits in the channel.
CHANNEL_BUFFER = 4 * 65_536
#: What SO_SNDBUF must report (the doubled value) for the largest record to go through.
_SNDBUF_NEEDED = MAX_RECORD + 32

_read_endpoint = fastpath.READERS[id(wire.ENDPOINT)]
_write_endpoint = fastpath.WRITERS[id(wire.ENDPOINT)]
#: What the endpoint reader raises for bytes that are not an endpoint.
_MALFORMED = (fastpath._Short, fastpath._Bad)
_V4_MAPPED = b"\0" * 10 + b"\xff\xff"
_IP_FAMILIES = frozenset({AddressFamily.IPV4, AddressFamily.IPV6})


# --- the record layout, shared with the monitor's relay -------------------------------------


def decode_record(record: bytes | bytearray | memoryview) -> tuple[Endpoint, int]:
    """The endpoint at the front of ``record`` and where its payload starts.

    ValueError if malformed, or if the endpoint is of a family other than
    IPv4 and IPv6 (the endpoint layout has others; UDP has no use for them).
    """
    if not record:
        raise ValueError("an empty record")
    if record[0] not in _IP_FAMILIES:
        raise ValueError(f"family {record[0]}: a datagram record's endpoint is IPv4 or IPv6")
    try:
        # Only the endpoint is copied, never the payload: the readers take bytes.
        return _read_endpoint(bytes(record[:MAX_ENDPOINT]), 0)
    except _MALFORMED as exc:
        raise ValueError(f"not a datagram record: {exc or 'too short'}") from None


def encode_endpoint(endpoint: tuple[str, int]) -> bytes:
    """The endpoint bytes that go in front of a payload; ValueError if not an IP literal and a port."""
    try:
        return _write_endpoint(endpoint)
    except fastpath._Unfit as exc:
        raise ValueError(str(exc)) from None


def size_channel(sock: socket.socket, size: int = CHANNEL_BUFFER) -> None:
    """Give one end of a channel the buffers the largest record needs."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
    # SEQPACKET charges queued messages to the sender's SO_SNDBUF; RCVBUF is set for symmetry only.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def max_payload(endpoint: Endpoint) -> int:
    """The largest payload the kernel sends to ``endpoint`` (an IPv4-mapped one travels as IPv4)."""
    family, packed, _ = parse_ip(endpoint.host)
    if family == AddressFamily.IPV4 or packed.startswith(_V4_MAPPED):
        return MAX_PAYLOAD_IPV4
    return MAX_PAYLOAD_IPV6


def _twin(endpoint: Endpoint) -> Endpoint | None:
    """The same peer as an IPv4-mapped IPv6 address sees it, or the other way round; None for plain IPv6."""
    family, packed, scope_id = parse_ip(endpoint.host)
    if family == AddressFamily.IPV4:
        return Endpoint(ipv6_host(_V4_MAPPED + packed, 0), endpoint.port)
    if packed.startswith(_V4_MAPPED) and not scope_id:
        return Endpoint(socket.inet_ntoa(packed[12:]), endpoint.port)
    return None


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
    :meth:`aclose` closes it, calls ``on_close(self)`` once, and may be called
    again. The monitor sees EOF and closes its UDP socket.

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
        options=None,
    ) -> None:
        _ensure_room(channel)
        self._sock = trio.socket.from_stdlib_socket(channel)
        self.local = local
        self.peer: Endpoint | None = None
        #: Datagrams dropped by recvfrom/recv because they came from a peer other than :attr:`peer`.
        self.dropped_filtered = 0
        self._ipv4_only = parse_ip(local.host)[0] == AddressFamily.IPV4
        self._on_close = on_close
        #: set(level, name, value) and get(level, name) on the monitor's socket (the session provides them).
        self._options = options
        self._closed = False
        # One receive at a time, so one buffer serves them all: no allocation per datagram but the payload.
        self._buffer = bytearray(MAX_RECORD)
        self._view = memoryview(self._buffer)
        self._receive_conflict = _ConflictDetector("another task is receiving on this socket")
        self._send_lock = trio.StrictFIFOLock()
        self._accepted: frozenset[Endpoint] = frozenset()
        self._peer_header = b""
        self._peer_limit = 0
        # The last destination of sendto and its (endpoint bytes, payload limit): replies go to one peer in a row.
        self._last_address: object = None
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
        if self._ipv4_only and ":" in endpoint.host:
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
            if self._on_close is not None:
                self._on_close(self)
        await trio.lowlevel.checkpoint()

    @property
    def closed(self) -> bool:
        return self._closed

    async def setsockopt(self, level: int, name: int, value: int | bool) -> int:
        """Set an option on the monitor's UDP socket; returns the value the kernel reports after."""
        self._check_open()
        return await self._options.set(level, name, value)

    async def getsockopt(self, level: int, name: int) -> int:
        """An option's value on the monitor's UDP socket."""
        self._check_open()
        return await self._options.get(level, name)

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("this socket is closed")


def _ensure_room(channel: socket.socket) -> None:
    """Grow the guest's end if it cannot send the largest record (the monitor normally did this)."""
    if channel.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) < _SNDBUF_NEEDED:
        size_channel(channel)


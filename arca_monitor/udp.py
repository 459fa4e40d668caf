"""Relaying UDP: between a guest's datagram channel and its kernel UDP socket, one trio task pair each.

Each UDP socket of a guest is a kernel UDP socket in the monitor and a data
channel: an ``AF_UNIX`` ``SOCK_SEQPACKET`` socketpair (``make_channel_pair``).
The guest holds one end (passed with UdpBindOk), the monitor the other. One
SEQPACKET message is one datagram record: the peer endpoint in the protocol's
endpoint layout (family u8; 4 address bytes, or 16 address bytes and a u32
scope id; port u16 LE), then the payload. Guest -> monitor the endpoint is the
destination, monitor -> guest the source. SEQPACKET keeps boundaries, so a
datagram is never split or merged; ``arca_control/datagram.py`` holds the layout.

A :class:`DatagramRelay` moves records both ways, with UDP's semantics:

* network -> guest: each datagram goes to the channel without waiting. If the
  channel is full (the guest is not reading) the datagram is dropped and
  counted in ``dropped_inbound``, exactly as a full socket buffer drops it in
  the kernel. What may wait in the channel is bounded by the monitor end's
  SO_SNDBUF (``queue_limit``): SEQPACKET charges a queued message to its sender.
* guest -> network: each record is sent to its destination, a numeric
  address (no name is ever resolved). An IPv4 destination on an IPv6 socket
  goes to its IPv4-mapped address; an IPv6 one on an IPv4 socket, or an
  endpoint of any other family, is dropped (EAFNOSUPPORT). A record that cannot be sent (malformed, EMSGSIZE,
  unreachable...) is dropped and counted in ``dropped_outbound``, with its
  errno in ``last_error``; the relay goes on. When the kernel's send buffer is
  full the relay waits for room and reads no more records meanwhile: the
  channel fills and the guest's sends block (backpressure, never a spin).

The relay ends when the guest closes its end (EOF on the channel) or when
``run`` is cancelled, and closes both sockets. Sources are reported as the
kernel reports them: on an IPv6 socket, an IPv4 sender is IPv4-mapped.

Why a task pair per socket and not one epoll loop as for TCP (``relay.py``):
a guest has few UDP sockets, and a datagram must be copied through user space
anyway to add or strip its endpoint, so splice has nothing to offer.
"""

from __future__ import annotations

import errno
import logging
import select
import socket

import trio

from arca_control.protocol.records import (
    CHANNEL_BUFFER,
    MAX_ENDPOINT,
    MAX_RECORD,
    decode_record,
    encode_endpoint,
    size_channel,
)
from arca_control.protocol.wire import AddressFamily, Endpoint, IPSockAddr

log = logging.getLogger("arca_monitor.udp")

#: Datagrams moved per direction before yielding to other tasks, so a flood cannot starve the monitor.
DATAGRAMS_PER_TURN = 64
#: Errors the kernel reports on a UDP socket for an earlier datagram (mostly from ICMP).
#: Reading one consumes it; it says nothing about the datagrams still to come.
_REPORTED_ERRORS = frozenset({
    errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EHOSTDOWN, errno.ENETDOWN,
    errno.EMSGSIZE, errno.ENOPROTOOPT, errno.EOPNOTSUPP, errno.EACCES, errno.EPROTO, errno.ETIMEDOUT,
})
#: What sending on the channel raises once the guest has closed its end.
_GUEST_GONE = (BrokenPipeError, ConnectionResetError, ConnectionRefusedError)


def make_channel_pair() -> tuple[socket.socket, socket.socket]:
    """A datagram channel: (monitor's end, guest's end), both close-on-exec and sized for the largest record.

    The guest's end must be sized here, before it is passed: its SO_SNDBUF
    decides the largest record the guest can send, and socket options travel
    with the descriptor. Only the monitor's end is made non-blocking (the flag
    travels too, and a guest may want a blocking socket).
    """
    monitor_end, guest_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    for end in (monitor_end, guest_end):
        size_channel(end)
    monitor_end.setblocking(False)
    return monitor_end, guest_end


class DatagramRelay:
    """Relays between one kernel UDP socket and the monitor's end of a SEQPACKET socketpair.

    Resource handling: owns ``sock`` and ``channel`` from construction on
    (unless the constructor raises); :meth:`run` closes both when it ends,
    :meth:`close` closes them for a relay that was never run.
    Error handling: nothing a guest or a peer sends makes :meth:`run` raise;
    an unexpected error on either socket is logged and ends the relay (the
    guest then sees EOF on its channel).
    """

    def __init__(self, sock: socket.socket, channel: socket.socket, *, queue_limit: int = CHANNEL_BUFFER) -> None:
        if queue_limit < MAX_RECORD:
            raise ValueError(f"queue_limit must be at least {MAX_RECORD}, for the largest record")
        self.sock = sock
        self.channel = channel
        sock.setblocking(False)
        channel.setblocking(False)
        # Bytes of records waiting for the guest (the kernel doubles it and counts each record's overhead).
        channel.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, queue_limit)
        self._ipv6 = sock.family == socket.AF_INET6
        #: Datagrams from the network handed to the guest.
        self.received = 0
        #: Datagrams from the network dropped because the guest was not reading (channel full).
        self.dropped_inbound = 0
        #: Datagrams from the guest sent to the network.
        self.sent = 0
        #: Records from the guest not sent: malformed, wrong family, or refused by the kernel.
        self.dropped_outbound = 0
        #: The errno of the latest outbound drop (0: none yet).
        self.last_error = 0
        # The last source and its endpoint bytes: datagrams tend to come from one peer in a row.
        self._last_source: IPSockAddr | None = None
        self._last_header = b""

    def __repr__(self) -> str:
        return (f"<DatagramRelay fd {self.sock.fileno()}: received {self.received}, sent {self.sent}, "
                f"dropped {self.dropped_inbound} in, {self.dropped_outbound} out>")

    async def run(self) -> None:
        """Relay until the guest closes its end or this is cancelled; then close both sockets."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._inbound, nursery.cancel_scope)
                await self._outbound()
                nursery.cancel_scope.cancel()
        finally:
            self.close()

    def close(self) -> None:
        """Close both sockets. For a relay whose :meth:`run` never started (a running one ends by cancelling it)."""
        self.sock.close()
        self.channel.close()

    # --- network -> guest ---------------------------------------------------------------------

    async def _inbound(self, done: trio.CancelScope) -> None:
        # One buffer for every datagram: the payload lands after room for the longest endpoint,
        # which is then written just in front of it, so nothing is allocated or copied per datagram.
        view = memoryview(bytearray(MAX_ENDPOINT + 65_535))
        try:
            while True:
                if self._pump_in(view):
                    await trio.lowlevel.wait_readable(self.sock)
                else:
                    await trio.lowlevel.checkpoint()
        except _Ended:
            done.cancel()

    def _pump_in(self, view: memoryview) -> bool:
        """Move up to a turn's worth of datagrams; True if the socket has no more for now."""
        payload = view[MAX_ENDPOINT:]
        for _ in range(DATAGRAMS_PER_TURN):
            try:
                count, source = self.sock.recvfrom_into(payload)
            except BlockingIOError:
                return True
            except OSError as exc:
                if exc.errno in _REPORTED_ERRORS:
                    continue
                log.warning("UDP socket failed, ending its relay: %s", exc)
                raise _Ended from exc
            self._deliver(view, count, source)
        return False

    def _deliver(self, view: memoryview, count: int, source: IPSockAddr) -> None:
        header = self._source_header(source)
        start = MAX_ENDPOINT - len(header)
        view[start:MAX_ENDPOINT] = header
        try:
            self.channel.send(view[start : MAX_ENDPOINT + count], socket.MSG_DONTWAIT)
        except BlockingIOError:
            self.dropped_inbound += 1
            return
        except _GUEST_GONE:
            raise _Ended from None
        except OSError as exc:
            log.debug("datagram from %s not delivered: %s", source, exc)
            self.dropped_inbound += 1
            return
        self.received += 1

    def _source_header(self, source: IPSockAddr) -> bytes:
        if source != self._last_source:
            self._last_header = encode_endpoint(Endpoint.from_sockaddr(source))
            self._last_source = source
        return self._last_header

    # --- guest -> network ---------------------------------------------------------------------

    async def _outbound(self) -> None:
        """Send the guest's records until it closes its end."""
        view = memoryview(bytearray(MAX_RECORD))
        moved = 0
        while True:
            try:
                count, _, flags, _ = self.channel.recvmsg_into([view])
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.channel)
                continue
            except ConnectionResetError:
                # The guest closed its end with records of ours unread: gone, like an EOF.
                return
            except OSError as exc:
                log.warning("datagram channel failed, ending its relay: %s", exc)
                return
            # An empty message reads like EOF; only a hung-up channel is one.
            if count == 0 and _hung_up(self.channel):
                return
            if flags & socket.MSG_TRUNC:
                # Longer than any datagram: what is left of it is no datagram of the guest's.
                self._drop_out(errno.EMSGSIZE)
            else:
                await self._send_out(view[:count])
            moved += 1
            if moved % DATAGRAMS_PER_TURN == 0:
                await trio.lowlevel.checkpoint()

    async def _send_out(self, record: memoryview) -> None:
        try:
            destination, start = decode_record(record)
            address = self._sockaddr(destination)
        except ValueError:
            self._drop_out(errno.EINVAL)
            return
        except OSError as exc:
            self._drop_out(exc.errno)
            return
        payload = record[start:]
        while True:
            try:
                self.sock.sendto(payload, address)
            except BlockingIOError:
                # The record stays in the buffer and no other is read: the guest's sends back up.
                await trio.lowlevel.wait_writable(self.sock)
                continue
            except OSError as exc:
                self._drop_out(exc.errno)
                return
            self.sent += 1
            return

    def _sockaddr(self, destination: Endpoint) -> IPSockAddr:
        """The numeric address ``sendto`` takes for ``destination`` on this socket.

        Decided by the endpoint's family, parsed from the record's family byte:
        an endpoint of any other family (an AF_UNIX path) must never reach
        sendto. An IPv4 destination goes out of an IPv6 socket in its mapped form.
        """
        if destination.family is AddressFamily.IPV4:
            return (f"::ffff:{destination.host}", destination.port, 0, 0) if self._ipv6 else destination.ip_sockaddr()
        if destination.family is not AddressFamily.IPV6:
            raise OSError(errno.EAFNOSUPPORT, f"no datagrams to endpoints of family {destination.family}")
        if not self._ipv6:
            raise OSError(errno.EAFNOSUPPORT, "an IPv6 destination on an IPv4 socket")
        return destination.ip_sockaddr()

    def _drop_out(self, error: int | None) -> None:
        self.dropped_outbound += 1
        self.last_error = error or errno.EIO


class _Ended(Exception):
    """The inbound direction is over: the guest is gone or the socket failed."""


def _hung_up(sock: socket.socket) -> bool:
    """Whether the other end of ``sock`` has closed."""
    poller = select.poll()
    poller.register(sock, select.POLLRDHUP)
    return any(events & (select.POLLRDHUP | select.POLLHUP) for _, events in poller.poll(0))

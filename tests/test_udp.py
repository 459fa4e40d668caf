"""The UDP data path on its own: a kernel socket, a DatagramRelay and an ArcaDatagramSocket.

No control protocol: each test builds the pieces the monitor and the session
will wire together. The far peer is socat (a UDP echo that is not our code)
or a plain kernel socket; every address is a loopback one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import socket
import struct
import subprocess
import termios

import pytest
import trio

from arca_control.datagram import ArcaDatagramSocket
from arca_control.protocol.records import encode_endpoint
from arca_control.protocol.wire import Endpoint
from arca_monitor.udp import DatagramRelay, make_channel_pair

from .conftest import errno_is, monitor_socket

# socat is the UDP peer that is not our code; `make test` installs it (system-deps).
assert shutil.which("socat"), "socat is missing: run `make system-deps`"


class Rig:
    """One relayed UDP socket: the relay, the guest's socket, and the raw guest end for forging records."""

    def __init__(self, relay: DatagramRelay, guest: ArcaDatagramSocket, raw: socket.socket) -> None:
        self.relay = relay
        self.guest = guest
        self.raw = raw


@pytest.fixture
async def relayed(nursery):
    """A factory: ``relayed(host)`` binds a kernel UDP socket on ``host`` and relays it to a guest socket."""
    guests = []

    def make(host: str = "127.0.0.1") -> Rig:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, 0))
        monitor_end, guest_end = make_channel_pair()
        relay = DatagramRelay(sock, monitor_end)
        guest = ArcaDatagramSocket(guest_end, Endpoint.from_sockaddr(sock.getsockname()))
        guests.append(guest)
        nursery.start_soon(relay.run)
        return Rig(relay, guest, guest_end)

    yield make
    for guest in guests:
        await guest.aclose()


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


async def _socat_ready(process: trio.Process, log_path) -> bool:
    """Whether socat bound its port (it says "receiving on" after bind, and exits if bind fails)."""
    with trio.fail_after(5):
        while True:
            if "receiving on" in await trio.Path(log_path).read_text():
                return True
            if process.poll() is not None:
                return False
            await trio.sleep(0.01)


@pytest.fixture
async def echo_peer(tmp_path):
    """A factory: ``await echo_peer(host)`` starts a socat UDP echo on ``host`` and returns its endpoint.

    socat's RECVFROM with fork answers each datagram from a child of its own,
    through a pipe, so one datagram comes back as one (replies may reorder).
    socat does not tell the port it picks for 0, so the test picks one: a port
    just freed on loopback, with a retry should another process take it first.
    """
    processes: list[trio.Process] = []

    async def start(host: str) -> Endpoint:
        version, bind = ("6", f"[{host}]") if ":" in host else ("4", host)
        for _ in range(5):
            port = _free_port(host)
            log_path = tmp_path / f"socat-{len(processes)}.log"
            async with await trio.open_file(log_path, "w") as log:
                process = await trio.lowlevel.open_process(
                    ["socat", "-d", "-d", "-T", "5", "-b", "70000",
                     f"UDP{version}-RECVFROM:{port},bind={bind},fork", "PIPE"],
                    stdin=subprocess.DEVNULL,
                    stderr=log.wrapped,
                )
            processes.append(process)
            if await _socat_ready(process, log_path):
                return Endpoint(host, port)
        raise RuntimeError("socat could not bind a loopback port")

    yield start
    for process in processes:
        if process.poll() is None:
            process.terminate()
        with trio.fail_after(5):
            await process.wait()


async def _peer(host: str = "127.0.0.1") -> trio.socket.SocketType:
    """A plain kernel UDP socket on loopback, standing for some other host."""
    sock = trio.socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    await sock.bind((host, 0))
    return sock


async def _settled(read, seconds: float = 5.0, quiet: float = 0.1):
    """The value of ``read()`` once it has not changed for ``quiet`` seconds."""
    with trio.fail_after(seconds):
        value = read()
        while True:
            await trio.sleep(quiet)
            if read() == value:
                return value
            value = read()


def _queued_bytes(sock: socket.socket) -> int:
    """Bytes a socket has sent that its peer has not read yet (SIOCOUTQ)."""
    result = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
    (count,) = struct.unpack("i", result)
    return int(count)


def _pattern(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + bytes(range(size % 256))


# --- round trips through a real peer ------------------------------------------------------------


async def test_boundaries_are_kept(relayed, echo_peer):
    rig = relayed()
    echo = await echo_peer("127.0.0.1")
    sizes = [1, 1400, 9000]
    for size in sizes:
        await rig.guest.sendto(_pattern(size), echo)
    with trio.fail_after(5):
        replies = [await rig.guest.recvfrom() for _ in sizes]
    # Each child of socat answers on its own, so the order may change; the boundaries may not.
    assert sorted(len(data) for data, _ in replies) == sizes
    for data, source in replies:
        assert data == _pattern(len(data))
        assert source == echo
    with trio.move_on_after(0.2):
        extra = await rig.guest.recvfrom()
        pytest.fail(f"a datagram was split or repeated: {len(extra[0])} more bytes")
    assert (rig.relay.sent, rig.relay.received) == (3, 3)


async def test_largest_ipv4_datagram_round_trip(relayed, echo_peer):
    rig = relayed()
    echo = await echo_peer("127.0.0.1")
    payload = os.urandom(65_507)
    await rig.guest.sendto(payload, echo)
    with trio.fail_after(5):
        data, source = await rig.guest.recvfrom()
    assert data == payload
    assert source == echo


async def test_oversized_datagram_fails_locally(relayed):
    rig = relayed()
    peer = await _peer()
    with pytest.raises(OSError, check=errno_is(errno.EMSGSIZE)):
        await rig.guest.sendto(b"x" * 65_508, peer.getsockname())
    await trio.sleep(0.05)
    assert (rig.relay.sent, rig.relay.dropped_outbound) == (0, 0)
    peer.close()


async def test_ipv6_round_trip(relayed, echo_peer):
    rig = relayed("::1")
    echo = await echo_peer("::1")
    # IPv6 counts no header in its payload length: 20 bytes more than IPv4.
    for payload in (b"over six", os.urandom(65_527)):
        await rig.guest.sendto(payload, echo)
        with trio.fail_after(5):
            assert await rig.guest.recvfrom() == (payload, echo)
    with pytest.raises(OSError, check=errno_is(errno.EMSGSIZE)):
        await rig.guest.sendto(b"x" * 65_528, echo)


# --- connect ------------------------------------------------------------------------------------


async def test_connect_filters_other_peers(relayed):
    rig = relayed()
    chosen, other = await _peer(), await _peer()
    rig.guest.connect(*chosen.getsockname())
    await other.sendto(b"from the other", rig.guest.local)
    await chosen.sendto(b"from the chosen", rig.guest.local)
    with trio.fail_after(5):
        assert await rig.guest.recv() == b"from the chosen"
    assert rig.guest.dropped_filtered == 1
    await rig.guest.send(b"reply")
    with trio.fail_after(5):
        assert await chosen.recvfrom(100) == (b"reply", tuple(rig.guest.local))
    chosen.close()
    other.close()


async def test_connect_treats_ipv4_mapped_as_the_same_peer(relayed):
    # An IPv6 socket on the IPv4-mapped loopback: IPv4 peers, reported in the mapped form.
    rig = relayed("::ffff:127.0.0.1")
    chosen, other = await _peer(), await _peer()
    host, port = chosen.getsockname()
    rig.guest.connect(host, port)
    relay_port = rig.guest.local.port
    await other.sendto(b"other", ("127.0.0.1", relay_port))
    await chosen.sendto(b"chosen", ("127.0.0.1", relay_port))
    with trio.fail_after(5):
        assert await rig.guest.recvfrom() == (b"chosen", Endpoint("::ffff:127.0.0.1", port))
    assert rig.guest.dropped_filtered == 1
    # The IPv4 destination goes out on the IPv6 socket as its mapped address.
    await rig.guest.send(b"back")
    with trio.fail_after(5):
        assert await chosen.recvfrom(100) == (b"back", ("127.0.0.1", relay_port))
    chosen.close()
    other.close()


async def test_addresses_are_checked_locally(relayed):
    rig = relayed()
    with pytest.raises(OSError, check=errno_is(errno.EDESTADDRREQ)):
        await rig.guest.send(b"nowhere")
    with pytest.raises(ValueError, match="not an IP address literal"):
        await rig.guest.sendto(b"x", ("localhost", 9))
    with pytest.raises(ValueError, match="port must be 0-65535"):
        rig.guest.connect("127.0.0.1", 70_000)
    with pytest.raises(OSError, check=errno_is(errno.EAFNOSUPPORT)):
        await rig.guest.sendto(b"x", ("::1", 9))
    assert rig.guest.peer is None


# --- a guest that does not read -----------------------------------------------------------------


async def test_unread_datagrams_are_dropped_and_bounded(relayed):
    rig = relayed()
    sender = await _peer()
    total = 10_000
    for sent in range(total):
        await sender.sendto(b"%05d" % sent + b"." * 195, rig.guest.local)
        if sent % 100 == 99:
            await trio.lowlevel.checkpoint()  # let the relay drain the kernel socket, as it would under load
    relay = rig.relay
    handled = await _settled(lambda: relay.received + relay.dropped_inbound)
    assert relay.dropped_inbound > 0
    assert 0 < relay.received < total // 2
    assert handled <= total  # the kernel may drop some too, before the relay sees them
    # What waits for the guest is bounded by the channel's send buffer, not by what arrived.
    assert _queued_bytes(relay.channel) <= relay.channel.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) + 65_536

    read = 0
    while True:
        with trio.move_on_after(0.2) as idle:
            await rig.guest.recvfrom()
        if idle.cancelled_caught:
            break
        read += 1
    assert read == relay.received
    # With room again, new datagrams flow.
    await sender.sendto(b"after the flood", rig.guest.local)
    with trio.fail_after(5):
        assert await rig.guest.recv() == b"after the flood"
    sender.close()


# --- records from the guest -----------------------------------------------------------------------


async def test_malformed_records_are_dropped(relayed):
    rig = relayed()
    peer = await _peer()
    forged = [
        b"",  # no endpoint at all (reads like EOF, but the guest is still there)
        b"\x09" + b"\0" * 6 + b"payload",  # no such family
        b"\x01\x7f\0",  # cut short
        bytes([4, 5]) + b"/tmp/" + b"\0\0" + b"to an AF_UNIX path",  # no datagrams but to IP
        encode_endpoint(("127.0.0.1", 9)) + b"x" * 70_000,  # longer than any datagram
        encode_endpoint(("::1", 9)) + b"IPv6 on an IPv4 socket",
    ]
    for record in forged:
        rig.raw.send(record)
    await rig.guest.sendto(b"still relaying", peer.getsockname())
    with trio.fail_after(5):
        assert await peer.recvfrom(100) == (b"still relaying", tuple(rig.guest.local))
    assert rig.relay.dropped_outbound == len(forged)
    assert rig.relay.last_error == errno.EAFNOSUPPORT
    assert rig.relay.sent == 1
    peer.close()


# --- life cycle ---------------------------------------------------------------------------------


async def test_aclose_is_idempotent_and_final(bare_channel):
    _, guest_end, local = bare_channel
    closed: list[ArcaDatagramSocket] = []
    guest = ArcaDatagramSocket(guest_end, local, on_close=closed.append)
    await guest.aclose()
    await guest.aclose()
    assert closed == [guest]
    assert guest.closed
    uses = [lambda: guest.sendto(b"x", ("127.0.0.1", 9)), lambda: guest.send(b"x"), guest.recvfrom, guest.recv]
    for use in uses:
        with pytest.raises(trio.ClosedResourceError):
            await use()
    with pytest.raises(trio.ClosedResourceError):
        guest.connect("127.0.0.1", 9)


async def test_close_wakes_a_receiver_and_ends_the_relay(relayed):
    rig = relayed()

    async def close_soon():
        await trio.sleep(0.05)
        await rig.guest.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(close_soon)
        with pytest.raises(trio.ClosedResourceError):
            await rig.guest.recvfrom()
    # The relay sees EOF on the channel, ends, and closes the UDP socket.
    assert await _settled(rig.relay.sock.fileno) == -1
    assert rig.relay.channel.fileno() == -1


async def test_closing_with_datagrams_unread_ends_the_relay_quietly(relayed, caplog):
    rig = relayed()
    sender = await _peer()
    await sender.sendto(b"never read", rig.guest.local)
    assert await _settled(lambda: rig.relay.received) == 1
    await rig.guest.aclose()
    assert await _settled(rig.relay.sock.fileno) == -1
    assert not [record for record in caplog.records if record.name.startswith("arca_monitor")]
    sender.close()


@pytest.fixture
def bare_channel():
    """A channel with nothing relaying it: (monitor end, guest end, a local endpoint)."""
    monitor_end, guest_end = make_channel_pair()
    yield monitor_end, guest_end, Endpoint("127.0.0.1", 9)
    monitor_end.close()


async def test_two_receivers_conflict(relayed):
    rig = relayed()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rig.guest.recvfrom)
        await trio.sleep(0.05)
        with pytest.raises(trio.BusyResourceError):
            await rig.guest.recvfrom()
        nursery.cancel_scope.cancel()


async def test_concurrent_sends_go_out_in_turn(relayed):
    rig = relayed()
    peer = await _peer()

    async def send_some(tag: bytes):
        for index in range(50):
            await rig.guest.sendto(tag + b"%02d" % index, peer.getsockname())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_some, b"a")
        nursery.start_soon(send_some, b"b")
    got: set[bytes] = set()
    with trio.fail_after(5):
        while len(got) < 100:
            got.add((await peer.recvfrom(100))[0])
    assert rig.relay.sent == 100
    peer.close()


async def test_monitor_gone_is_broken(bare_channel):
    monitor_end, guest_end, local = bare_channel
    guest = ArcaDatagramSocket(guest_end, local)

    async def monitor_goes():
        await trio.sleep(0.05)
        monitor_end.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(monitor_goes)
        with pytest.raises(trio.BrokenResourceError):
            await guest.recvfrom()
    with pytest.raises(trio.BrokenResourceError):
        await guest.recvfrom()
    with pytest.raises(trio.BrokenResourceError):
        await guest.sendto(b"x", ("127.0.0.1", 9))
    await guest.aclose()


# --- through a session: UdpBind, the fd handoff, options, close ----------------------------------


async def test_udp_through_a_session_with_a_real_echo_peer(session, echo_peer):
    peer = await echo_peer("127.0.0.1")
    sock = await session.udp_bind("127.0.0.1", 0)
    assert sock.local.host == "127.0.0.1"
    assert sock.local.port
    for size in (1, 1000, 65507):
        await sock.sendto(b"d" * size, peer)
    sizes = set()
    with trio.fail_after(10):
        for _ in range(3):
            data, source = await sock.recvfrom()
            assert source == peer
            sizes.add(len(data))
    assert sizes == {1, 1000, 65507}  # boundaries kept, up to the largest IPv4 datagram
    with pytest.raises(OSError, check=errno_is(errno.EMSGSIZE)):
        await sock.sendto(b"x" * 65508, peer)
    await sock.aclose()


async def test_connected_udp_socket_filters_other_peers(session):
    sock = await session.udp_bind("127.0.0.1", 0)
    friend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    friend.bind(("127.0.0.1", 0))
    stranger.bind(("127.0.0.1", 0))
    with friend, stranger:
        sock.connect(*friend.getsockname())
        stranger.sendto(b"not for you", sock.local)
        friend.sendto(b"for you", sock.local)
        with trio.fail_after(5):
            assert await sock.recv() == b"for you"
        assert sock.dropped_filtered == 1
        await sock.send(b"reply")
        assert friend.recv(100) == b"reply"
    await sock.aclose()


async def test_udp_over_ipv6_and_options(session):
    sock = await session.udp_bind("::1", 0)
    other = await session.udp_bind("::1", 0)
    await sock.sendto(b"six", other.local)
    with trio.fail_after(5):
        data, source = await other.recvfrom()
    assert data == b"six"
    assert source == sock.local
    assert await sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1) == 1
    assert await sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) == 1
    assert await sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536) == 2 * 65536
    with monitor_socket(session.process.pid, sock.local, "udp") as real:  # the kernel's own view
        assert real.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) == 1
        assert real.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 65536
    # Bound to one IPv6 address, the kernel makes the socket IPv6-only; the monitor reads its truth.
    assert await sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    dual = await session.udp_bind("::", 0)
    assert await dual.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    await dual.aclose()
    await sock.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST)
    await other.aclose()


async def test_udp_errors_and_close(session):
    taken = await session.udp_bind("127.0.0.1", 0)
    with pytest.raises(OSError, check=errno_is(errno.EADDRINUSE)):
        await session.udp_bind(*taken.local)
    from arca_control.protocol.messages import UdpClose

    with pytest.raises(OSError, check=errno_is(errno.EBADF)):
        await session.request(UdpClose(socket_id=999))
    # Closing the guest's end ends the monitor's socket: the port is free again.
    await taken.aclose()
    with trio.fail_after(5):
        while True:
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                probe.bind(taken.local)
                break
            except OSError:
                await trio.sleep(0.02)
            finally:
                probe.close()


async def test_udp_bind_time_options(session):
    first = await session.udp_bind("127.0.0.1", 0, reuse_port=True)
    second = await session.udp_bind("127.0.0.1", first.local.port, reuse_port=True)
    assert await second.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
    plain = await session.udp_bind("127.0.0.1", 0, reuse_addr=True)
    assert await plain.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    for sock in (first, second, plain):
        await sock.aclose()


async def test_udp_bind_to_an_af_unix_endpoint_is_refused_for_what_it_is(session, tmp_path):
    """Not EACCES from the default policy (which has no unix rule): the monitor cannot do it at all."""
    from arca_control.protocol.messages import UdpBind

    with pytest.raises(OSError, match="UDP needs an IP address") as caught:
        await session.request(UdpBind(endpoint=Endpoint(str(tmp_path / "datagrams.sock"), 0)))
    assert caught.value.errno == errno.EAFNOSUPPORT
    with pytest.raises(OSError, match="UDP needs an IP address") as caught:
        await session.request(UdpBind(endpoint=Endpoint("", 0)))  # an unnamed one
    assert caught.value.errno == errno.EINVAL
    assert not list(tmp_path.iterdir())

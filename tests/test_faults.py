"""Faults with real processes and kernel sockets: killed guests and monitors, resets, hostile load.

Each test prints the figure it measured (run pytest with ``-s`` to see them);
docs/RELIABILITY.md quotes them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading

import pytest
import trio
import trio.testing

import arca_control
from arca_control.protocol import errors

from .conftest import blocking_client, fd_count, rss_bytes, settle, tcp_server

MiB = 1024 * 1024


def figure(text: str) -> None:
    print(f"\nFIGURE {text}")


# --- a guest killed mid-transfer --------------------------------------------------------

KILLED_GUEST = textwrap.dedent(
    """
    import sys, trio, arca_control
    async def main(path, host, port):
        async with arca_control.attach_session(path) as session:
            listener = await session.listen("127.0.0.1", 0)
            stream = await session.connect(host, int(port))
            print(listener.local.port, flush=True)
            while True:  # until SIGKILL
                await stream.send_all(b"z" * 65536)
    trio.run(main, *sys.argv[1:])
    """
)


async def test_guest_killed_mid_transfer_releases_everything_within_a_second(socket_monitor):
    path, monitor = socket_monitor
    received = [0]
    transfer_started = trio.Event()

    async def sink(stream):
        while data := await stream.receive_some(MiB):
            received[0] += len(data)
            transfer_started.set()

    async with arca_control.attach_session(path) as bystander, trio.open_nursery() as nursery:
        kept = await bystander.listen("127.0.0.1", 0)
        baseline = fd_count(monitor.pid)
        address = await tcp_server(nursery, sink)
        guest = await trio.lowlevel.open_process(
            [sys.executable, "-c", KILLED_GUEST, path, *map(str, address)], stdout=subprocess.PIPE
        )
        assert guest.stdout is not None
        port = int((await guest.stdout.receive_some(100)).split()[0])
        with trio.fail_after(10):
            await transfer_started.wait()
        during = fd_count(monitor.pid)
        killed_at = trio.current_time()
        guest.send_signal(signal.SIGKILL)
        await guest.wait()
        after = await settle(lambda: fd_count(monitor.pid), baseline, seconds=1.0)
        elapsed = trio.current_time() - killed_at
        assert after == baseline, f"monitor fds {after}, baseline {baseline}, 1 s after the guest died"
        socket.create_server(("127.0.0.1", port)).close()  # its listening port is free
        # The standalone monitor still serves the other session, and new ones.
        stream = await bystander.connect(*kept.local)
        await (await kept.accept()).aclose()
        await stream.aclose()
        async with arca_control.attach_session(path) as fresh:
            await fresh.listen("127.0.0.1", 0)
        nursery.cancel_scope.cancel()
    figure(
        f"guest SIGKILLed after {received[0] / MiB:.1f} MiB sent: monitor fds {during} -> {after} "
        f"(baseline {baseline}) in {elapsed * 1000:.0f} ms"
    )


# --- a monitor killed under every kind of pending call ------------------------------------


async def test_monitor_killed_fails_every_pending_call_within_a_second(stalled_address):
    async with arca_control.open_session() as session:
        listener = await session.listen("127.0.0.1", 0)
        reader = await session.connect(*listener.local)
        writer_peer = await listener.accept()
        writer = await session.connect(*listener.local)
        await listener.accept()  # its peer never reads: the writer's tx socket and TCP buffers fill up
        outcomes: dict[str, BaseException] = {}

        async def expect(name, call, *args):
            try:
                await call(*args)
            except (errors.MonitorGone, trio.BrokenResourceError) as exc:
                outcomes[name] = exc

        async def fill_then_block():
            while True:
                await writer.send_all(b"w" * MiB)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(expect, "accept", listener.accept)
            nursery.start_soon(expect, "connect", session.connect, *stalled_address)
            nursery.start_soon(expect, "receive", reader.receive_some)
            nursery.start_soon(expect, "send", fill_then_block)
            # Until every task waits: the writer's buffers all the way to the idle peer are full.
            await trio.testing.wait_all_tasks_blocked(cushion=0.2)
            killed_at = trio.current_time()
            assert session.process is not None
            session.process.kill()
            # Each call fails within the second, or is cancelled then and missing from outcomes.
            nursery.cancel_scope.deadline = killed_at + 1
        elapsed = trio.current_time() - killed_at
        assert set(outcomes) == {"accept", "connect", "receive", "send"}
        assert isinstance(outcomes["accept"], errors.MonitorGone)
        assert isinstance(outcomes["connect"], errors.MonitorGone)
        await writer_peer.aclose()
    figure(f"monitor SIGKILLed: accept, connect, receive and send all failed within {elapsed * 1000:.0f} ms")


# --- a guest that never reads ----------------------------------------------------------------


async def test_a_guest_that_does_not_read_keeps_the_monitor_small_and_the_peer_waiting(session):
    total = 1024 * MiB
    listener = await session.listen("127.0.0.1", 0)
    peer = await trio.to_thread.run_sync(blocking_client, listener.local)
    peer.settimeout(None)
    stream = await listener.accept()
    sent = [0]

    def send_one_gib():
        block = os.urandom(MiB)
        for _ in range(total // MiB):
            peer.sendall(block)
            sent[0] += MiB

    pid = session.process.pid
    rss_before = rss_bytes(pid)
    sender = threading.Thread(target=send_one_gib, daemon=True)
    sender.start()
    await trio.sleep(1.0)  # the guest reads nothing for a second
    stalled_at = sent[0]
    rss_stalled = rss_bytes(pid)
    assert stalled_at < 64 * MiB, f"the peer got {stalled_at / MiB:.0f} MiB out while the guest read nothing"
    # Now the guest reads the whole GiB; the monitor's memory must stay flat throughout.
    peak = rss_stalled
    received = 0
    with trio.fail_after(120):
        while received < total:
            received += len(await stream.receive_some(MiB))
            if received % (64 * MiB) < MiB:
                peak = max(peak, rss_bytes(pid))
    sender.join(timeout=10)
    peer.close()
    await stream.aclose()
    growth = max(peak, rss_stalled) - rss_before
    assert received == total
    assert growth < 64 * MiB
    figure(
        f"guest idle 1 s: peer stalled after {stalled_at / MiB:.1f} MiB; then 1 GiB relayed; "
        f"monitor RSS {rss_before / MiB:.1f} MiB -> peak {peak / MiB:.1f} MiB (growth {growth / MiB:.1f} MiB)"
    )


# --- churn: refused connects and cancelled accepts ----------------------------------------------


async def test_a_thousand_refused_connects_and_cancelled_accepts_leak_nothing(session):
    probe = socket.create_server(("127.0.0.1", 0))
    refused_port = probe.getsockname()[1]
    probe.close()
    listener = await session.listen("127.0.0.1", 0)
    pid = session.process.pid
    # Warm up once so that lazily created objects do not count as growth.
    with pytest.raises(ConnectionRefusedError):
        await session.connect("127.0.0.1", refused_port)
    fds_before, rss_before = fd_count(pid), rss_bytes(pid)
    for _ in range(1000):
        with pytest.raises(ConnectionRefusedError):
            await session.connect("127.0.0.1", refused_port)
    for _ in range(1000):
        with trio.move_on_after(0.001):
            await listener.accept()
    # Every cancelled Accept is withdrawn and answered; then the monitor is back where it was.
    with trio.fail_after(10):
        await session.settled()
    assert not session.core.abandoned
    fds_after = await settle(lambda: fd_count(pid), fds_before)
    rss_after = rss_bytes(pid)
    assert fds_after == fds_before
    assert rss_after - rss_before < 8 * MiB
    figure(
        f"1000 refused connects + 1000 cancelled accepts: monitor fds {fds_before} -> {fds_after}, "
        f"RSS {rss_before / MiB:.1f} -> {rss_after / MiB:.1f} MiB"
    )


# --- many connections moving data at once ---------------------------------------------------------


async def test_a_hundred_connections_each_moving_16_mib_both_ways_with_half_close(session):
    count, size, chunk = 100, 16 * MiB, 256 * 1024
    block = os.urandom(chunk)

    def chunk_of(conn: int, i: int) -> bytes:
        # Unique per connection and position, so a lost, doubled or misrouted chunk shows.
        return struct.pack("<II", conn, i) + block[8:]

    async def echo(stream):
        while data := await stream.receive_some(MiB):
            await stream.send_all(data)
        await stream.send_eof()

    results = {}

    async def one(conn: int, address):
        stream = await session.connect(*address)
        sent, got = hashlib.sha256(), hashlib.sha256()
        received = 0

        async def send():
            for i in range(size // chunk):
                data = chunk_of(conn, i)
                sent.update(data)
                await stream.send_all(data)
            await stream.send_eof()  # half-close: the echo's FIN comes after our last byte

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            while data := await stream.receive_some(MiB):
                got.update(data)
                received += len(data)
        await stream.aclose()
        results[conn] = (received, sent.hexdigest() == got.hexdigest())

    start = trio.current_time()
    with trio.fail_after(240):
        async with trio.open_nursery() as nursery:
            address = await tcp_server(nursery, echo)
            async with trio.open_nursery() as clients:
                for conn in range(count):
                    clients.start_soon(one, conn, address)
            nursery.cancel_scope.cancel()
    elapsed = trio.current_time() - start
    assert len(results) == count
    assert all(received == size and same for received, same in results.values())
    figure(
        f"{count} connections x {size // MiB} MiB each way, half-closed: every byte back, sha256 equal, "
        f"{2 * count * size / MiB / elapsed:.0f} MiB/s through the monitor in {elapsed:.1f} s"
    )


# --- the guest gives up ---------------------------------------------------------------------------


async def test_connections_accepted_after_the_guest_gave_up_are_closed_not_leaked(session):
    pid = session.process.pid
    baseline = fd_count(pid)
    listener = await session.listen("127.0.0.1", 0)
    clients = []
    for i in range(20):
        clients.append(await trio.to_thread.run_sync(blocking_client, listener.local))
        with trio.move_on_after(0.0005 * (i % 4)):
            await listener.accept()  # gave up on some, kept others' streams unreferenced
    with trio.fail_after(10):
        await session.settled()
    assert not session.core.abandoned
    late = sum(len(each.backlog) for each in session.listeners)
    await listener.aclose()  # its backlog of late connections goes with it
    for stream in session.streams:
        await stream.aclose()
    for client in clients:
        client.settimeout(5)
        with contextlib.suppress(ConnectionResetError):  # one still in the kernel's queue when the listener closed
            assert client.recv(10) == b""
        client.close()
    assert not session.streams
    fds = await settle(lambda: fd_count(pid), baseline)
    assert fds == baseline
    figure(f"20 clients, accepts cancelled at random: {late} late connections closed with the listener, "
           f"monitor fds back to {fds}")

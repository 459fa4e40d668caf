"""The guest session against a real monitor and real kernel sockets on 127.0.0.1."""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import struct
import sys

import pytest
import trio
import trio.testing

import arca_control
from arca_control.protocol.messages import Accept, CloseListener

from .conftest import blocking_client, errno_is, read_all, tcp_server, until_refused, wait_until

BIG = 64 * 1024 * 1024


def pattern(size: int, seed: bytes = b"arca") -> bytes:
    """Deterministic, incompressible bytes (os.urandom would be as good, but slower to reproduce)."""
    block = hashlib.sha256(seed).digest() * 2048  # 64 KiB
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.blake2b(struct.pack("<Q", counter), key=b"k").digest() + block[: 65536 - 64]
        counter += 1
    return bytes(out[:size])


async def test_listen_reports_the_real_port_and_accepts_a_real_client(session):
    listener = await session.listen("127.0.0.1", 0)
    assert listener.local.host == "127.0.0.1"
    assert listener.local.port != 0
    client = await trio.to_thread.run_sync(blocking_client, listener.local)
    with client:
        stream = await listener.accept()
        assert stream.peer == client.getsockname()  # the client's real source address
        assert stream.local == listener.local == client.getpeername()
        await trio.to_thread.run_sync(client.sendall, b"from a plain socket")
        assert await stream.receive_some() == b"from a plain socket"
        await stream.send_all(b"reply")
        assert await trio.to_thread.run_sync(client.recv, 100) == b"reply"
        await stream.aclose()
        assert await trio.to_thread.run_sync(client.recv, 100) == b""  # our close reached it as a FIN


async def test_connect_to_a_real_server(session):
    seen = []

    async def handler(server_stream):
        seen.append(await server_stream.receive_some())
        await server_stream.send_all(b"welcome")

    async with trio.open_nursery() as nursery:
        address = await tcp_server(nursery, handler)
        stream = await session.connect(*address)
        assert stream.peer == address
        assert stream.local.host == "127.0.0.1"
        await stream.send_all(b"hi")
        assert await read_all(stream) == b"welcome"
        assert seen == [b"hi"]
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def echo(stream) -> None:
    while data := await stream.receive_some(1 << 20):
        await stream.send_all(data)
    await stream.send_eof()


async def pump_through(stream, payload: bytes) -> bytes:
    """Send ``payload`` (then EOF) while reading everything back; return what came back."""
    received = bytearray()

    async def send():
        view = memoryview(payload)
        for i in range(0, len(view), 1 << 20):
            await stream.send_all(view[i : i + (1 << 20)])
        await stream.send_eof()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        while data := await stream.receive_some(1 << 20):
            received += data
    return bytes(received)


async def test_64_mib_both_ways_through_connect(session):
    payload = pattern(BIG)
    async with trio.open_nursery() as nursery:
        address = await tcp_server(nursery, echo)
        stream = await session.connect(*address)
        async with stream:
            back = await pump_through(stream, payload)
        nursery.cancel_scope.cancel()
    assert hashlib.sha256(back).hexdigest() == hashlib.sha256(payload).hexdigest()


async def test_64_mib_both_ways_through_accept(session):
    payload = pattern(BIG, b"other")
    listener = await session.listen("127.0.0.1", 0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, echo, [listener])
        client = await trio.open_tcp_stream(*listener.local)
        async with client:
            back = await pump_through(client, payload)
        nursery.cancel_scope.cancel()
    assert hashlib.sha256(back).hexdigest() == hashlib.sha256(payload).hexdigest()


async def test_half_close_from_the_guest(session):
    """send_eof reaches the peer as EOF, and the peer can still answer."""
    async def handler(server_stream):
        request = await read_all(server_stream)
        await server_stream.send_all(b"got " + request)

    async with trio.open_nursery() as nursery:
        address = await tcp_server(nursery, handler)
        stream = await session.connect(*address)
        await stream.send_all(b"question")
        await stream.send_eof()
        with pytest.raises(trio.ClosedResourceError):
            await stream.send_all(b"more")
        assert await read_all(stream) == b"got question"
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_half_close_from_the_peer(session):
    """The peer's SHUT_WR reaches the guest as EOF, and the guest can still send."""
    listener = await session.listen("127.0.0.1", 0)
    client = await trio.to_thread.run_sync(blocking_client, listener.local)
    with client:
        stream = await listener.accept()
        await trio.to_thread.run_sync(client.sendall, b"all I have")
        client.shutdown(socket.SHUT_WR)
        assert await read_all(stream) == b"all I have"
        assert await stream.receive_some() == b""  # EOF stays EOF
        await stream.send_all(b"answer after your EOF")
        await stream.send_eof()
        got = await trio.to_thread.run_sync(lambda: b"".join(iter(lambda: client.recv(4096), b"")))
        assert got == b"answer after your EOF"
        await stream.aclose()


async def test_peer_reset_is_an_error_not_eof(session):
    listener = await session.listen("127.0.0.1", 0)
    client = await trio.to_thread.run_sync(blocking_client, listener.local)
    stream = await listener.accept()
    await trio.to_thread.run_sync(client.sendall, b"partial")
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST
    assert await stream.receive_some() == b"partial"
    with pytest.raises(trio.BrokenResourceError) as caught:
        await read_all(stream)
    # Both trio's broken-stream error and the socket world's ConnectionResetError.
    assert isinstance(caught.value, ConnectionResetError)
    assert caught.value.errno == errno.ECONNRESET
    assert isinstance(caught.value.__cause__, ConnectionResetError)
    await stream.aclose()


async def test_backpressure_when_the_guest_does_not_read(session):
    """A guest that stops reading stops the monitor reading: the peer's sends block."""
    listener = await session.listen("127.0.0.1", 0)
    client = await trio.to_thread.run_sync(blocking_client, listener.local)
    stream = await listener.accept()

    def push_until_blocked() -> int:
        client.setblocking(False)
        sent = 0
        chunk = b"x" * 65536
        stalls = 0
        # Bounded: stop at 256 MiB, which no bounded relay could absorb.
        while sent < 256 * 1024 * 1024:
            try:
                sent += client.send(chunk)
                stalls = 0
            except BlockingIOError:
                stalls += 1
                if stalls > 20:  # blocked for ~1 s: the window is closed
                    return sent
                __import__("time").sleep(0.05)
        return sent

    sent = await trio.to_thread.run_sync(push_until_blocked)
    # Socket buffers on both sides plus the 1 MiB pipe: a few MiB, far from 256.
    assert sent < 64 * 1024 * 1024
    received = 0
    while received < sent:
        received += len(await stream.receive_some(1 << 20))
    assert received == sent
    client.close()
    await stream.aclose()


async def test_guest_close_with_an_idle_peer_closes_the_socket(session):
    """The monitor notices the guest's close even when the peer sends nothing."""
    listener = await session.listen("127.0.0.1", 0)
    client = await trio.to_thread.run_sync(blocking_client, listener.local)
    with client:
        stream = await listener.accept()
        await stream.aclose()
        with trio.fail_after(5):
            assert await trio.to_thread.run_sync(client.recv, 10) == b""


async def test_many_connects_and_accepts_in_flight_at_once(session):
    count = 200
    listener = await session.listen("127.0.0.1", 0, backlog=count)
    accepted = {}
    connected = {}

    async def accept_one():
        stream = await listener.accept()
        tag = await stream.receive_some(4)
        accepted[tag] = stream
        await stream.send_all(tag)

    async def connect_one(i):
        stream = await session.connect(*listener.local)
        tag = struct.pack("<I", i)
        await stream.send_all(tag)
        assert await stream.receive_some(4) == tag
        connected[tag] = stream

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(accept_one)
                nursery.start_soon(connect_one, i)
    assert len(accepted) == len(connected) == count
    assert len({s.connection_id for s in [*accepted.values(), *connected.values()]}) == 2 * count
    for stream in [*accepted.values(), *connected.values()]:
        await stream.aclose()


async def test_trio_stream_conformance(session):
    async def maker():
        listener = await session.listen("127.0.0.1", 0)
        client = await session.connect(*listener.local)
        server = await listener.accept()
        await listener.aclose()
        return client, server

    await trio.testing.check_half_closeable_stream(maker, None)


# --- errors ---------------------------------------------------------------------


async def test_connect_refused(session):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # a port nobody listens on
    with pytest.raises(ConnectionRefusedError):
        await session.connect("127.0.0.1", port)


async def test_listen_address_in_use(session):
    holder = socket.create_server(("127.0.0.1", 0))
    with holder, pytest.raises(OSError, check=errno_is(errno.EADDRINUSE)):
        await session.listen(*holder.getsockname())


async def test_listen_on_an_address_this_host_does_not_have():
    async with arca_control.open_session("--allow-listen", "192.0.2.1:*") as session:
        with pytest.raises(OSError, check=errno_is(errno.EADDRNOTAVAIL)):
            await session.listen("192.0.2.1", 0)  # TEST-NET-1: bind fails, no packet is sent


async def test_bad_hosts_and_ports_are_refused_before_sending(session):
    with pytest.raises(ValueError, match="port must be 0-65535"):
        await session.connect("127.0.0.1", 70000)
    with pytest.raises(ValueError, match="not an IP address literal"):
        await session.listen("localhost", 0)  # listening takes addresses, not names


async def test_accept_on_an_unknown_listener(session):
    with pytest.raises(OSError, check=errno_is(errno.EBADF)):
        await session.request(Accept(listener_id=4242))


async def test_close_an_unknown_listener(session):
    with pytest.raises(OSError, check=errno_is(errno.EBADF)):
        await session.request(CloseListener(listener_id=4242))


async def test_closing_a_listener_fails_pending_accepts_and_frees_the_port(session):
    listener = await session.listen("127.0.0.1", 0)
    results = []

    async def accept():
        try:
            await listener.accept()
        except trio.ClosedResourceError as exc:
            results.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(accept)
        await trio.testing.wait_all_tasks_blocked()
        await listener.aclose()
    assert len(results) == 3
    with pytest.raises(trio.ClosedResourceError):
        await listener.accept()
    socket.create_server(listener.local).close()  # the port is free again


async def test_cancelled_accept_loses_no_connection(session):
    """Accepts cancelled at any moment: every client still gets accepted exactly once."""
    listener = await session.listen("127.0.0.1", 0)
    clients = []
    accepted = []
    for i in range(30):
        with trio.move_on_after(0.001 * (i % 5)):
            clients.append(await trio.to_thread.run_sync(blocking_client, listener.local))
            accepted.append(await listener.accept())
    with trio.fail_after(10):
        while len(accepted) < len(clients):
            accepted.append(await listener.accept())
    assert sorted(s.peer for s in accepted) == sorted(c.getsockname() for c in clients)
    for stream in accepted:
        await stream.aclose()
    for client in clients:
        client.close()


async def test_connect_timeout(session, stalled_address):
    with pytest.raises(TimeoutError) as caught:
        await session.connect(*stalled_address, timeout=0.3)
    assert caught.value.errno == errno.ETIMEDOUT


async def test_monitor_default_connect_timeout(stalled_address):
    async with arca_control.open_session("--connect-timeout", "0.2") as session:
        with trio.fail_after(5), pytest.raises(TimeoutError):
            await session.connect(*stalled_address)


async def test_cancelled_connect_is_withdrawn(session, stalled_address):
    with trio.move_on_after(0.2) as scope:
        await session.connect(*stalled_address, timeout=60)
    assert scope.cancelled_caught
    # The monitor withdrew the connect and answered it (ECANCELED), which the
    # session consumed as a late reply.
    with trio.fail_after(5):
        await session.settled()
    assert not session.core.abandoned
    # The session is still fine afterwards.
    listener = await session.listen("127.0.0.1", 0)
    stream = await session.connect(*listener.local)
    await stream.aclose()


async def test_use_after_session_close_is_a_clean_error():
    async with arca_control.open_session() as session:
        listener = await session.listen("127.0.0.1", 0)
    with pytest.raises(trio.ClosedResourceError):
        await session.listen("127.0.0.1", 0)
    with pytest.raises(trio.ClosedResourceError):
        await listener.accept()


async def test_user_errors_come_out_unwrapped():
    with pytest.raises(KeyError):
        async with arca_control.open_session():
            raise KeyError("mine")


async def test_spawned_monitor_exits_zero_and_is_reaped():
    async with arca_control.open_session() as session:
        process = session.process
        assert process is not None
        await session.listen("127.0.0.1", 0)
    assert process.returncode == 0
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)


async def test_no_kernel_accept_without_a_waiting_accept(session):
    """The monitor leaves connections in the kernel's queue until the guest asks for one."""
    listener = await session.listen("127.0.0.1", 0, backlog=0)
    first = await trio.to_thread.run_sync(blocking_client, listener.local)  # fills the queue of one
    second = socket.socket()
    second.setblocking(False)
    with first, second:
        with pytest.raises(BlockingIOError):
            second.connect(listener.local)
        await trio.sleep(0.3)
        # Had the monitor drained the queue, this handshake would have completed.
        assert second.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        with pytest.raises(OSError, check=errno_is(errno.ENOTCONN)):
            second.getpeername()
        stream = await listener.accept()
        assert stream.peer == first.getsockname()
        await stream.aclose()


async def test_running_out_of_descriptors_is_an_error_reply_not_a_crash():
    command = ["prlimit", "--nofile=48:48", "--", sys.executable, "-m", "arca_monitor"]
    async with arca_control.open_session(command=command) as session:
        listener = await session.listen("127.0.0.1", 0)
        streams = []
        with pytest.raises(OSError, check=errno_is(errno.EMFILE)):
            for _ in range(48):
                streams.append(await session.connect(*listener.local))
                streams.append(await listener.accept())
        for stream in streams:
            await stream.aclose()
        # Once the relays have closed their descriptors, the same session works again.
        with trio.fail_after(10):
            while True:
                try:
                    client = await session.connect(*listener.local)
                    break
                except OSError as exc:
                    if exc.errno != errno.EMFILE:
                        raise
                    await trio.sleep(0.05)
            # The queue may still hold the connection whose accept failed: nothing was lost.
            while (server := await listener.accept()).peer != client.local:
                assert await server.receive_some() == b""  # its client is closed already
                await server.aclose()
        await client.send_all(b"still alive")
        assert await server.receive_some() == b"still alive"


async def test_a_cancelled_listen_leaves_no_port_bound(session):
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    # Cancelled already: the Listen still leaves at once, and the call gives up without
    # waiting. (Cancelled while waiting, the ListenOk can beat the cancel, and the listen succeed.)
    with trio.CancelScope() as scope:
        scope.cancel()
        await session.listen("127.0.0.1", port)
    assert scope.cancelled_caught
    with trio.fail_after(5):
        await session.settled()  # until the late ListenOk has come, and the session has closed that listener
    assert not session.core.abandoned
    assert not session.listeners

    # It made the session close that listener again.
    def port_is_free() -> bool:
        try:
            socket.create_server(("127.0.0.1", port)).close()
        except OSError:
            return False
        return True

    await wait_until(port_is_free)
    assert not session.core.pending


async def test_a_small_monitor_payload_limit_still_works():
    async with arca_control.open_session("--max-payload", "512") as session:
        assert session.monitor is not None
        assert session.monitor.max_payload == 512
        listener = await session.listen("127.0.0.1", 0)
        stream = await session.connect(*listener.local)
        await (await listener.accept()).aclose()
        await stream.aclose()
        with pytest.raises(ConnectionRefusedError):
            await session.connect("127.0.0.1", 1)


async def test_a_late_accept_ok_goes_to_the_next_accept(session):
    """The Cancel crossed the AcceptOk on the wire: the connection waits in the guest's backlog."""
    listener = await session.listen("127.0.0.1", 0)
    # Staged below the session: it sends the Accept, then gives up on it as if its Cancel had
    # crossed the AcceptOk (a real Cancel would reach the monitor first here).
    request, frame = session.core.send(Accept(listener_id=listener.listener_id))
    await session.channel.send_bytes(frame)
    session.core.cancel(request.request_id)  # gave up; the monitor answers before the Cancel lands
    client = await trio.to_thread.run_sync(blocking_client, listener.local)
    with trio.fail_after(5):
        await session.settled()
    assert len(listener.backlog) == 1
    stream = await listener.accept()
    assert stream.peer == client.getsockname()
    await stream.send_all(b"kept")
    assert await trio.to_thread.run_sync(client.recv, 10) == b"kept"
    await stream.aclose()
    # And a late connection is closed with its listener, never leaked.
    request, frame = session.core.send(Accept(listener_id=listener.listener_id))
    await session.channel.send_bytes(frame)
    session.core.cancel(request.request_id)
    second = await trio.to_thread.run_sync(blocking_client, listener.local)
    with trio.fail_after(5):
        await session.settled()
    assert len(listener.backlog) == 1
    await listener.aclose()
    second.settimeout(5)
    assert await trio.to_thread.run_sync(second.recv, 10) == b""
    assert not session.streams
    client.close()
    second.close()


async def test_a_listener_closed_in_a_cancelled_scope_is_closed_in_the_monitor(session):
    """trio.serve_listeners closes its listeners inside a cancelled scope: that close must count."""
    listener = await session.listen("127.0.0.1", 0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, echo, [listener])
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert listener.closed
    await until_refused(listener.local)


async def test_prefetching_listener_serves_and_closes_cleanly(session):
    listener = await session.listen("127.0.0.1", 0, prefetch=4)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, echo, [listener])
        for i in range(20):
            client = await trio.open_tcp_stream(*listener.local)
            async with client:
                await client.send_all(b"n%d" % i)
                await client.send_eof()
                assert await read_all(client) == b"n%d" % i
        nursery.cancel_scope.cancel()
    # Fetched-ahead connections went with the listener; the port is closed in the monitor.
    await wait_until(lambda: not session.streams)
    await until_refused(listener.local)


async def test_prefetch_hands_errors_to_accept():
    async with arca_control.open_session("--max-connections", "0") as session:
        listener = await session.listen("127.0.0.1", 0, prefetch=2)
        client = socket.create_connection(listener.local, timeout=5)
        with pytest.raises(OSError, check=errno_is(errno.EMFILE)):
            await listener.accept()
        client.close()
        await listener.aclose()


async def test_a_peer_reset_reaches_a_sender_as_connection_reset(session):
    listener = await session.listen("127.0.0.1", 0)
    client = await trio.to_thread.run_sync(blocking_client, listener.local)
    stream = await listener.accept()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()  # RST
    with trio.fail_after(10), pytest.raises(ConnectionResetError) as caught:
        while True:  # a guest that only sends learns of the reset too
            await stream.send_all(b"x" * 65536)
    assert isinstance(caught.value, trio.BrokenResourceError)
    await stream.aclose()

"""The monitor process itself: bad input on the control channel, crashes, standalone mode, real peers."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
import trio

import arca_control
from arca_control.protocol import errors
from arca_control.protocol.codec import decode, encode
from arca_control.protocol.messages import (
    Accept,
    AcceptErr,
    Cancel,
    CloseListener,
    CloseListenerOk,
    Connect,
    Error,
    Hello,
    HelloOk,
    Listen,
    ListenOk,
)
from arca_control.protocol.wire import Capability, Endpoint

from .conftest import LOOPBACK_RULES, errno_is, read_all, wait_until
from .raw_monitor import RawMonitor

LOOPBACK = Endpoint("127.0.0.1", 0)


def test_garbage_before_hello_closes_the_session_with_one_line(raw):
    raw.send(b"\x01\x02")  # not even a header: no request id to answer
    assert raw.receive() is None
    log = raw.finish()
    assert "Traceback" not in log
    assert "bad frame" in log


def test_wrong_version_is_answered_then_closed(raw):
    frame = bytearray(encode(Hello(request_id=5)))
    frame[7] = 2
    raw.send(bytes(frame))
    reply = raw.receive()
    assert isinstance(reply, Error)
    assert reply.request_id == 5
    assert reply.errno == errno.EPROTONOSUPPORT
    assert raw.receive() is None
    assert "Traceback" not in raw.finish()


def test_request_before_hello_is_refused(raw):
    reply = raw.request(Listen(request_id=3, endpoint=LOOPBACK))
    assert isinstance(reply, Error)
    assert reply.request_id == 3
    assert raw.receive() is None


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (encode(Listen(request_id=9, endpoint=LOOPBACK)) + b"x", errno.EPROTO),  # trailing byte
        (encode(Listen(request_id=9, endpoint=LOOPBACK))[:-1], errno.EPROTO),  # truncated
        (b"\x70\x00\x00\x09\x00\x00\x00", errno.EBADMSG),  # unknown type
        (b"\x02\x03\x00\x09\x00\x00\x00\x07\x00\x00", errno.EBADMSG),  # bad address family
        (encode(HelloOk(request_id=9)), errno.EPROTO),  # a reply, sent by the guest
        (encode(Hello(request_id=9)), errno.EPROTO),  # a second Hello
        (b"\x02\xff\xff\x09\x00\x00\x00" + b"\x00" * 5000, errno.EMSGSIZE),  # over the payload limit
    ],
)
def test_bad_frames_get_an_error_reply_and_the_session_goes_on(raw, frame, code):
    raw.hello()
    raw.send(frame)
    reply = raw.receive()
    assert isinstance(reply, Error)
    assert reply.request_id == 9
    assert reply.errno == code
    listen = raw.request(Listen(request_id=10, endpoint=LOOPBACK))
    assert isinstance(listen, ListenOk)
    assert listen.local.port != 0
    assert "Traceback" not in raw.finish()


def test_descriptors_sent_by_a_guest_are_refused_and_not_kept(raw):
    raw.hello()
    baseline = raw.fd_count()
    with open(os.devnull) as junk:
        raw.send(encode(Accept(request_id=4, listener_id=1)), fds=[junk.fileno()] * 3)
    reply = raw.receive()
    assert isinstance(reply, Error)
    assert reply.request_id == 4
    assert raw.fd_count() == baseline
    raw.finish()


def test_too_many_bad_frames_close_the_session(tmp_path):
    raw = RawMonitor(tmp_path, "--max-protocol-errors", "3")
    raw.hello()
    bad = encode(Listen(request_id=2, endpoint=LOOPBACK)) + b"x"
    for _ in range(3):
        raw.send(bad)
        assert isinstance(raw.receive(), Error)
    assert raw.receive() is None
    assert "Traceback" not in raw.finish()


def test_listener_errors_over_the_wire(raw):
    raw.hello()
    assert isinstance(raw.request(Accept(request_id=2, listener_id=77)), AcceptErr)
    unknown = raw.request(CloseListener(request_id=3, listener_id=77))
    assert isinstance(unknown, Error)
    assert unknown.errno == errno.EBADF
    ok = raw.request(Listen(request_id=4, endpoint=LOOPBACK))
    raw.send(encode(Accept(request_id=5, listener_id=ok.listener_id)))
    raw.send(encode(Accept(request_id=6, listener_id=ok.listener_id)))
    replies = [raw.request(CloseListener(request_id=7, listener_id=ok.listener_id)), raw.receive(), raw.receive()]
    pending = sorted((r for r in replies if isinstance(r, AcceptErr)), key=lambda r: r.request_id)
    assert [(r.request_id, r.errno) for r in pending] == [(5, errno.EBADF), (6, errno.EBADF)]
    assert any(isinstance(r, CloseListenerOk) for r in replies)
    raw.finish()


def test_fd_count_returns_to_baseline_after_connections(raw):
    raw.hello()
    baseline = raw.fd_count()
    listen = raw.request(Listen(request_id=2, endpoint=LOOPBACK))
    for i in range(20):
        raw.send(encode(Accept(request_id=100 + i, listener_id=listen.listener_id)))
        client = socket.create_connection(listen.local, timeout=5)
        data, fds, _, _ = socket.recv_fds(raw.sock, 1000, 4)
        assert decode(data).request_id == 100 + i
        assert len(fds) == 2
        for fd in fds:
            os.close(fd)
        assert client.recv(10) == b""  # the monitor noticed the guest's close, and closed
        client.close()
    assert raw.request(CloseListener(request_id=3, listener_id=listen.listener_id)).listener_id == listen.listener_id
    # Each relay closes its socket and pipes once both directions end.
    for _ in range(100):
        if raw.fd_count() == baseline:
            break
        __import__("time").sleep(0.05)
    assert raw.fd_count() == baseline
    raw.finish()


def test_requests_need_the_tcp_capability(raw):
    assert raw.request(Hello(request_id=1, capabilities=Capability(0))).capabilities == 0
    reply = raw.request(Listen(request_id=2, endpoint=LOOPBACK))
    assert isinstance(reply, Error)
    assert reply.errno == errno.EOPNOTSUPP
    raw.finish()


def test_a_request_id_still_pending_is_refused(raw):
    raw.hello()
    listen = raw.request(Listen(request_id=2, endpoint=LOOPBACK))
    raw.send(encode(Accept(request_id=3, listener_id=listen.listener_id)))
    again = raw.request(Accept(request_id=3, listener_id=listen.listener_id))
    assert isinstance(again, Error)
    assert again.errno == errno.EBUSY
    assert again.request_id == 3
    raw.send(encode(Cancel(request_id=4, target=3)))
    withdrawn = raw.receive()
    assert isinstance(withdrawn, AcceptErr)
    assert withdrawn.request_id == 3
    assert withdrawn.errno == errno.ECANCELED
    raw.finish()


def test_connect_errors_over_the_wire(raw):
    raw.hello()
    reply = raw.request(Connect(request_id=2, endpoint=Endpoint("127.0.0.1", 1)))
    assert reply.errno == errno.ECONNREFUSED
    assert reply.request_id == 2
    raw.finish()


# --- crashes ----------------------------------------------------------------------

GUEST = textwrap.dedent(
    """
    import os, sys, trio, arca_control
    async def main():
        async with arca_control.open_session() as session:
            listener = await session.listen("127.0.0.1", 0)
            print(listener.local.port, session.process.pid, flush=True)
            await trio.sleep_forever()
    trio.run(main)
    """
)


async def test_guest_crash_frees_its_ports_and_ends_its_monitor():
    guest = await trio.lowlevel.open_process([sys.executable, "-c", GUEST], stdout=subprocess.PIPE)
    assert guest.stdout is not None
    line = b""
    with trio.fail_after(10):
        while not line.endswith(b"\n"):
            line += await guest.stdout.receive_some(100)
    port, monitor_pid = map(int, line.split())
    guest.send_signal(signal.SIGKILL)
    await guest.wait()
    # The orphaned monitor sees EOF on the control channel, closes everything and exits.
    await wait_until(lambda: _proc_state(monitor_pid) in ("gone", "Z"), seconds=10, interval=0.05)
    socket.create_server(("127.0.0.1", port)).close()  # the port is free


def _proc_state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return "gone"


async def test_monitor_crash_fails_everything_promptly():
    async with arca_control.open_session() as session:
        listener = await session.listen("127.0.0.1", 0)
        client = await session.connect(*listener.local)
        server = await listener.accept()
        outcome: dict[str, Exception] = {}

        async def pending_accept():
            try:
                await listener.accept()
            except errors.MonitorGone as exc:
                outcome["accept"] = exc

        async def pending_receive():
            try:
                await read_all(client)
            except trio.BrokenResourceError as exc:
                outcome["receive"] = exc

        with trio.fail_after(2):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pending_accept)
                nursery.start_soon(pending_receive)
                await trio.testing.wait_all_tasks_blocked()
                assert session.process is not None  # open_session started the monitor
                session.process.kill()
        assert set(outcome) == {"accept", "receive"}
        with trio.fail_after(1), pytest.raises(errors.MonitorGone):
            await session.connect("127.0.0.1", 1)
        with trio.fail_after(1), pytest.raises(errors.MonitorGone):
            await session.listen("127.0.0.1", 0)
        await server.aclose()


# --- standalone mode ----------------------------------------------------------------


async def test_standalone_monitor_serves_sessions_one_after_another_and_at_once(socket_monitor):
    path, process = socket_monitor
    async with arca_control.attach_session(path) as first:
        listener = await first.listen("127.0.0.1", 0)
        async with arca_control.attach_session(path) as second:
            stream = await second.connect(*listener.local)  # one guest reaches another's listener
            accepted = await listener.accept()
            await stream.send_all(b"across sessions")
            assert await accepted.receive_some() == b"across sessions"
        # The second session ended; the first still works.
        await accepted.aclose()
        assert (await first.listen("127.0.0.1", 0)).local.port
    # A hostile client does not hurt the monitor either.
    junk = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    junk.connect(path)
    junk.send(b"\xff" * 3)
    junk.close()
    async with arca_control.attach_session(path) as third:
        assert (await third.listen("127.0.0.1", 0)).local.port
    assert process.returncode is None


async def test_standalone_monitor_refuses_a_path_in_use(socket_monitor, tmp_path):
    path, _ = socket_monitor

    async def monitor_on(socket_path: str) -> subprocess.CompletedProcess[bytes]:
        with trio.fail_after(20):
            return await trio.run_process(
                [sys.executable, "-m", "arca_monitor", "--socket", socket_path], capture_stdout=True, capture_stderr=True, check=False
            )

    result = await monitor_on(path)
    assert result.returncode == 1
    assert b"another monitor" in result.stderr
    not_a_socket = tmp_path / "file"
    not_a_socket.write_text("x")
    result = await monitor_on(str(not_a_socket))
    assert result.returncode == 1
    assert b"not a socket" in result.stderr


def test_monitor_help_documents_every_option():
    out = subprocess.run([sys.executable, "-m", "arca_monitor", "--help"], capture_output=True, text=True).stdout
    for option in ("--fd", "--socket", "--connect-timeout", "--max-payload", "--max-protocol-errors", "--log-level"):
        assert option in out


# --- real peers --------------------------------------------------------------------


async def test_serve_listeners_serves_real_curl(session):
    curl = shutil.which("curl")
    assert curl, "curl is installed by `make system-deps`"
    listener = await session.listen("127.0.0.1", 0)
    served = []

    async def handler(stream):
        request = b""
        while b"\r\n\r\n" not in request:
            request += await stream.receive_some()
        served.append(stream.peer)
        body = b"served by trio.serve_listeners through arca\n"
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, handler, [listener])
        url = f"http://127.0.0.1:{listener.local.port}/"
        result = await trio.run_process([curl, "-sS", "--max-time", "10", url, url], capture_stdout=True)
        nursery.cancel_scope.cancel()
    assert result.stdout == b"served by trio.serve_listeners through arca\n" * 2
    assert len(served) == 2
    assert all(peer.host == "127.0.0.1" for peer in served)


# --- errors that need a network we must not touch: an empty namespace ------------------

NETNS = [
    "unshare", "-n", "--", "sh", "-ec",
    # lo, plus a veth pair with a static neighbour that never answers:
    # SYNs to 10.77.0.2 vanish inside this namespace, and nothing leaves the machine.
    (
        "ip link set lo up; ip link add v0 type veth peer name v1; ip addr add 10.77.0.1/24 dev v0;"
        " ip link set v0 up; ip link set v1 up; ip neigh add 10.77.0.2 lladdr 02:00:00:00:00:02 dev v0;"
        ' exec "$@"'
    ),
    "sh", sys.executable, "-m", "arca_monitor",
]


async def test_unreachable_and_timeout_inside_an_empty_namespace():
    # Both destinations are inside the empty namespace; the policy must allow them by name.
    rules = ("--allow-connect", "192.0.2.1:80", "--allow-connect", "10.77.0.2:80", *LOOPBACK_RULES)
    async with arca_control.open_session(*rules, command=NETNS) as session:
        with pytest.raises(OSError, check=errno_is(errno.ENETUNREACH)):
            await session.connect("192.0.2.1", 80)  # no route at all
        with trio.fail_after(5), pytest.raises(TimeoutError) as caught:
            await session.connect("10.77.0.2", 80, timeout=0.5)
        assert caught.value.errno == errno.ETIMEDOUT
        # A slow connect does not stall other requests on the same session.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_expect_timeout, session)
            with trio.fail_after(1):
                listener = await session.listen("127.0.0.1", 0)
                stream = await session.connect(*listener.local)
                await stream.aclose()


async def _expect_timeout(session):
    with pytest.raises(TimeoutError):
        await session.connect("10.77.0.2", 80, timeout=2)

"""Issue 14: where PROTOCOL.md and the monitor disagreed, one test per item that both now say the same.

Each test drives a live monitor (a spawned ``arca-monitor``, as a guest
written from the spec alone would) and, where the item was a gap in the text,
also checks that PROTOCOL.md states what the monitor does.
"""

from __future__ import annotations

import array
import dataclasses
import errno
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import arca_control
from arca_control.protocol.codec import decode, encode
from arca_control.protocol.messages import (
    Accept,
    AcceptOk,
    Connect,
    ConnectErr,
    ConnectionEnd,
    ConnectOk,
    Error,
    Hello,
    Listen,
    ListenErr,
    ListenOk,
    Message,
    Resolve,
    ResolveErr,
    ResolveOk,
    Stats,
    StatsOk,
    UdpBind,
)
from arca_control.protocol.wire import Endpoint, FamilyFilter, GaiError, SockType
from arca_monitor.resolver import EAI_NODATA, ResolveError, Resolver

from .dns_server import dns_server
from .test_monitor import RawMonitor
from .test_protocol_md import NAMESPACE, VECTORS

SPEC_PATH = Path(__file__).resolve().parent.parent / "PROTOCOL.md"
UNNAMED = Endpoint("", 0)


def spec() -> str:
    """PROTOCOL.md with every run of whitespace made one space, so that line breaks do not matter."""
    return " ".join(SPEC_PATH.read_text(encoding="utf-8").split())


def section(title: str) -> str:
    """The text of the section whose heading starts with ``title`` ("## 5a."), up to the next one."""
    text = spec()
    start = text.index(f"## {title}")
    end = text.find(" ## ", start + 3)
    return text[start : end if end >= 0 else len(text)]


@pytest.fixture
def monitor(tmp_path) -> Iterator[list[RawMonitor]]:
    """Spawn raw monitors with ``RawMonitor(tmp_path, *args)``; each is killed at the end if still running."""
    spawned: list[RawMonitor] = []
    yield spawned
    for raw in spawned:
        if raw.process.poll() is None:
            raw.process.kill()
            raw.process.wait()


def spawn(spawned: list[RawMonitor], tmp_path: Path, *args: str) -> RawMonitor:
    raw = RawMonitor(tmp_path, *args)
    spawned.append(raw)
    raw.hello()
    return raw


# Item 2: a known name without an address of the asked family is EAI_NODATA.


async def test_a_hosts_file_name_of_the_other_family_is_eai_nodata(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.1 only4.test\n")
    # DNS off: the hosts file alone knows the name.
    resolver = Resolver(hosts_file=str(hosts), dns=False)
    with pytest.raises(ResolveError) as caught:
        await resolver.resolve("only4.test", family=socket.AF_INET6)
    assert caught.value.eai == EAI_NODATA
    # DNS on, and DNS has never heard of it (NXDOMAIN): the hosts file still knows the name.
    async with dns_server({}) as (host, port, server):
        resolver = Resolver(hosts_file=str(hosts), nameserver=(host, port), timeout=1.0, attempts=1)
        with pytest.raises(ResolveError) as caught:
            await resolver.resolve("only4.test", family=socket.AF_INET6)
        assert caught.value.eai == EAI_NODATA
        assert server.queries == [("only4.test", "AAAA")]
        # A name nobody knows stays EAI_NONAME.
        with pytest.raises(ResolveError) as caught:
            await resolver.resolve("nobody.test", family=socket.AF_INET6)
        assert caught.value.eai == socket.EAI_NONAME


def test_resolve_through_the_monitor_answers_eai_nodata(monitor, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.1 only4.test\n::2 only6.test\n")
    raw = spawn(monitor, tmp_path, "--no-dns", "--hosts-file", str(hosts))

    for request_id, name, family in ((2, "only4.test", FamilyFilter.IPV6), (3, "only6.test", FamilyFilter.IPV4)):
        reply = raw.request(Resolve(request_id=request_id, name=name, family=family))
        assert isinstance(reply, ResolveErr) and reply.eai is GaiError.NODATA, reply
    missing = raw.request(Resolve(request_id=4, name="missing.test", family=FamilyFilter.IPV6))
    assert isinstance(missing, ResolveErr) and missing.eai is GaiError.NONAME
    raw.finish()


# Item 4: the unnamed AF_UNIX endpoint is EINVAL, never an internal error.


@pytest.mark.parametrize("allow_unix", [True, False], ids=["allow-unix", "default-policy"])
def test_the_unnamed_unix_endpoint_is_einval(monitor, tmp_path, allow_unix):
    args = ("--allow-unix", str(tmp_path)) if allow_unix else ()
    raw = spawn(monitor, tmp_path, *args)
    for request, reply_type in (
        (Listen(request_id=2, endpoint=UNNAMED), ListenErr),
        (Connect(request_id=3, endpoint=UNNAMED), ConnectErr),
        (UdpBind(request_id=4, endpoint=UNNAMED), Error),
    ):
        reply = raw.request(request)
        assert type(reply) is reply_type, reply
        # EINVAL before any policy check: with or without --allow-unix, never EIO or EACCES.
        assert reply.errno == errno.EINVAL, reply
    raw.finish()  # and no "internal error" in the monitor's log


def test_the_spec_gives_einval_for_the_unnamed_unix_endpoint():
    rows = section("6.").split("| EINVAL (22)")[1:]
    assert rows, "section 6 has no EINVAL row"
    assert "unnamed AF_UNIX endpoint" in rows[0]
    for request in ("Listen", "Connect", "UdpBind"):
        assert request in rows[0]


# Item 12: small gaps, each stated and each held by the code.


def _descriptor_messages(raw: RawMonitor) -> tuple[Message, list[list[int]]]:
    """The next frame and, for each control message beside it, the descriptors it carries."""
    space = socket.CMSG_SPACE(4 * array.array("i").itemsize)
    data, ancillary, _, _ = raw.sock.recvmsg(70000, space)
    groups = []
    for level, kind, payload in ancillary:
        assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
        fds = array.array("i")
        fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
        groups.append(list(fds))
    return decode(data), groups


def test_descriptors_come_in_one_scm_rights_and_shutdown_of_tx_is_a_half_close(monitor, tmp_path):
    raw = spawn(monitor, tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(10)
        raw.send(encode(Connect(request_id=2, endpoint=Endpoint(*server.getsockname()[:2]))))
        reply, groups = _descriptor_messages(raw)
        assert isinstance(reply, ConnectOk)
        assert [len(group) for group in groups] == [2]  # one SCM_RIGHTS, rx read end then tx write end
        rx_fd, tx_fd = groups[0]
        peer, _ = server.accept()
    with peer, socket.socket(fileno=tx_fd) as tx, open(rx_fd, "rb", buffering=0) as rx:
        peer.settimeout(10)
        tx.sendall(b"up")
        tx.shutdown(socket.SHUT_WR)  # not a close: the guest keeps tx open
        received = b""
        while chunk := peer.recv(100):
            received += chunk
        assert received == b"up"  # and then the peer's EOF: the half-close reached it
        peer.sendall(b"down")  # the other direction still works
        peer.close()
        assert rx.read(100) == b"down"
        end = raw.receive()
        assert isinstance(end, ConnectionEnd) and end.status == 0
        assert rx.read(100) == b""
    raw.finish()


def test_the_spec_states_the_small_gaps():
    text = spec()
    assert "one `SCM_RIGHTS` control message" in text
    assert "(`shutdown(SHUT_WR)`, a half-close too" in text
    assert "the port is little-endian" in text and "port 8080 is `90 1f`" in text
    assert "exits with status 1 after one line on stderr that names the errno" in text
    assert "On SIGTERM or SIGINT it closes every session, removes the socket file and exits 0" in text
    # The example the warning gives is what the codec writes.
    frame = encode(Listen(request_id=1, endpoint=Endpoint("127.0.0.1", 8080)))
    assert frame[7:14] == bytes.fromhex("01 7f 00 00 01 90 1f")


def _monitor_on(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "arca_monitor", "--socket", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
    )


def _one_error_line(result: subprocess.CompletedProcess[str], code: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # no traceback
    assert "Traceback" not in result.stderr and f"({code})" in lines[0]


async def test_a_taken_socket_path_is_one_line_and_status_1(tmp_path, socket_monitor):
    not_a_socket = tmp_path / "file"
    not_a_socket.write_text("")
    result = await trio.to_thread.run_sync(_monitor_on, not_a_socket)
    _one_error_line(result, "EEXIST")
    assert not_a_socket.read_text() == ""  # left alone
    served, _ = socket_monitor
    result = await trio.to_thread.run_sync(_monitor_on, Path(served))
    _one_error_line(result, "EADDRINUSE")
    assert os.path.exists(served)  # still the first monitor's


async def test_sigterm_removes_the_socket_file(tmp_path):
    path = tmp_path / "arca.sock"
    process = await trio.lowlevel.open_process([sys.executable, "-m", "arca_monitor", "--socket", str(path)])
    try:
        with trio.fail_after(10):
            while not path.exists():
                await trio.sleep(0.02)
        async with arca_control.attach_session(str(path)) as session:
            await session.listen("127.0.0.1", 0)
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(10):
                assert await process.wait() == 0
        assert not path.exists()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# Item 5: AF_UNIX needs --allow-unix, and --allow-unix alone drops the loopback default.


def test_af_unix_is_denied_by_default(monitor, tmp_path):
    raw = spawn(monitor, tmp_path)
    path = Endpoint(str(tmp_path / "guest.sock"), 0)
    for request, reply_type in ((Listen(request_id=2, endpoint=path), ListenErr),
                                (Connect(request_id=3, endpoint=path), ConnectErr)):
        reply = raw.request(request)
        assert type(reply) is reply_type and reply.errno == errno.EACCES, reply
        assert "--allow-unix" in reply.message
    assert not os.path.exists(path.host)
    raw.finish()


def test_allow_unix_alone_drops_the_loopback_default(monitor, tmp_path):
    raw = spawn(monitor, tmp_path, "--allow-unix", str(tmp_path))
    listening = raw.request(Listen(request_id=2, endpoint=Endpoint(str(tmp_path / "guest.sock"), 0)))
    assert isinstance(listening, ListenOk)
    with socket.create_server(("127.0.0.1", 0)) as server:
        refused = raw.request(Connect(request_id=3, endpoint=Endpoint(*server.getsockname()[:2])))
    assert isinstance(refused, ConnectErr) and refused.errno == errno.EACCES and "--allow-connect" in refused.message
    loopback = raw.request(Listen(request_id=4, endpoint=Endpoint("127.0.0.1", 0)))
    assert isinstance(loopback, ListenErr) and loopback.errno == errno.EACCES
    raw.finish()


def test_the_spec_says_af_unix_needs_allow_unix():
    assert "AF_UNIX endpoints reach whatever the monitor's user may open" not in spec()
    assert "the default policy has none: without `--allow-unix` every AF_UNIX Listen and Connect is denied" in section("3.")
    policy = section("5a.")
    assert "The default allows no AF_UNIX endpoint: AF_UNIX needs `--allow-unix`." in policy
    assert "giving only `--allow-unix` also drops the loopback default" in policy


# Item 6: a second Hello of another version is EPROTONOSUPPORT, and the session goes on.


def test_a_second_hello_of_another_version(monitor, tmp_path):
    raw = spawn(monitor, tmp_path)
    frame = bytearray(encode(Hello(request_id=2)))
    frame[7] = 2  # the version field, after the header
    raw.send(bytes(frame))
    reply = raw.receive()
    assert isinstance(reply, Error) and reply.request_id == 2 and reply.errno == errno.EPROTONOSUPPORT
    second = raw.request(Hello(request_id=3))
    assert isinstance(second, Error) and second.errno == errno.EPROTO
    assert isinstance(raw.request(Stats(request_id=4)), StatsOk)  # the session went on
    raw.finish()


def test_the_spec_says_what_a_second_hello_of_another_version_gets():
    assert "A later second Hello gets `Error` EPROTO, or EPROTONOSUPPORT if it is of another version too" in section("4.")
    assert "as a second Hello it does not (section 4)" in section("6.")


# Item 7: an event from the guest is EBADMSG with a nonzero id, and ends the session unanswered with id 0.


def test_an_event_from_the_guest(monitor, tmp_path):
    raw = spawn(monitor, tmp_path)
    event = bytearray(encode(ConnectionEnd(request_id=0, connection_id=1, status=0)))
    event[3:7] = (9).to_bytes(4, "little")
    raw.send(bytes(event))
    reply = raw.receive()
    assert isinstance(reply, Error) and reply.request_id == 9 and reply.errno == errno.EBADMSG
    assert isinstance(raw.request(Stats(request_id=4)), StatsOk)  # the session went on
    raw.send(encode(ConnectionEnd(request_id=0, connection_id=1, status=0)))
    assert raw.receive() is None  # closed, with no reply
    raw.finish()


def test_the_spec_says_what_an_event_from_the_guest_gets():
    errors = section("6.")
    assert "reply or event from the guest" not in errors
    assert "An event sent by the guest never gets EPROTO." in errors
    assert "answered `Error` EBADMSG under that id; with id 0 it decodes, but there is nobody to answer" in errors
    assert "An event sent by the guest with id 0" in section("4.")


# Item 8: the dual-stack AcceptOk vector shows what the monitor sends.


def _dual_stack_vector() -> AcceptOk:
    for expression, data in VECTORS:
        message = decode(data)
        if isinstance(message, AcceptOk) and message.peer.host.startswith("::ffff:"):
            assert message == eval(expression, dict(NAMESPACE))
            return message
    raise AssertionError("PROTOCOL.md has no AcceptOk vector for a dual-stack listener")


def test_the_dual_stack_accept_vector_is_what_the_monitor_sends(monitor, tmp_path):
    raw = spawn(monitor, tmp_path)
    listening = raw.request(Listen(request_id=2, endpoint=Endpoint("::", 0)))
    assert isinstance(listening, ListenOk)
    raw.send(encode(Accept(request_id=3, listener_id=listening.listener_id)))
    with socket.create_connection(("127.0.0.1", listening.local.port), timeout=10):
        live, groups = _descriptor_messages(raw)
        for fd in (fd for group in groups for fd in group):
            os.close(fd)
    assert isinstance(live, AcceptOk)
    vector = _dual_stack_vector()
    # Ids and ports are the session's own; the addresses and their forms must be the vector's.
    assert live == dataclasses.replace(
        vector,
        request_id=live.request_id,
        connection_id=live.connection_id,
        local=Endpoint(vector.local.host, live.local.port),
        peer=Endpoint(vector.peer.host, live.peer.port),
    )
    raw.finish()


# Item 9: the EAI table lists all twelve codes with their numbers.


def test_the_eai_table_lists_every_code_with_its_number():
    rows = re.findall(r"\| (\d+) +\| `(EAI_[A-Z]+)` +\|", SPEC_PATH.read_text(encoding="utf-8"))
    table = {int(value): name for value, name in rows}
    assert len(rows) == len(table) == 12
    assert table == {code.value: f"EAI_{code.name}" for code in GaiError}
    # And they are Linux's own numbers, negated.
    for value, name in table.items():
        assert -getattr(socket, name) == value


# Item 10: ResolveOk carries at most 255 answers, the first ones in order.


def test_resolve_ok_keeps_the_first_255_answers(monitor, tmp_path):
    v4 = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(250)]
    v6 = [f"2001:db8::{i + 1:x}" for i in range(10)]
    hosts = tmp_path / "hosts"
    # IPv4 lines first in the file: the answers still put IPv6 first.
    hosts.write_text("".join(f"{address} many.test\n" for address in v4 + v6))
    raw = spawn(monitor, tmp_path, "--no-dns", "--hosts-file", str(hosts))
    stream = raw.request(Resolve(request_id=2, name="many.test", port=80, socktype=SockType.STREAM))
    assert isinstance(stream, ResolveOk)
    assert [endpoint.host for _, endpoint in stream.addresses] == (v6 + v4)[:255]
    both = raw.request(Resolve(request_id=3, name="many.test", port=80))
    assert isinstance(both, ResolveOk)
    expected = [(kind, host) for host in v6 + v4 for kind in (SockType.STREAM, SockType.DGRAM)][:255]
    assert [(kind, endpoint.host) for kind, endpoint in both.addresses] == expected
    raw.finish()


def test_the_spec_says_how_many_answers_resolve_ok_carries():
    names = section("5.")
    assert "A ResolveOk carries at most 255 answers (its count is a u8): of more, the first 255 in this order are kept" in names


# Item 11: error texts are free-form; only the errno is the contract.


def test_a_refused_connect_keeps_the_vectors_errno_not_its_text(monitor, tmp_path):
    vector = next(decode(data) for _, data in VECTORS if isinstance(decode(data), ConnectErr))
    raw = spawn(monitor, tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: refused
        live = raw.request(Connect(request_id=4, endpoint=Endpoint("127.0.0.1", port)))
    assert isinstance(live, ConnectErr) and live.errno == vector.errno == errno.ECONNREFUSED
    raw.finish()


def test_the_spec_says_error_texts_are_free_form():
    errors = section("6.")
    assert "is free-form, for people" in errors
    assert "Only the errno (a ResolveErr's `eai`) is the contract: a guest must never parse or compare the text." in errors
    assert "Error texts in the vectors are examples only" in section("7.")


# Item 13: a reused pending id gets Error EBUSY first, and the pending request's own reply after.


def test_a_reused_pending_id_gets_two_replies(monitor, tmp_path):
    raw = spawn(monitor, tmp_path)
    listening = raw.request(Listen(request_id=2, endpoint=Endpoint("127.0.0.1", 0)))
    assert isinstance(listening, ListenOk)
    raw.send(encode(Accept(request_id=5, listener_id=listening.listener_id)))
    busy = raw.request(Accept(request_id=5, listener_id=listening.listener_id))
    assert isinstance(busy, Error) and busy.request_id == 5 and busy.errno == errno.EBUSY
    with socket.create_connection(listening.local, timeout=10):
        accepted, groups = _descriptor_messages(raw)
        for fd in (fd for group in groups for fd in group):
            os.close(fd)
    # The first Accept's own reply, under the same id.
    assert isinstance(accepted, AcceptOk) and accepted.request_id == 5
    # The second Accept was forgotten: a second client is not taken for it.
    with socket.create_connection(listening.local, timeout=10):
        assert isinstance(raw.request(Stats(request_id=6)), StatsOk)
    raw.finish()


def test_the_spec_states_the_ebusy_rule_and_its_consequence():
    ids = section("4.")
    assert "The consequence: that id gets two replies." in ids
    assert "a pending request's own reply is never an `Error` EBUSY" in ids

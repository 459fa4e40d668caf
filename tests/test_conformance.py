"""Issue 14: where PROTOCOL.md and the monitor disagreed, a test per item that both now say the same.

Each test drives a live monitor with hand-made frames, as a guest written
from the spec alone would, and, where the item was a gap in the text, checks
that PROTOCOL.md states what the monitor does.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

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
from .raw_monitor import RawMonitor, expect
from .test_protocol_md import NAMESPACE, VECTORS

if TYPE_CHECKING:
    from collections.abc import Iterator

SPEC_PATH = Path(__file__).resolve().parent.parent / "PROTOCOL.md"
UNNAMED = Endpoint("", 0)


def spec() -> str:
    """PROTOCOL.md with every run of whitespace made one space, so that line breaks do not matter."""
    return " ".join(SPEC_PATH.read_text(encoding="utf-8").split())


def section(title: str) -> str:
    """The text of the section whose heading starts with ``title`` ("5a."), up to the next one."""
    text = spec()
    start = text.index(f"## {title}")
    end = text.find(" ## ", start + 3)
    return text[start : end if end >= 0 else len(text)]


@pytest.fixture
def guests() -> Iterator[list[RawMonitor]]:
    """Where :func:`spawn` keeps its monitors, each killed at the end if still running."""
    spawned: list[RawMonitor] = []
    yield spawned
    for guest in spawned:
        guest.kill()


def spawn(spawned: list[RawMonitor], tmp_path: Path, *args: str) -> RawMonitor:
    """A monitor with these options, past the handshake."""
    guest = RawMonitor(tmp_path, *args)
    spawned.append(guest)
    guest.hello()
    return guest


# Item 2: a name that is known but has no address of the asked family is EAI_NODATA.


async def test_a_hosts_file_name_of_the_other_family_is_eai_nodata(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.1 only4.test\n")
    # DNS off: the hosts file alone knows the name.
    resolver = Resolver(hosts_file=str(hosts), dns=False)
    with pytest.raises(ResolveError) as caught:
        await resolver.resolve("only4.test", family=socket.AF_INET6)
    assert caught.value.eai == EAI_NODATA
    # DNS on, and DNS has never heard of the name (NXDOMAIN): the hosts file still knows it.
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


def test_resolve_through_the_monitor_answers_eai_nodata(guests: list[RawMonitor], tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.1 only4.test\n::2 only6.test\n")
    guest = spawn(guests, tmp_path, "--no-dns", "--hosts-file", str(hosts))
    for request_id, name, family in ((2, "only4.test", FamilyFilter.IPV6), (3, "only6.test", FamilyFilter.IPV4)):
        reply = expect(guest.request(Resolve(request_id=request_id, name=name, family=family)), ResolveErr)
        assert reply.eai is GaiError.NODATA
    missing = expect(guest.request(Resolve(request_id=4, name="missing.test", family=FamilyFilter.IPV6)), ResolveErr)
    assert missing.eai is GaiError.NONAME
    guest.finish()


# Item 4: the unnamed AF_UNIX endpoint is EINVAL, never an internal error.


@pytest.mark.parametrize("allow_unix", [True, False], ids=["allow-unix", "default-policy"])
def test_the_unnamed_unix_endpoint_is_einval(guests: list[RawMonitor], tmp_path: Path, allow_unix: bool) -> None:
    guest = spawn(guests, tmp_path, *(("--allow-unix", str(tmp_path)) if allow_unix else ()))
    # EINVAL before any policy check: with or without --allow-unix, never EIO or EACCES.
    expect(guest.request(Listen(request_id=2, endpoint=UNNAMED)), ListenErr, errno.EINVAL)
    expect(guest.request(Connect(request_id=3, endpoint=UNNAMED)), ConnectErr, errno.EINVAL)
    expect(guest.request(UdpBind(request_id=4, endpoint=UNNAMED)), Error, errno.EINVAL)
    guest.finish()  # and no "internal error" in the monitor's log


def test_the_spec_gives_einval_for_the_unnamed_unix_endpoint() -> None:
    rows = section("6.").split("| EINVAL (22)")[1:]
    assert rows, "section 6 has no EINVAL row"
    row = rows[0].split(" | ")[1:3]
    assert row[0] == "the request's error reply"
    assert "unnamed AF_UNIX endpoint" in row[1]
    assert "Listen, Connect or UdpBind" in row[1]


# Item 5: AF_UNIX needs --allow-unix, and --allow-unix alone drops the loopback default.


def test_af_unix_is_denied_by_default(guests: list[RawMonitor], tmp_path: Path) -> None:
    guest = spawn(guests, tmp_path)
    path = Endpoint(str(tmp_path / "guest.sock"), 0)
    listen = expect(guest.request(Listen(request_id=2, endpoint=path)), ListenErr, errno.EACCES)
    connect = expect(guest.request(Connect(request_id=3, endpoint=path)), ConnectErr, errno.EACCES)
    assert "--allow-unix" in listen.message
    assert "--allow-unix" in connect.message
    assert not os.path.exists(path.host)
    guest.finish()


def test_allow_unix_alone_drops_the_loopback_default(guests: list[RawMonitor], tmp_path: Path) -> None:
    guest = spawn(guests, tmp_path, "--allow-unix", str(tmp_path))
    expect(guest.request(Listen(request_id=2, endpoint=Endpoint(str(tmp_path / "guest.sock"), 0))), ListenOk)
    with socket.create_server(("127.0.0.1", 0)) as server:
        loopback = Endpoint(*server.getsockname()[:2])
        refused = expect(guest.request(Connect(request_id=3, endpoint=loopback)), ConnectErr, errno.EACCES)
    assert "--allow-connect" in refused.message
    expect(guest.request(Listen(request_id=4, endpoint=Endpoint("127.0.0.1", 0))), ListenErr, errno.EACCES)
    guest.finish()


def test_the_spec_says_af_unix_needs_allow_unix() -> None:
    assert "AF_UNIX endpoints reach whatever the monitor's user may open" not in spec()
    assert (
        "the default policy has none: without `--allow-unix` every AF_UNIX Listen and Connect is denied"
        in section("3.")
    )
    policy = section("5a.")
    assert "The default allows no AF_UNIX endpoint: AF_UNIX needs `--allow-unix`." in policy
    assert "giving only `--allow-unix` also drops the loopback default" in policy


# Item 6: a second Hello of another version is EPROTONOSUPPORT, and the session goes on.


def test_a_second_hello_of_another_version(guests: list[RawMonitor], tmp_path: Path) -> None:
    guest = spawn(guests, tmp_path)
    frame = bytearray(encode(Hello(request_id=2)))
    frame[7] = 2  # the version field, first after the header
    guest.send(bytes(frame))
    reply = expect(guest.receive(), Error, errno.EPROTONOSUPPORT)
    assert reply.request_id == 2
    expect(guest.request(Hello(request_id=3)), Error, errno.EPROTO)  # of version 1: EPROTO
    expect(guest.request(Stats(request_id=4)), StatsOk)  # the session went on
    guest.finish()


def test_the_spec_says_what_a_second_hello_of_another_version_gets() -> None:
    assert "A later second Hello gets `Error` EPROTO, or EPROTONOSUPPORT if it is of another version too" in section(
        "4."
    )
    assert "as a second Hello it does not (section 4)" in section("6.")


# Item 7: an event from the guest is EBADMSG with a nonzero id, and ends the session unanswered with id 0.


def test_an_event_from_the_guest(guests: list[RawMonitor], tmp_path: Path) -> None:
    guest = spawn(guests, tmp_path)
    event = bytearray(encode(ConnectionEnd(request_id=0, connection_id=1, status=0)))
    event[3:7] = (9).to_bytes(4, "little")
    guest.send(bytes(event))
    reply = expect(guest.receive(), Error, errno.EBADMSG)
    assert reply.request_id == 9
    expect(guest.request(Stats(request_id=4)), StatsOk)  # the session went on
    assert guest.request(ConnectionEnd(request_id=0, connection_id=1, status=0)) is None  # closed, no reply
    guest.finish()


def test_the_spec_says_what_an_event_from_the_guest_gets() -> None:
    errors = section("6.")
    assert "reply or event from the guest" not in errors
    assert "An event sent by the guest never gets EPROTO." in errors
    assert "answered `Error` EBADMSG under that id; with id 0 it decodes, but there is nobody to answer" in errors
    assert "An event sent by the guest with id 0" in section("4.")


# Item 8: the dual-stack AcceptOk vector shows what the monitor sends.


def dual_stack_vector() -> AcceptOk:
    for expression, data in VECTORS:
        message = decode(data)
        if isinstance(message, AcceptOk) and message.peer.host.startswith("::ffff:"):
            assert message == eval(expression, dict(NAMESPACE))
            return message
    raise AssertionError("PROTOCOL.md has no AcceptOk vector for a dual-stack listener")


def test_the_dual_stack_accept_vector_is_what_the_monitor_sends(guests: list[RawMonitor], tmp_path: Path) -> None:
    guest = spawn(guests, tmp_path)
    listening = expect(guest.request(Listen(request_id=2, endpoint=Endpoint("::", 0))), ListenOk)
    guest.send(encode(Accept(request_id=3, listener_id=listening.listener_id)))
    with socket.create_connection(("127.0.0.1", listening.local.port), timeout=10):
        live = expect(guest.receive(), AcceptOk)
    vector = dual_stack_vector()
    # Ids and ports are the session's own; the addresses, in their written forms, must be the vector's.
    assert live == dataclasses.replace(
        vector,
        request_id=live.request_id,
        connection_id=live.connection_id,
        local=Endpoint(vector.local.host, live.local.port),
        peer=Endpoint(vector.peer.host, live.peer.port),
    )
    guest.finish()


# Item 9: the EAI table lists all twelve codes with their numbers.


def test_the_eai_table_lists_every_code_with_its_number() -> None:
    rows = re.findall(r"\| (\d+) +\| `(EAI_[A-Z]+)` +\|", SPEC_PATH.read_text(encoding="utf-8"))
    table = {int(value): name for value, name in rows}
    assert len(rows) == len(table) == 12
    assert table == {code.value: f"EAI_{code.name}" for code in GaiError}
    for value, name in table.items():  # Linux's own numbers, negated
        assert -getattr(socket, name) == value


# Item 10: ResolveOk carries at most 255 answers, the first ones in answer order.


def test_resolve_ok_keeps_the_first_255_answers(guests: list[RawMonitor], tmp_path: Path) -> None:
    v4 = [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(250)]
    v6 = [f"2001:db8::{i + 1:x}" for i in range(10)]
    hosts = tmp_path / "hosts"
    # IPv4 lines first in the file: the answers still put IPv6 first.
    hosts.write_text("".join(f"{address} many.test\n" for address in v4 + v6))
    guest = spawn(guests, tmp_path, "--no-dns", "--hosts-file", str(hosts))
    stream = expect(guest.request(Resolve(request_id=2, name="many.test", port=80, socktype=SockType.STREAM)), ResolveOk)
    assert [endpoint.host for _, endpoint in stream.addresses] == (v6 + v4)[:255]
    both = expect(guest.request(Resolve(request_id=3, name="many.test", port=80)), ResolveOk)
    expected = [(kind, host) for host in v6 + v4 for kind in (SockType.STREAM, SockType.DGRAM)][:255]
    assert [(kind, endpoint.host) for kind, endpoint in both.addresses] == expected
    guest.finish()


def test_the_spec_says_how_many_answers_resolve_ok_carries() -> None:
    assert (
        "A ResolveOk carries at most 255 answers (its count is a u8): of more, the first 255 in this order are kept"
        in section("5.")
    )


# Item 11: error texts are free-form; only the errno is the contract.


def test_a_refused_connect_keeps_the_vectors_errno_not_its_text(guests: list[RawMonitor], tmp_path: Path) -> None:
    vector = next(message for _, data in VECTORS if isinstance(message := decode(data), ConnectErr))
    guest = spawn(guests, tmp_path)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))  # bound, never listening: refused
        live = guest.request(Connect(request_id=4, endpoint=Endpoint(*probe.getsockname()[:2])))
    expect(live, ConnectErr, vector.errno)
    guest.finish()


def test_the_spec_says_error_texts_are_free_form() -> None:
    errors = section("6.")
    assert "is free-form, for people" in errors
    assert "Only the errno (a ResolveErr's `eai`) is the contract: a guest must never parse or compare the text." in errors
    assert "Error texts in the vectors are examples only" in section("7.")


# Item 12: small gaps, each stated and each held by the code.


def test_descriptors_come_in_one_scm_rights_and_shutdown_of_tx_is_a_half_close(
    guests: list[RawMonitor], tmp_path: Path
) -> None:
    guest = spawn(guests, tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.settimeout(10)
        guest.send(encode(Connect(request_id=2, endpoint=Endpoint(*server.getsockname()[:2]))))
        reply, groups = guest.receive_with_fds()
        expect(reply, ConnectOk)
        assert [len(group) for group in groups] == [2]  # one SCM_RIGHTS: the rx read end, then the tx write end
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
        end = expect(guest.receive(), ConnectionEnd)
        assert end.status == 0
        assert rx.read(100) == b""
    guest.finish()


def test_the_spec_states_the_small_gaps() -> None:
    text = spec()
    assert "one `SCM_RIGHTS` control message" in text
    assert "(`shutdown(SHUT_WR)`, a half-close too" in text
    assert "the port is little-endian" in text
    assert "port 8080 is `90 1f`" in text
    assert "exits with status 1 after one line on stderr that names the errno" in text
    assert "On SIGTERM or SIGINT it closes every session, removes the socket file and exits 0" in text
    # The warning's example is what the codec writes.
    frame = encode(Listen(request_id=1, endpoint=Endpoint("127.0.0.1", 8080)))
    assert frame[7:14] == bytes.fromhex("01 7f 00 00 01 90 1f")


def monitor_on(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "arca_monitor", "--socket", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], code: str) -> None:
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr  # no traceback
    assert f"({code})" in lines[0]


async def test_a_taken_socket_path_is_one_line_and_status_1(
    tmp_path: Path, socket_monitor: tuple[str, trio.Process]
) -> None:
    not_a_socket = tmp_path / "file"
    not_a_socket.write_text("")
    assert_one_error_line(await trio.to_thread.run_sync(monitor_on, not_a_socket), "EEXIST")
    assert not_a_socket.read_text() == ""  # left alone
    served, _ = socket_monitor
    assert_one_error_line(await trio.to_thread.run_sync(monitor_on, Path(served)), "EADDRINUSE")
    assert await trio.Path(served).is_socket()  # still the first monitor's


async def test_sigterm_removes_the_socket_file(socket_monitor: tuple[str, trio.Process]) -> None:
    path, process = socket_monitor
    async with arca_control.attach_session(path) as session:
        await session.listen("127.0.0.1", 0)
        process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            assert await process.wait() == 0
    assert not await trio.Path(path).exists()


# Item 13: a reused pending id gets Error EBUSY first, and the pending request's own reply after.


def test_a_reused_pending_id_gets_two_replies(guests: list[RawMonitor], tmp_path: Path) -> None:
    guest = spawn(guests, tmp_path)
    listening = expect(guest.request(Listen(request_id=2, endpoint=Endpoint("127.0.0.1", 0))), ListenOk)
    guest.send(encode(Accept(request_id=5, listener_id=listening.listener_id)))
    busy = expect(guest.request(Accept(request_id=5, listener_id=listening.listener_id)), Error, errno.EBUSY)
    assert busy.request_id == 5
    with socket.create_connection(listening.local, timeout=10):
        accepted = expect(guest.receive(), AcceptOk)
    assert accepted.request_id == 5  # the first Accept's own reply, under the same id
    # The second Accept was forgotten: a second client is not taken for it.
    with socket.create_connection(listening.local, timeout=10):
        expect(guest.request(Stats(request_id=6)), StatsOk)
    guest.finish()


def test_the_spec_states_the_ebusy_rule_and_its_consequence() -> None:
    ids = section("4.")
    assert "The consequence: that id gets two replies." in ids
    assert "a pending request's own reply is never an `Error` EBUSY" in ids

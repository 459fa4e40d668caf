"""arca-run's sandbox: its own loopback, contained processes, and every way out landing on the monitor's sockets.

Safety: nothing here can leave the machine. The sandbox's network namespace has
no interface but ``lo``; the outside addresses tests use (192.0.2.x and
2001:db8::x, documentation ranges; 127.0.0.2, the name pool) only ever land on
the sandbox's intercept listeners, DNS sockets or UDP refusal rule, which these
tests hold and answer themselves. Nothing is relayed anywhere.

Most tests run twice: as root (plain namespaces) and as ``nobody`` (through
``setpriv``), where the plain namespaces are refused and a user namespace that
maps nobody to root is the only way; ``test_the_namespaces_arca_run_chose``
checks that each mode really takes its path. The sandbox tests start the init
themselves and hold its channel with :func:`open_sandbox`, the monitor's
handle, to see what lands on its sockets (the test's own hook; the monitor
has none). The arca-run tests run the whole command.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import dns.message
import dns.rcode
import dns.rrset
import pytest
import trio

from arca_control.protocol.wire import Endpoint
from arca_monitor.audit import AuditLog
from arca_monitor.broker import Broker
from arca_monitor.config import Config
from arca_monitor.policy import Policy
from arca_monitor.resolver import Resolver
from arca_monitor.sandbox import launch, netsetup, nflog, refusals
from arca_monitor.sandbox.destination import original_destination
from arca_monitor.sandbox.handle import Sandbox, SandboxError, open_sandbox
from arca_monitor.sandbox.messages import (
    Connected,
    ConnectFailed,
    ConnectInside,
    Handoff,
    Loopback,
    Message,
    MessageError,
    Ready,
    Role,
    decode,
    encode,
)
from arca_monitor.sandbox_front import supervise

if TYPE_CHECKING:
    from tests.sandbox_modes import Mode


def init_prefix(mode: Mode) -> list[str]:
    if mode.name == "root":
        prefix = launch.isolation_prefix()
        assert prefix is not None
        assert "--user" not in prefix  # as root, the probe takes plain namespaces first
        return prefix
    unshare = shutil.which("unshare")
    assert unshare is not None
    return [*mode.as_user, unshare, *launch.USER_NAMESPACE, *launch.NAMESPACES, "--"]


class Lines:
    """A guest's standard output, line by line."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def next(self) -> str:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(4096)
            assert data, f"the guest's output ended after {self.buffer!r}"
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


@dataclass
class Guest:
    sandbox: Sandbox
    process: trio.Process
    out: Lines


@asynccontextmanager
async def sandboxed(mode: Mode, command: list[str]):
    """``command`` running in a sandbox whose channel this test holds."""
    pair = launch.Pair.open()
    argv = launch.init_command(init_prefix(mode), pair, command, mode.python)
    process = await trio.lowlevel.open_process(argv, pass_fds=pair.init_fds(), stdin=subprocess.PIPE,
                                               stdout=subprocess.PIPE, env=mode.env, cwd="/")
    pair.close_init_ends()
    launch.release(pair.status)
    assert process.stdout is not None
    try:
        with trio.fail_after(30):
            async with open_sandbox(pair.monitor_end) as sandbox, trio.open_nursery() as nursery:
                # As the monitor does: the command's filtered calls (glibc's nscd probe) wait for an answer.
                nursery.start_soon(supervise, sandbox, Broker(Config(), Policy.build({}),
                                                              Resolver(hosts_file=None, dns=False), AuditLog(None), 0))
                yield Guest(sandbox, process, Lines(process.stdout))
                nursery.cancel_scope.cancel()
    finally:
        pair.close()
        if process.returncode is None:
            process.kill()
        await process.wait()


def pending(sandbox: Sandbox) -> list[trio.socket.SocketType]:
    """The sandbox's sockets with something waiting on them (a connection, a datagram)."""
    import select

    sockets = [*sandbox.intercept, *sandbox.dns_udp, *sandbox.dns_tcp]
    readable, _, _ = select.select(sockets, [], [], 0)
    return readable


LOOPBACK = """
    import socket
    print("lo up:", int(open("/sys/class/net/lo/flags").read(), 16) & 1 == 1, flush=True)
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        server = socket.create_server((host, 0), family=family)
        client = socket.create_connection(server.getsockname()[:2], timeout=5)
        conn, _ = server.accept()
        client.sendall(b"ping")
        print(host, "tcp", conn.recv(4).decode(), flush=True)
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.bind((host, 0))
        socket.socket(family, socket.SOCK_DGRAM).sendto(b"ping", udp.getsockname())
        print(host, "udp", udp.recv(4).decode(), flush=True)
"""


async def test_the_sandboxs_loopback_is_its_own(mode):
    async with sandboxed(mode, mode.script(LOOPBACK)) as guest:
        assert [await guest.out.next() for _ in range(5)] == [
            "lo up: True", "127.0.0.1 tcp ping", "127.0.0.1 udp ping", "::1 tcp ping", "::1 udp ping",
        ]
        assert await guest.process.wait() == 0
        # The monitor saw nothing: no connection, query or refused datagram waits on any of its sockets.
        assert pending(guest.sandbox) == []
        with trio.move_on_after(0.3):
            batch = await guest.sandbox.receive_refusals()
            pytest.fail(f"loopback traffic was refused: {batch}")


OUTSIDE = """
    import selectors, socket
    for host, port in (("192.0.2.1", 80), ("2001:db8::1", 80), ("127.0.0.2", 8080)):
        sock = socket.create_connection((host, port), timeout=5)
        print(host, "peer", sock.getpeername()[1], sock.recv(100).decode(), flush=True)
        sock.close()
    sock = socket.socket()
    sock.setblocking(False)
    print("non-blocking", sock.connect_ex(("192.0.2.2", 443)), flush=True)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_WRITE)
    selector.select(5)
    print("connected", sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), flush=True)
"""


async def answer_intercepted(listener: trio.socket.SocketType, expected: Endpoint) -> None:
    conn, _ = await listener.accept()
    with conn:
        assert original_destination(conn) == expected
        await conn.send(f"intercepted {expected.host}".encode())


async def test_every_connection_out_lands_on_the_intercept_listener(mode):
    async with sandboxed(mode, mode.script(OUTSIDE)) as guest:
        intercept = guest.sandbox.intercept
        for listener, host, port in ((intercept.v4, "192.0.2.1", 80), (intercept.v6, "2001:db8::1", 80),
                                     (intercept.v4, "127.0.0.2", 8080)):  # the name pool is not the sandbox's own
            await answer_intercepted(listener, Endpoint(host, port))
            assert await guest.out.next() == f"{host} peer {port} intercepted {host}"
        assert await guest.out.next() == f"non-blocking {errno.EINPROGRESS}"
        conn, _ = await intercept.v4.accept()
        with conn:
            assert original_destination(conn) == Endpoint("192.0.2.2", 443)
            assert await guest.out.next() == "connected 0"
        assert await guest.process.wait() == 0


async def test_a_program_in_another_language_is_intercepted_too(mode):
    curl = shutil.which("curl")
    assert curl is not None, "curl is a system dependency (make system-deps)"
    command = [curl, "-sS", "--noproxy", "*", "--max-time", "10", "http://192.0.2.1:8080/hello"]
    async with sandboxed(mode, command) as guest:
        conn, _ = await guest.sandbox.intercept.v4.accept()
        with conn:
            assert original_destination(conn) == Endpoint("192.0.2.1", 8080)
            request = b""
            while b"\r\n\r\n" not in request:
                request += await conn.recv(4096)
            assert request.startswith(b"GET /hello HTTP/1.1\r\n")
            await conn.send(b"HTTP/1.0 200 OK\r\nContent-Length: 8\r\n\r\nanswered")
        assert await guest.out.stream.receive_some(100) == b"answered"
        assert await guest.process.wait() == 0


async def test_the_intercept_listeners_cannot_be_reached_directly(mode):
    """Only the redirect leads to them: a connection on a listener was always going somewhere else."""
    script = """
        import socket, sys
        ports = sys.stdin.readline().split()  # the init's choice: the test reads it off the handed sockets
        for host, port in (("127.0.0.1", ports[0]), ("::1", ports[1]), ("127.0.0.1", ports[2])):
            try:
                socket.create_connection((host, int(port)), timeout=5)
                print("connected", flush=True)
            except OSError as exc:
                print("errno", exc.errno, flush=True)
    """
    async with sandboxed(mode, mode.script(script)) as guest:
        sandbox = guest.sandbox
        ports = [sock.getsockname()[1] for sock in (*sandbox.intercept, sandbox.dns_tcp.v4)]
        assert guest.process.stdin is not None
        await guest.process.stdin.send_all(" ".join(map(str, ports)).encode() + b"\n")
        assert [await guest.out.next() for _ in range(3)] == [f"errno {errno.ECONNREFUSED}"] * 3
        assert await guest.process.wait() == 0
        assert pending(sandbox) == []


def resolv_conf_nameserver() -> str:
    """The nameserver a program in the sandbox asks (glibc's default when resolv.conf names none)."""
    try:
        with open("/etc/resolv.conf") as conf:
            for line in conf:
                fields = line.split()
                if len(fields) >= 2 and fields[0] == "nameserver":
                    return fields[1]
    except OSError:
        pass
    return "127.0.0.1"


DNS_GUEST = """
    import socket, struct, sys
    import dns.message
    query = dns.message.make_query("example.test.", "A").to_wire()
    for nameserver in sys.argv[1:]:
        family = socket.AF_INET6 if ":" in nameserver else socket.AF_INET
        udp = socket.socket(family, socket.SOCK_DGRAM)
        udp.settimeout(5)
        udp.sendto(query, (nameserver, 53))
        answer, source = udp.recvfrom(4096)
        print("udp", dns.message.from_wire(answer).answer[0].to_text(), "from", source[0], source[1], flush=True)
        tcp = socket.create_connection((nameserver, 53), timeout=5)
        tcp.sendall(struct.pack(">H", len(query)) + query)
        size = b""
        while len(size) < 2:
            size += tcp.recv(2 - len(size))
        answer = b""
        while len(answer) < struct.unpack(">H", size)[0]:
            answer += tcp.recv(4096)
        print("tcp", dns.message.from_wire(answer).answer[0].to_text(), flush=True)
"""


def dns_answer(query: bytes, address: str) -> bytes:
    message = dns.message.from_wire(query)
    assert message.question[0].to_text() == "example.test. IN A"
    answer = dns.message.make_response(message)
    answer.answer.append(dns.rrset.from_text("example.test.", 60, "IN", "A", address))
    return answer.to_wire()


async def receive_exactly(conn: trio.socket.SocketType, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await conn.recv(size - len(data))
        assert chunk, "the guest closed early"
        data += chunk
    return data


async def test_dns_queries_to_any_server_land_on_the_dns_sockets(mode):
    """resolv.conf's nameserver, and an IPv6 one (documentation range): both answered here, never upstream."""
    servers = (resolv_conf_nameserver(), "2001:db8::53")
    async with sandboxed(mode, mode.script(DNS_GUEST, *servers)) as guest:
        for index, nameserver in enumerate(servers):
            is_v6 = ":" in nameserver
            udp = guest.sandbox.dns_udp.v6 if is_v6 else guest.sandbox.dns_udp.v4
            query, peer = await udp.recvfrom(4096)
            await udp.sendto(dns_answer(query, f"192.0.2.{10 + index}"), peer)
            # The reply seems to come from the server the guest asked.
            assert await guest.out.next() == f"udp example.test. 60 IN A 192.0.2.{10 + index} from {nameserver} 53"
            listener = guest.sandbox.dns_tcp.v6 if is_v6 else guest.sandbox.dns_tcp.v4
            conn, _ = await listener.accept()
            with conn:
                assert original_destination(conn) == Endpoint(nameserver, 53)
                (size,) = struct.unpack(">H", await receive_exactly(conn, 2))
                answer = dns_answer(await receive_exactly(conn, size), f"192.0.2.{20 + index}")
                await conn.send(struct.pack(">H", len(answer)) + answer)
            assert await guest.out.next() == f"tcp example.test. 60 IN A 192.0.2.{20 + index}"
        assert await guest.process.wait() == 0


UDP_GUEST = """
    import socket, time
    for host in ("192.0.2.1", "2001:db8::1", "127.0.0.2"):
        udp = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        udp.settimeout(5)
        udp.connect((host, 9))
        start = time.monotonic()
        udp.send(b"12345")
        try:
            udp.recv(1)
            outcome = "received"
        except OSError as exc:
            outcome = f"errno {exc.errno}"
        print(host, outcome, time.monotonic() - start, flush=True)
"""


async def test_other_udp_is_refused_at_once_and_recorded(mode):
    async with sandboxed(mode, mode.script(UDP_GUEST)) as guest:
        for host in ("192.0.2.1", "2001:db8::1", "127.0.0.2"):
            shown, seconds = (await guest.out.next()).rsplit(" ", 1)
            assert shown == f"{host} errno {errno.ECONNREFUSED}"
            assert float(seconds) < 0.5  # at once: no timeout, no retry (it takes well under a millisecond)
        assert await guest.process.wait() == 0
        records: list[refusals.UdpRefusal] = []
        while len(records) < 3:
            records += (await guest.sandbox.receive_refusals()).refusals
        assert {refusal.destination for refusal in records} == {
            Endpoint("192.0.2.1", 9), Endpoint("2001:db8::1", 9), Endpoint("127.0.0.2", 9),
        }
        assert {(refusal.uid, refusal.length) for refusal in records} == {(0, 5)}  # root in the sandbox, 5 bytes
        assert pending(guest.sandbox) == []  # refused, not delivered anywhere


SERVERS = """
    import socket, sys
    v4 = socket.create_server(("127.0.0.1", 0))
    v6 = socket.create_server(("::1", 0), family=socket.AF_INET6)
    print(v4.getsockname()[1], v6.getsockname()[1], flush=True)
    for server, name in ((v4, "v4"), (v6, "v6")):
        conn, peer = server.accept()
        conn.sendall(f"hello from {name} to {peer[0]}".encode())
        conn.close()
    sys.stdin.read()
"""


async def test_connect_inside_reaches_a_server_in_the_sandbox(mode):
    async with sandboxed(mode, mode.script(SERVERS)) as guest:
        v4, v6 = map(int, (await guest.out.next()).split())
        for port, expected in ((v4, "hello from v4 to 127.0.0.1"), (v6, "hello from v6 to ::1")):
            sock = trio.socket.from_stdlib_socket(await guest.sandbox.connect_inside(port))
            with sock:
                assert (await sock.recv(100)).decode() == expected
        for port, loopback in ((v6, Loopback.V4), (v4, Loopback.V6)):
            with pytest.raises(ConnectionRefusedError):
                await guest.sandbox.connect_inside(port, loopback)
        with pytest.raises(OSError, match="not 1-65535") as invalid:
            await guest.sandbox.connect_inside(0)
        assert invalid.value.errno == errno.EINVAL
        assert guest.process.stdin is not None
        await guest.process.stdin.aclose()
        assert await guest.process.wait() == 0
        await guest.sandbox.ended.wait()
        with pytest.raises(ConnectionAbortedError, match="the sandbox has ended"):
            await guest.sandbox.connect_inside(v4)


async def arca_run(mode: Mode, *argv: str) -> subprocess.CompletedProcess[bytes]:
    """arca-run (in ``mode``) with ``argv`` (options, ``--``, command); its output captured."""
    with trio.fail_after(60):
        return await trio.run_process(mode.run(*argv), env=mode.env, cwd="/", check=False,
                                      capture_stdout=True, capture_stderr=True)


async def test_the_namespaces_arca_run_chose(mode):
    """As root: plain namespaces. As nobody: a user namespace mapping nobody to root. Either way, PID 1 is the init."""
    result = await arca_run(mode, "--", "sh", "-c", "cat /proc/self/uid_map; id -u; echo $PPID")
    uid_map, uid, parent = result.stdout.decode().splitlines()
    assert uid_map.split() == (["0", "0", "4294967295"] if mode.name == "root" else ["0", "65534", "1"])
    assert uid == "0"
    assert parent == "1"  # the command's parent is the sandbox's init, PID 1 of its own PID namespace
    assert result.returncode == 0


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                if marker.encode() in cmdline.read():
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


async def test_no_process_outlives_the_command(mode):
    marker = f"{300 + random.random():.6f}"  # sleep takes fractions: this one is ours alone
    result = await arca_run(mode, "--", "sh", "-c", f"sleep {marker} & echo started")
    assert result.stdout == b"started\n"
    assert result.returncode == 0
    assert processes_with(f"sleep\0{marker}") == []


SIGNALLED = """
    import signal, sys, time
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(43))
    print("ready", flush=True)
    time.sleep(30)
"""


async def test_exit_status_and_signals(mode):
    assert (await arca_run(mode, "--", "sh", "-c", "exit 7")).returncode == 7
    killed = await arca_run(mode, "--", *mode.script("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    assert killed.returncode == 128 + signal.SIGKILL
    for signum, status in ((signal.SIGTERM, 42), (signal.SIGINT, 43)):
        process = await trio.lowlevel.open_process(mode.run("--", *mode.script(SIGNALLED)), env=mode.env, cwd="/",
                                                   stdout=subprocess.PIPE)
        assert process.stdout is not None
        with trio.fail_after(30):
            assert await Lines(process.stdout).next() == "ready"
            process.send_signal(signum)  # to arca-run, which forwards it to the init, which forwards it on
            assert await process.wait() == status


AUDITED = """
    import socket, time
    server = socket.create_server(("127.0.0.1", 0))
    socket.create_connection(server.getsockname(), timeout=5).sendall(b"unseen")
    print("loopback", server.accept()[0].recv(6).decode(), flush=True)
    start = time.monotonic()
    try:
        socket.getaddrinfo("example.invalid", 80)
    except socket.gaierror:
        print("lookup refused", time.monotonic() - start < 3, flush=True)
    try:  # reset as soon as the monitor accepts: the connect itself may see it
        socket.create_connection(("192.0.2.1", 80), timeout=5).recv(1)
    except OSError as exc:
        print("intercepted: errno", exc.errno, flush=True)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(5)
    udp.connect(("192.0.2.1", 9))
    udp.send(b"x")
    try:
        udp.recv(1)
    except OSError as exc:
        print("udp: errno", exc.errno, flush=True)
"""


async def test_the_audit_log_shows_what_left_the_sandboxs_loopback_and_nothing_else(mode):
    """The sandbox's own loopback leaves no line; a denied name, a denied connection and refused UDP do (session 0)."""
    result = await arca_run(mode, "--audit-log", "-", "--", *mode.script(AUDITED))
    assert result.stdout.decode().splitlines() == [
        "loopback unseen", "lookup refused True", f"intercepted: errno {errno.ECONNRESET}",
        f"udp: errno {errno.ECONNREFUSED}",
    ]
    records = [json.loads(line) for line in result.stderr.decode().splitlines() if line.startswith("{")]
    assert {record["session"] for record in records} == {0}  # the sandbox's, not a guest session's
    by_event: dict[str, list[dict[str, object]]] = {}
    for record in records:
        by_event.setdefault(str(record["event"]), []).append(record)
    # Nothing from the loopback exchange. glibc's lookup first tries nscd's path socket: each try is refused
    # by the seccomp filter, and has its line (how many, glibc decides).
    assert set(by_event) - {"seccomp"} == {"intercept", "dns", "udp_refused", "summary"}
    for probe in by_event.get("seccomp", []):
        assert (probe["call"], probe["decision"], probe["errno"], probe["rule"], probe["comm"]) == (
            "socket(AF_UNIX, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC)", "denied", "EACCES", "--allow-unix-sockets",
            os.path.basename(mode.python)[:15])
    [intercepted] = by_event["intercept"]
    assert intercepted["destination"] == "192.0.2.1:80"
    assert (intercepted["decision"], intercepted["reason"]) == (
        "denied", "denied by policy: no --allow-connect rule for 192.0.2.1:80")
    assert {record["name"] for record in by_event["dns"]} == {"example.invalid"}
    # The default policy resolves from the hosts file only: not found there, so failed (NXDOMAIN), not denied.
    assert {(record["decision"], record["rcode"]) for record in by_event["dns"]} == {("failed", "NXDOMAIN")}
    [refused] = by_event["udp_refused"]
    assert (refused["destination"], refused["bytes"], refused["uid"]) == ("192.0.2.1:9", 1, 0)
    # The last line sums it up: nothing connected, and every refusal above counted (the NXDOMAIN is no denial).
    [summary] = by_event["summary"]
    assert records[-1] == summary
    assert {key: summary[key] for key in ("connections", "still_open", "denials", "bytes_up", "bytes_down")} == {
        "connections": 0, "still_open": 0, "denials": 2 + len(by_event.get("seccomp", [])),
        "bytes_up": 0, "bytes_down": 0}


def test_messages_round_trip_and_bad_frames_are_refused():
    every: list[Message] = [
        *(Handoff(role) for role in Role),
        Ready(), ConnectInside(7, 8080, Loopback.V6), Connected(7), ConnectFailed(0xFFFFFFFF, errno.ECONNREFUSED),
    ]
    for message in every:
        assert decode(encode(message)) == message
    good = encode(ConnectInside(1, 80))
    for bad in (b"", good[:4], good + b"\0", good[:-1], b"\x09" + good[1:], encode(Handoff(Role.INTERCEPT4))[:-1]
                + b"\x63", b"\x01\x01\x00\x00\x00\x01", encode(ConnectInside(1, 80))[:5] + b"\0\0\0"):
        with pytest.raises(MessageError):
            decode(bad)


def nflog_message(family: int, packet: bytes, uid: int | None = 0) -> bytes:
    """An NFLOG packet message as the kernel writes one (attributes: payload, uid)."""
    def attribute(kind: int, payload: bytes) -> bytes:
        size = 4 + len(payload)
        return struct.pack("=HH", size, kind) + payload + bytes(-size % 4)

    body = struct.pack("=BBH", family, 0, socket.htons(nflog.GROUP)) + attribute(9, packet)
    if uid is not None:
        body += attribute(11, struct.pack(">I", uid))
    return struct.pack("=IHHII", 16 + len(body), 0x0400, 0, 0, 0) + body


def test_nflog_records_are_read_and_anything_else_is_counted():
    v4 = bytes([0x45, 0, 0, 33, 0, 0, 0x40, 0, 64, 17, 0, 0]) + socket.inet_aton("192.0.2.100") \
        + socket.inet_aton("192.0.2.1") + struct.pack(">HHHH", 40000, 9, 13, 0) + b"hello"
    v6 = bytes([0x60, 0, 0, 0, 0, 13, 17, 64]) + socket.inet_pton(socket.AF_INET6, "::1") \
        + socket.inet_pton(socket.AF_INET6, "2001:db8::1") + struct.pack(">HHHH", 40001, 9, 13, 0) + b"hello"
    tcp = v4[:9] + bytes([6]) + v4[10:]
    data = nflog_message(socket.AF_INET, v4) + nflog_message(socket.AF_INET6, v6, None) \
        + nflog_message(socket.AF_INET, tcp) + nflog_message(socket.AF_INET, v4[:24])
    batch = refusals.parse(data)
    assert batch.refusals == (
        refusals.UdpRefusal(Endpoint("192.0.2.100", 40000), Endpoint("192.0.2.1", 9), 0, 5),
        refusals.UdpRefusal(Endpoint("::1", 40001), Endpoint("2001:db8::1", 9), None, 5),
    )
    assert batch.unreadable == 2
    assert refusals.parse(data[:-3]) == refusals.Batch(batch.refusals, 2)  # the TCP one, and the last cut short
    assert refusals.parse(b"\xff" * 40) == refusals.Batch((), 1)


def test_original_destination_needs_an_ip_socket():
    left, right = socket.socketpair()
    with left, right, pytest.raises(OSError, match="no original destination") as raised:
        original_destination(left)
    assert raised.value.errno == errno.EAFNOSUPPORT


def fake_handoff() -> dict[Role, socket.socket]:
    """Sockets of the right kinds, made here (bound to loopback, never used): what an init would hand over."""
    def listening(family: socket.AddressFamily, host: str) -> socket.socket:
        return socket.create_server((host, 0), family=family)

    def udp(family: socket.AddressFamily, host: str) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.bind((host, 0))
        return sock

    def doorbell() -> socket.socket:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        theirs.close()
        return ours

    v4, v6 = socket.AF_INET, socket.AF_INET6
    return {
        Role.INTERCEPT4: listening(v4, "127.0.0.1"), Role.INTERCEPT6: listening(v6, "::1"),
        Role.DNS_UDP4: udp(v4, "127.0.0.1"), Role.DNS_TCP4: listening(v4, "127.0.0.1"),
        Role.DNS_UDP6: udp(v6, "::1"), Role.DNS_TCP6: listening(v6, "::1"),
        Role.UDP_REFUSALS: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, nflog.NETLINK_NETFILTER),
        Role.DOORBELL: doorbell(),
    }


def hand(init_end: socket.socket, handed: dict[Role, socket.socket]) -> None:
    for role, sock in handed.items():
        socket.send_fds(init_end, [encode(Handoff(role))], [sock.fileno()])
        sock.close()


async def test_a_bad_handoff_is_refused():
    reasons = {
        "wrong kind": "the INTERCEPT4 socket must be AF_INET SOCK_STREAM, listening",
        "not a socket": "the DNS_TCP6 descriptor is not a socket", "missing": "no socket for DNS_TCP6",
        "ends early": "ended before handing over", "garbage": "unknown message kind 99",
    }
    for mistake, reason in reasons.items():
        monitor_end, init_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        handed = fake_handoff()
        if mistake == "wrong kind":
            handed[Role.INTERCEPT4], handed[Role.DNS_UDP4] = handed[Role.DNS_UDP4], handed[Role.INTERCEPT4]
        if mistake in ("missing", "not a socket"):
            handed.pop(Role.DNS_TCP6).close()
        hand(init_end, handed)
        if mistake == "not a socket":
            read_end, write_end = os.pipe()
            socket.send_fds(init_end, [encode(Handoff(Role.DNS_TCP6))], [read_end])
            os.close(read_end)
            os.close(write_end)
        if mistake == "garbage":
            init_end.send(b"\x63garbage")
        if mistake != "ends early":
            init_end.send(encode(Ready()))
        init_end.close()
        with pytest.raises(SandboxError, match=reason):
            async with open_sandbox(monitor_end):
                pytest.fail("a bad handoff gave a sandbox")


async def test_the_handle_drops_bad_replies_and_fails_what_is_pending():
    monitor_end, init_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    hand(init_end, fake_handoff())
    init_end.send(encode(Ready()))
    fake_init = trio.socket.from_stdlib_socket(init_end)
    errnos_in, errnos = trio.open_memory_channel[int](2)
    with trio.fail_after(10):
        async with open_sandbox(monitor_end) as sandbox, trio.open_nursery() as nursery:

            async def connect(port: int) -> None:
                with pytest.raises(OSError, match=f"connect to port {port} in the sandbox") as failed:
                    await sandbox.connect_inside(port)
                await errnos_in.send(failed.value.errno or 0)

            nursery.start_soon(connect, 1111)
            request = decode(await fake_init.recv(64))
            assert isinstance(request, ConnectInside)
            assert (request.port, request.loopback) == (1111, Loopback.EITHER)
            await fake_init.send(b"\x63 not a message")  # dropped, logged
            await fake_init.send(encode(ConnectFailed(request.request_id + 1, errno.EIO)))  # answers nothing
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            await fake_init.sendmsg([encode(Connected(request.request_id))],
                                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", udp.fileno()))])
            udp.close()
            assert await errnos.receive() == errno.EPROTO  # a "connected" socket that is not TCP is refused
            nursery.start_soon(connect, 1112)
            request = decode(await fake_init.recv(64))
            assert isinstance(request, ConnectInside)
            read_end, write_end = os.pipe()
            await fake_init.sendmsg([encode(Connected(request.request_id))],
                                    [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", read_end))])
            os.close(read_end)
            os.close(write_end)
            assert await errnos.receive() == errno.EPROTO  # and so is no socket at all
            nursery.start_soon(connect, 2222)
            assert isinstance(decode(await fake_init.recv(64)), ConnectInside)
            fake_init.close()  # the init goes: what is pending fails
            await sandbox.ended.wait()
            assert await errnos.receive() == errno.ECONNABORTED


def test_the_ruleset_logs_to_the_group_the_monitor_reads():
    with open(netsetup.RULESET) as ruleset:
        assert f"log group {nflog.GROUP}\n" in ruleset.read()


def test_the_init_needs_only_the_standard_library():
    """PID 1 starts before every command: it imports nothing of arca_control, trio, construct or dnspython."""
    probe = ("import sys, arca_monitor.sandbox.init; print(sorted({name.split('.')[0] for name in sys.modules}"
             " & {'arca_control', 'trio', 'construct', 'dns'}))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60)
    assert result.stdout.strip() == "[]"

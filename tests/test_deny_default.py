"""arca-run's deny-all default, and the rule each refusal names (issue 16, items 1 and 5).

With no rule, arca-run allows nothing outside the sandbox: the host's
loopback is refused both to an unmodified program (curl, intercepted) and
to a guest's own ``open_session()``, each refusal one audit line naming the
rule that would allow it; run again with exactly those rules, both get
through. A bare monitor and ``open_session()`` outside arca-run keep the
loopback default (tests/test_policy.py and the session tests cover it).

Safety: the only destination is a server on the host's 127.0.0.1; the
monitor has DNS off and an empty hosts file.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
from typing import TYPE_CHECKING

import pytest

from arca_control.protocol.wire import Endpoint
from arca_monitor import run
from arca_monitor.policy import Default, Denied, Kind, Policy
from arca_monitor.resolver import Names

if TYPE_CHECKING:
    from collections.abc import Iterator

HOST = "host.arca.internal"

#: Inside the sandbox: curl to the host's server by host.arca.internal, then the same server through
#: open_session(), a listener on the host through it, and the sandbox's own loopback; one line each.
GUEST = textwrap.dedent(
    """
    import socket, subprocess, sys, time, trio, arca_control
    curl, port = sys.argv[1], int(sys.argv[2])
    start = time.monotonic()
    done = subprocess.run([curl, "-sS", "--noproxy", "*", "--max-time", "20", f"http://host.arca.internal:{port}/"],
                          capture_output=True, text=True)
    print("curl", done.returncode, repr(done.stdout), time.monotonic() - start < 1.0, flush=True)
    async def main():
        async with arca_control.open_session() as session:
            try:
                stream = await session.connect("127.0.0.1", port)
            except PermissionError as exc:
                print("session connect", exc.errno)
            else:
                await stream.send_all(b"GET / HTTP/1.0\\r\\n\\r\\n")
                print("session connect", repr((await stream.receive_some(4096)).split(b"\\r\\n")[-1]))
            print("denials", (await session.stats())["denials"])
    trio.run(main)
    inside = socket.create_server(("127.0.0.1", 0))
    with socket.create_connection(inside.getsockname(), timeout=5) as client, inside.accept()[0] as peer:
        client.sendall(b"own")
        print("own loopback", peer.recv(3).decode())
    """
)


@pytest.fixture
def host_server() -> Iterator[tuple[int, list[int]]]:
    """A one-line HTTP server on the host's 127.0.0.1: its port, and a list that counts what it accepted."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(1)
            with conn:
                conn.recv(4096)
                conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], accepted
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(5)


def arca_run(*options: str, port: int) -> tuple[list[str], list[dict[str, object]]]:
    """The guest under arca-run with ``options``: its output lines and the audit log."""
    curl = shutil.which("curl")
    assert curl is not None, "curl is a system dependency (make system-deps)"
    command = [sys.executable, "-m", "arca_monitor.run", "--no-dns", "--hosts-file", os.devnull, "--audit-log", "-",
               *options, "--", sys.executable, "-c", GUEST, curl, str(port)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr
    audit = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    return result.stdout.splitlines(), audit


def refusals(audit: list[dict[str, object]]) -> list[dict[str, object]]:
    """The denied lines, but for the seccomp filter's refusals of glibc's nscd probe (see nscd_probes)."""
    return [record for record in audit if record.get("decision") == "denied" and record["event"] != "seccomp"]


def nscd_probes(audit: list[dict[str, object]]) -> list[dict[str, object]]:
    """curl's lookups first try nscd's path socket (how often, glibc decides): the seccomp filter refuses each."""
    probes = [record for record in audit if record["event"] == "seccomp"]
    for probe in probes:
        assert (probe["call"], probe["decision"], probe["errno"], probe["rule"], probe["comm"]) == (
            "socket(AF_UNIX, SOCK_STREAM|SOCK_NONBLOCK|SOCK_CLOEXEC)", "denied", "EACCES", "--allow-unix-sockets",
            "curl"), probe
    return probes


def test_arca_run_with_no_rule_allows_nothing_outside_and_each_refusal_names_its_rule(
    host_server: tuple[int, list[int]],
) -> None:
    port, accepted = host_server
    lines, audit = arca_run(port=port)
    curl, session, denials, own = lines
    status, body, fast = curl.split()[1:]
    assert status in ("7", "56")
    assert body == "''"
    assert fast == "True"  # reset at once: never a timeout
    assert session == "session connect 13"  # EACCES: PermissionError
    assert denials == "denials 1"  # Stats counts the refusal
    assert own == "own loopback own"  # the sandbox's own loopback works as ever
    assert accepted == []  # nothing reached the host's server
    # One audit line per refused attempt, each naming what was tried and the rule that would allow it.
    intercepted, requested = refusals(audit)
    assert nscd_probes(audit)  # curl's lookup of host.arca.internal: at least one
    assert (intercepted["event"], intercepted["session"], intercepted["name"]) == ("intercept", 0, HOST)
    assert intercepted["rule"] == f"--allow-connect {HOST}:{port}"
    assert f"no --allow-connect rule for {HOST}:{port}" in str(intercepted["reason"])
    assert (requested["event"], requested["op"], requested["endpoint"]) == ("request", "Connect", f"127.0.0.1:{port}")
    assert requested["rule"] == f"--allow-connect 127.0.0.1:{port}"
    assert [r for r in audit if r["event"] == "open"] == []

    # The rules the refusals named, given: both get through, and nothing is refused.
    rules = [part for record in (intercepted, requested) for part in str(record["rule"]).split(" ", 1)]
    lines, audit = arca_run(*rules, port=port)
    assert lines[0].split()[1:3] == ["0", "'hello'"]
    assert lines[1:] == ["session connect b'hello'", "denials 0", "own loopback own"]
    assert len(accepted) == 2
    assert refusals(audit) == []
    # The sandbox's summary (session 0: curl's connection; the guest session is its own): one connection, every
    # byte of it, and no denial but glibc's nscd probes.
    [summary] = [r for r in audit if r["event"] == "summary"]
    [closed] = [r for r in audit if r["event"] == "close" and r["session"] == 0]
    assert summary["session"] == 0
    assert (summary["connections"], summary["still_open"]) == (1, 0)
    assert (summary["bytes_up"], summary["bytes_down"]) == (closed["bytes_up"], closed["bytes_down"])
    assert summary["bytes_down"] == len(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert summary["denials"] == len(nscd_probes(audit))
    assert nscd_probes(audit)  # (the filter's refusals stay: no rule but --allow-unix-sockets lifts them)


def test_arca_run_starts_its_monitor_with_the_deny_all_default_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []

    def popen(argv: list[str], **_: object) -> None:
        started.append(argv)

    monkeypatch.setattr(subprocess, "Popen", popen)
    a, b = socket.socketpair()
    with a, b:
        run.start_monitor("/nowhere", ["--allow-connect", "127.0.0.1:80"], a)
        run.start_monitor("/nowhere", ["--default-policy=loopback"], a)
    assert started[0][-4:] == ["--default-policy", "none", "--allow-connect", "127.0.0.1:80"]
    assert "none" not in started[1]
    assert started[1][-1] == "--default-policy=loopback"


def test_help_states_both_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert run.main(["--help", "--", "true"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "With no rule at all, arca-run allows nothing outside the sandbox" in text
    assert "A bare arca-monitor and open_session() default instead to loopback" in text
    from arca_monitor.cli import parser

    monitor = " ".join(parser().format_help().split())
    assert "loopback (a bare arca-monitor's and open_session()'s" in monitor
    assert "none (arca-run's: nothing outside the sandbox" in monitor


def _no_names(_: Endpoint) -> Names:
    return Names([])


def test_the_none_default_denies_everything_and_resolves_from_the_hosts_file_only() -> None:
    none = Policy.build({}, Default.NONE)
    assert none.default
    assert not none.dns_allowed
    none.check_resolve("anything.example.test")  # allowed: the resolver has DNS off, the hosts file answers
    with pytest.raises(Denied):
        none.check_connect(Endpoint("127.0.0.1", 8000), _no_names)
    with pytest.raises(Denied):
        none.check_bind(Kind.LISTEN, Endpoint("127.0.0.1", 8000))
    with pytest.raises(Denied):
        none.check_bind(Kind.UDP, Endpoint("0.0.0.0", 5353))
    loopback = Policy.build({})  # a bare monitor's and open_session()'s
    loopback.check_connect(Endpoint("127.0.0.1", 8000), _no_names)
    loopback.check_bind(Kind.LISTEN, Endpoint("127.0.0.1", 8000))


@pytest.mark.parametrize(("kind", "attempt"), [
    (Kind.CONNECT, Endpoint("192.0.2.1", 80)),
    (Kind.CONNECT, Endpoint("::1", 22)),
    (Kind.LISTEN, Endpoint("0.0.0.0", 443)),
    (Kind.UDP, Endpoint("::", 5353)),
    (Kind.RESOLVE, "api.example.test"),
    (Kind.UNIX, "/run/app/socket"),
])
def test_each_denial_names_a_rule_that_allows_exactly_it(kind: Kind, attempt: Endpoint | str) -> None:
    def check(policy: Policy) -> None:
        if isinstance(attempt, str):
            if kind is Kind.RESOLVE:
                policy.check_resolve(attempt)
            else:
                policy.check_unix(attempt)
        elif kind is Kind.CONNECT:
            policy.check_connect(attempt, _no_names)
        else:
            policy.check_bind(kind, attempt)

    strict = Policy.build({Kind.PEER: ["127.0.0.1/32"]})  # some rule: no default at all
    with pytest.raises(Denied) as denied:
        check(strict)
    option, text = denied.value.rule.split(" ", 1)
    assert option == f"--allow-{kind.value}"
    check(Policy.build({kind: [text]}))  # the rule named allows it


def test_a_name_denial_names_the_name_and_port() -> None:
    policy = Policy.build({Kind.CONNECT: ["other.example.test:443"]})
    with pytest.raises(Denied) as denied:
        policy.addresses_for("api.example.test", 8443, ["127.0.0.1"], lambda _: Names(["api.example.test"]))
    assert denied.value.rule == "--allow-connect api.example.test:8443"

"""The policy: every rule kind allowed and denied with real sockets, and the default."""

from __future__ import annotations

import os
import re
import socket
import sys

import pytest
import trio

import arca_control
from arca_control.protocol.wire import Endpoint
from arca_monitor.policy import AnswerRefused, Kind, Policy, parse_rule
from arca_monitor.resolver import Names

from .conftest import LOOPBACK_RULES, blocking_client
from .dns_server import dns_server
from .netns import run_in_netns
from .test_monitor import NETNS


def test_rule_syntax():
    rule = parse_rule(Kind.CONNECT, "[2001:db8::]/32:443")
    assert str(rule.network) == "2001:db8::/32"
    assert (rule.ports.low, rule.ports.high) == (443, 443)
    rule = parse_rule(Kind.LISTEN, "10.0.0.0/8:8000-8100")
    assert str(rule.network) == "10.0.0.0/8"
    assert (rule.ports.low, rule.ports.high) == (8000, 8100)
    assert (parse_rule(Kind.LISTEN, "127.0.0.1:*").ports.low, parse_rule(Kind.LISTEN, "127.0.0.1").ports.low) == (1024, 1024)
    wildcard = parse_rule(Kind.CONNECT, "*.example.test:443")
    assert wildcard.matches_name("api.example.test")
    assert not wildcard.matches_name("example.test")
    for bad, why in (
        ("10.0.0.0/99:1", "bad address in rule"),
        ("host:0", "bad port range"),
        ("host:9-1", "bad port range"),
        ("bad name:1", "bad name pattern"),
        ("[::1:80", "substring not found"),  # the parser's own str.index, unworded
    ):
        with pytest.raises(ValueError, match=why):
            parse_rule(Kind.CONNECT, bad)
    with pytest.raises(ValueError, match="absolute directory"):
        parse_rule(Kind.UNIX, "relative/dir")


def test_rules_from_toml(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('connect = ["api.example.test:443"]\nallow-listen = ["127.0.0.1:8000"]\n')
    given = Policy.from_toml(str(path), {Kind.CONNECT: ["10.0.0.1:22"]})
    policy = Policy.build(given)
    assert not policy.default
    assert [r.text for r in policy.rules[Kind.CONNECT]] == ["10.0.0.1:22", "api.example.test:443"]
    path.write_text('sideways = ["x"]\n')
    with pytest.raises(ValueError, match="unknown rule kind 'sideways'"):
        Policy.from_toml(str(path), {})


async def test_default_policy_allows_loopback_and_refuses_the_rest():
    async with arca_control.open_session(command=NETNS) as session:  # no packet can leave anyway
        listener = await session.listen("127.0.0.1", 0)
        await (await session.connect(*listener.local)).aclose()
        with pytest.raises(PermissionError) as caught:
            await session.connect("192.0.2.1", 443)
        assert "--allow-connect" in str(caught.value)  # not "refused", not "unreachable"
        with pytest.raises(PermissionError) as caught:
            await session.listen("127.0.0.1", 80)  # privileged: no default rule names it
        assert "--allow-listen" in str(caught.value)
        await session.listen("0.0.0.0", 0)  # the wildcards are in the default
        await session.udp_bind("::", 0)


async def test_rules_replace_the_default_and_privileged_ports_must_be_named():
    async with arca_control.open_session("--allow-listen", "127.0.0.1:*", "--allow-listen", "127.0.0.1:81") as session:
        await session.listen("127.0.0.1", 0)
        await session.listen("127.0.0.1", 81)  # named: allowed (the monitor runs as root here)
        with pytest.raises(PermissionError):
            await session.listen("127.0.0.1", 80)  # "*" does not cover it
        with pytest.raises(PermissionError):
            await session.listen("::1", 0)  # not in the rules any more
        with pytest.raises(PermissionError) as caught:
            await session.connect("127.0.0.1", 81)  # no connect rule at all now
        assert "--allow-connect" in str(caught.value)
        with pytest.raises(PermissionError) as caught:
            await session.udp_bind("127.0.0.1", 0)
        assert "--allow-udp" in str(caught.value)


async def test_port_zero_is_checked_against_the_port_the_kernel_chose():
    async with arca_control.open_session("--allow-listen", "127.0.0.1:1024-1030") as session:
        # The kernel picks an ephemeral port (32768 and up here): outside the rule, so the
        # socket is closed again and the request denied.
        with pytest.raises(PermissionError):
            await session.listen("127.0.0.1", 0)
        assert not session.listeners


def test_name_rules_follow_what_the_monitor_resolved(tmp_path):
    # DNS answers in loopback or private ranges do not satisfy a name rule (rebinding, see
    # test_rebinding.py), so the name's addresses are documentation addresses (TEST-NET-1), put on
    # lo in an empty namespace: nothing can leave it.
    run_in_netns(_name_rules_follow_what_the_monitor_resolved, tmp_path, "192.0.2.2/32", "192.0.2.3/32")


async def _name_rules_follow_what_the_monitor_resolved(tmp):
    zone = {"db.internal": [("A", "192.0.2.2", 1)]}
    async with dns_server(zone) as (_, dns_port, server):
        hosts = os.path.join(tmp, "hosts")
        await trio.Path(hosts).write_text("")
        args = ("--resolver", f"127.0.0.1:{dns_port}", "--hosts-file", hosts,
                "--allow-listen", "192.0.2.0/24:*", "--allow-connect", "db.internal:*")
        async with arca_control.open_session(*args) as session:
            first = await session.listen("192.0.2.2", 0)
            port = first.local.port
            second = await session.listen("192.0.2.3", port)
            # An IP literal does not get past a name rule...
            with pytest.raises(PermissionError):
                await session.connect("192.0.2.2", port)
            # ...the name does, to the address the monitor resolved for it,
            stream = await session.connect("db.internal", port)
            assert stream.peer == Endpoint("192.0.2.2", port)
            await stream.aclose()
            # and for as long as that answer is fresh, the address itself does too.
            await (await session.connect("192.0.2.2", port)).aclose()
            # The name moves; once the old answer's TTL is over, only the new address passes.
            server.zone["db.internal"] = [("A", "192.0.2.3", 60)]
            await trio.sleep(1.2)
            with pytest.raises(PermissionError):
                await session.connect("192.0.2.2", port)
            stream = await session.connect("db.internal", port)
            assert stream.peer == Endpoint("192.0.2.3", port)
            await stream.aclose()
            # Resolving a name no rule names is denied.
            with pytest.raises(PermissionError):
                await session.resolve("other.internal")
            await first.aclose()
            await second.aclose()


def test_a_connect_made_for_a_name_is_decided_by_that_names_rules():
    policy = Policy.build({Kind.CONNECT: ["api.example.test:443", "*.cdn.example.test:443"]})
    address = Endpoint("192.0.2.1", 443)

    def nothing_answered(endpoint: Endpoint) -> Names:
        assert endpoint == address
        return Names()

    def answered_for_api(endpoint: Endpoint) -> Names:
        return Names(dns_answers=["api.example.test"])

    # A front end that resolved the name itself says which name it was: that name's rules decide.
    policy.check_connect(address, nothing_answered, name="api.example.test")
    policy.check_connect(address, nothing_answered, name="Img.CDN.example.test.")
    with pytest.raises(PermissionError, match=re.escape("192.0.2.1:443")):  # another name's rule is no help
        policy.check_connect(address, answered_for_api, name="other.example.test")
    with pytest.raises(PermissionError, match=re.escape("192.0.2.1:444")):
        policy.check_connect(Endpoint("192.0.2.1", 444), nothing_answered, name="api.example.test")
    with pytest.raises(AnswerRefused):  # and a DNS answer still leads no name rule to loopback
        policy.check_connect(Endpoint("127.0.0.1", 443), lambda endpoint: Names(), name="api.example.test")
    # A Connect that names only the address: the names the monitor answered with it decide.
    with pytest.raises(PermissionError, match=re.escape("192.0.2.1:443")):
        policy.check_connect(address, nothing_answered)
    policy.check_connect(address, answered_for_api)


async def test_peer_rules_filter_accepted_connections():
    async with arca_control.open_session("--allow-peer", "127.0.0.2/32", *LOOPBACK_RULES) as session:
        listener = await session.listen("127.0.0.1", 0)
        stranger = await trio.to_thread.run_sync(blocking_client, listener.local)
        friend = socket.socket()
        friend.bind(("127.0.0.2", 0))
        await trio.to_thread.run_sync(friend.connect, listener.local)
        with stranger, friend:
            stream = await listener.accept()
            assert stream.peer == Endpoint(*friend.getsockname())  # the stranger never reached the guest
            stranger.settimeout(5)
            with pytest.raises(ConnectionResetError):
                stranger.recv(10)  # closed at once
            await stream.aclose()


async def test_denials_do_not_end_the_session():
    async with arca_control.open_session(command=NETNS) as session:
        for _ in range(20):
            with pytest.raises(PermissionError):
                await session.connect("198.51.100.1", 8080)
        assert (await session.listen("127.0.0.1", 0)).local.port
        assert session.process is not None
        assert session.process.returncode is None


def test_bad_rules_are_a_usage_error():
    import subprocess

    result = subprocess.run([sys.executable, "-m", "arca_monitor", "--fd", "0", "--allow-connect", "10.0.0.0/99"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 2
    assert "bad" in result.stderr


async def test_what_cannot_be_done_at_all_is_refused_before_the_policy():
    import errno

    from arca_control.protocol.messages import Connect, Listen
    from arca_control.protocol.wire import ListenFlags

    async with arca_control.open_session("--allow-listen", "[::1]:*") as session:  # no IPv4 rule, no unix rule
        with pytest.raises(OSError, match="V6ONLY") as caught:  # on an IPv4 listener: EINVAL, whatever the rules
            await session.request(Listen(endpoint=Endpoint("127.0.0.1", 0), flags=ListenFlags.V6ONLY))
        assert caught.value.errno == errno.EINVAL
        for request in (Listen, Connect):  # an unnamed AF_UNIX address can be neither bound nor connected to
            with pytest.raises(OSError, match="unnamed AF_UNIX") as caught:
                await session.request(request(endpoint=Endpoint("", 0)))
            assert caught.value.errno == errno.EINVAL
        with pytest.raises(PermissionError):  # what can be done is still the policy's to deny
            await session.listen("127.0.0.1", 0)
        assert (await session.stats())["denials"] == 1

"""DNS rebinding: a DNS answer never lets a name rule reach loopback, private, link-local or ULA addresses.

The policy is checked on its own first, with a real Resolver asking the test
DNS server on loopback (nothing connects anywhere); then end to end, with
the monitor inside an empty network namespace where the refused addresses
are put on lo and a listener waits on them, so that a connect the monitor
let through would succeed, and the test can see that none was made.
"""

from __future__ import annotations

import errno
import json
import os
import socket

import pytest
import trio

import arca_control
from arca_control.protocol.wire import Endpoint
from arca_monitor.name_pool import HOST_NAME
from arca_monitor.policy import AnswerRefused, Denied, Kind, Policy
from arca_monitor.rebinding import rebinding_reason
from arca_monitor.resolver import Names, Resolver

from .dns_server import dns_server
from .netns import run_in_netns

#: Names the test DNS server answers with addresses DNS must not lead a name rule to, and why.
REBOUND = {
    "loop.example.test": ("A", "127.0.0.1", "a loopback address"),
    "private.example.test": ("A", "10.0.0.1", "a private address (RFC 1918)"),
    "metadata.example.test": ("A", "169.254.169.254", "the cloud metadata address"),
    "mapped.example.test": ("AAAA", "::ffff:10.0.0.1", "the IPv4-mapped form of 10.0.0.1, a private address (RFC 1918)"),
    "ula.example.test": ("AAAA", "fd00::1", "a unique local address (ULA, RFC 4193)"),
}
ZONE = {
    **{name: [(rdtype, address, 300)] for name, (rdtype, address, _) in REBOUND.items()},
    "public.example.test": [("A", "192.0.2.1", 300)],
    "mixed.example.test": [("A", "10.0.0.1", 300), ("A", "192.0.2.1", 300)],
    "cdn-a.example.test": [("A", "192.0.2.7", 300)],
    "cdn-b.example.test": [("A", "192.0.2.7", 300)],
}


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.255.0.9", "a loopback address"),
        ("::1", "a loopback address"),
        ("10.0.0.1", "a private address (RFC 1918)"),
        ("172.16.5.4", "a private address (RFC 1918)"),
        ("172.31.255.255", "a private address (RFC 1918)"),
        ("192.168.1.1", "a private address (RFC 1918)"),
        ("100.64.0.1", "a shared address (CGNAT, RFC 6598)"),
        ("100.127.255.254", "a shared address (CGNAT, RFC 6598)"),
        ("169.254.169.254", "the cloud metadata address"),
        ("fd00:ec2::254", "the cloud metadata address"),
        ("169.254.1.1", "a link-local address"),
        ("fe80::1%1", "a link-local address"),
        ("fd00::1", "a unique local address (ULA, RFC 4193)"),
        ("fc00::1", "a unique local address (ULA, RFC 4193)"),
        ("0.0.0.0", "a 'this host' address (0.0.0.0/8, which reaches the host itself)"),
        ("::", "the unspecified address (which reaches the host itself)"),
        ("::ffff:10.0.0.1", "the IPv4-mapped form of 10.0.0.1, a private address (RFC 1918)"),
        ("::ffff:127.0.0.1", "the IPv4-mapped form of 127.0.0.1, a loopback address"),
        ("::ffff:169.254.169.254", "the IPv4-mapped form of 169.254.169.254, the cloud metadata address"),
        ("64:ff9b::a00:1", "the NAT64 form of 10.0.0.1, a private address (RFC 1918)"),
    ],
)
def test_special_addresses_and_why(address, why):
    assert rebinding_reason(address) == why


@pytest.mark.parametrize(
    "address", ["192.0.2.1", "8.8.8.8", "172.32.0.1", "100.128.0.1", "169.255.0.1", "2001:db8::1", "::ffff:192.0.2.1",
                "64:ff9b::c000:201", "fe00::1"],
)
def test_ordinary_addresses_pass(address):
    assert rebinding_reason(address) is None


def _hosts_file(tmp_path, text: str = "") -> str:
    path = tmp_path / "hosts"
    path.write_text(text)
    return str(path)


async def test_a_dns_answer_in_a_special_range_does_not_satisfy_a_name_rule(tmp_path):
    policy = Policy.build({Kind.CONNECT: ["*.example.test:443"]})
    async with dns_server(ZONE) as (host, port, _):
        resolver = Resolver(hosts_file=_hosts_file(tmp_path), nameserver=(host, port))
        for name, (rdtype, address, why) in REBOUND.items():
            family = socket.AF_INET if rdtype == "A" else socket.AF_INET6
            [(_, _, endpoint)] = await resolver.resolve(name, 443, family=family, type=socket.SOCK_STREAM)
            with pytest.raises(AnswerRefused) as caught:
                policy.check_connect(endpoint, lambda a: resolver.names_for(a, fresh=True))
            refusal = caught.value
            assert refusal.errno == errno.EACCES
            assert isinstance(refusal, Denied)
            assert (refusal.address, refusal.name, refusal.why) == (address, name, why)
            shown = f"[{address}]" if ":" in address else address
            assert refusal.strerror == (
                f"denied by policy: {address} is {why} that DNS gave for {name}; a name rule does not reach it"
                f" (allow it with --allow-connect {shown}:443)"
            )
        # The same rule still reaches an ordinary address DNS gave.
        [(_, _, endpoint)] = await resolver.resolve("public.example.test", 443, family=socket.AF_INET, type=socket.SOCK_STREAM)
        policy.check_connect(endpoint, lambda a: resolver.names_for(a, fresh=True))


def test_a_refusal_always_fits_the_wire_and_keeps_the_rule():
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 56, "test"])
    address = "::ffff:169.254.169.254"
    refusal = AnswerRefused(address, name, 65535, rebinding_reason(address) or "")
    text = refusal.strerror or ""
    assert len(text.encode()) <= 255
    assert text.startswith(f"denied by policy: {address} is the IPv4-mapped form of 169.254.169.254, the cloud"
                           f" metadata address that DNS gave for aaaa")
    assert text.endswith("...; a name rule does not reach it (allow it with --allow-connect [::ffff:169.254.169.254]:65535)")
    assert refusal.name == name  # the whole name stays on the exception
    short = AnswerRefused("10.0.0.1", "api.example.test", None, "a private address (RFC 1918)")
    assert str(short.strerror).endswith("(allow it with --allow-connect 10.0.0.1)")


async def test_a_cidr_rule_naming_the_range_allows_it(tmp_path):
    policy = Policy.build({Kind.CONNECT: ["*.example.test:443", "10.0.0.0/8:443"]})
    async with dns_server(ZONE) as (host, port, _):
        resolver = Resolver(hosts_file=_hosts_file(tmp_path), nameserver=(host, port))
        await resolver.resolve("private.example.test", 443, family=socket.AF_INET)
        await resolver.resolve("metadata.example.test", 443, family=socket.AF_INET)
        policy.check_connect(Endpoint("10.0.0.1", 443), lambda a: resolver.names_for(a, fresh=True))
        with pytest.raises(AnswerRefused):  # the rule names 10/8, not the metadata address
            policy.check_connect(Endpoint("169.254.169.254", 443), lambda a: resolver.names_for(a, fresh=True))
        with pytest.raises(Denied) as caught:  # another port: the CIDR rule does not cover it, the name rule is refused
            policy.check_connect(Endpoint("10.0.0.1", 444), lambda a: resolver.names_for(a, fresh=True))
        assert "--allow-connect" in str(caught.value)


async def test_a_hosts_file_answer_still_satisfies_a_name_rule(tmp_path):
    policy = Policy.build({Kind.CONNECT: ["db.example.test:5432"]})
    async with dns_server(ZONE) as (host, port, server):
        resolver = Resolver(hosts_file=_hosts_file(tmp_path, "127.0.0.1 db.example.test\n"), nameserver=(host, port))
        [(_, _, endpoint)] = await resolver.resolve("db.example.test", 5432, family=socket.AF_INET, type=socket.SOCK_STREAM)
        assert endpoint.host == "127.0.0.1"
        assert server.count() == 0
        policy.check_connect(Endpoint("127.0.0.1", 5432), lambda a: resolver.names_for(a, fresh=True))
        assert policy.addresses_for("db.example.test", 5432, ["127.0.0.1"], resolver.names_for) == ["127.0.0.1"]
        # DNS answering another allowed name with that address changes nothing: a guest's Connect
        # names only the address, which the hosts file lets the rule reach; a connection made for
        # the DNS name (the intercept path) is refused.
        policy = Policy.build({Kind.CONNECT: ["*.example.test:5432"]})
        await resolver.resolve("loop.example.test", 5432, family=socket.AF_INET)
        policy.check_connect(Endpoint("127.0.0.1", 5432), lambda a: resolver.names_for(a, fresh=True))
        with pytest.raises(AnswerRefused):
            policy.addresses_for("loop.example.test", 5432, ["127.0.0.1"], resolver.names_for)


async def test_addresses_for_a_name_keep_the_usable_ones_and_only_that_names_rules(tmp_path):
    policy = Policy.build({Kind.CONNECT: ["mixed.example.test:443", "cdn-a.example.test:443", "private.example.test:443"]})
    async with dns_server(ZONE) as (host, port, _):
        resolver = Resolver(hosts_file=_hosts_file(tmp_path), nameserver=(host, port))

        async def hosts_of(name: str) -> list[str]:
            return [endpoint.host for _, _, endpoint in await resolver.resolve(name, 443, type=socket.SOCK_STREAM)]

        mixed = await hosts_of("mixed.example.test")
        assert mixed == ["10.0.0.1", "192.0.2.1"]
        assert policy.addresses_for("mixed.example.test", 443, mixed, resolver.names_for) == ["192.0.2.1"]
        assert policy.addresses_for("mixed.example.test", None, mixed, resolver.names_for) == ["192.0.2.1"]
        with pytest.raises(Denied) as caught:  # no rule for port 80
            policy.addresses_for("mixed.example.test", 80, mixed, resolver.names_for)
        assert not isinstance(caught.value, AnswerRefused)
        with pytest.raises(AnswerRefused) as refused:
            policy.addresses_for("private.example.test", 443, await hosts_of("private.example.test"), resolver.names_for)
        assert (refused.value.address, refused.value.name) == ("10.0.0.1", "private.example.test")
        # Two names on one CDN address: the guest path allows the address by either name the monitor
        # resolved to it, but a connection made for cdn-b (its pool address says so) gets cdn-b's rules only.
        assert await hosts_of("cdn-a.example.test") == await hosts_of("cdn-b.example.test") == ["192.0.2.7"]
        policy.check_connect(Endpoint("192.0.2.7", 443), lambda a: resolver.names_for(a, fresh=True))
        assert policy.addresses_for("cdn-a.example.test", 443, ["192.0.2.7"], resolver.names_for) == ["192.0.2.7"]
        with pytest.raises(Denied) as caught:
            policy.addresses_for("CDN-B.example.test.", 443, ["192.0.2.7"], resolver.names_for)
        assert "no --allow-connect rule for cdn-b.example.test:443 (192.0.2.7)" in str(caught.value)
        with pytest.raises(Denied):
            policy.addresses_for("public.example.test", 443, [], resolver.names_for)


def test_the_monitor_refuses_rebound_answers_before_connecting(tmp_path):
    run_in_netns(_refuses_rebound_answers, tmp_path, "10.0.0.1/32", "169.254.169.254/32", "fd00::1/128")


async def _refuses_rebound_answers(tmp):
    # One dual-stack listener on every address of the namespace, outside the session: any connect
    # the monitor made to a refused address would land here.
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        listener.bind(("::", 0))
        listener.listen(16)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        hosts = os.path.join(tmp, "hosts")
        await trio.Path(hosts).write_text("127.0.0.2 hosts.example.test\n")
        audit = os.path.join(tmp, "audit.jsonl")
        async with dns_server(ZONE) as (_, dns_port, _):
            common = ("--resolver", f"127.0.0.1:{dns_port}", "--hosts-file", hosts, "--allow-connect", f"*.example.test:{port}")
            async with arca_control.open_session(*common, "--audit-log", audit) as session:
                for name, (_, address, why) in REBOUND.items():
                    with pytest.raises(PermissionError) as caught:
                        await session.connect(name, port)
                    assert caught.value.errno == errno.EACCES
                    assert f"{address} is {why} that DNS gave for {name}" in str(caught.value)
                with pytest.raises(BlockingIOError):
                    listener.accept()  # nothing was connected
                # The operator's hosts file may name loopback for a name rule.
                stream = await session.connect("hosts.example.test", port)
                listener.accept()[0].close()
                await stream.aclose()
            async with arca_control.open_session(*common, "--allow-connect", f"10.0.0.0/8:{port}") as session:
                stream = await session.connect("private.example.test", port)  # the CIDR rule names it
                assert stream.peer.host == "10.0.0.1"
                listener.accept()[0].close()
                await stream.aclose()
                with pytest.raises(PermissionError):
                    await session.connect("metadata.example.test", port)
    lines = [json.loads(line) for line in (await trio.Path(audit).read_text()).splitlines()]
    denied = [line["reason"] for line in lines if line["event"] == "request" and line["decision"] == "denied"]
    for name, (_, address, why) in REBOUND.items():
        assert any(f"{address} is {why} that DNS gave for {name}" in reason for reason in denied), (name, denied)


def test_host_arca_internal_is_reached_by_rules_for_the_hosts_loopback():
    # The intercept maps host.arca.internal to the host's 127.0.0.1 and ::1; the sandbox's own
    # mapping is the operator's word, as the hosts file is.
    def names_for(address: str) -> Names:
        return Names([HOST_NAME])

    hosts = ["127.0.0.1", "::1"]
    policy = Policy.build({Kind.CONNECT: ["127.0.0.1:8000"]})
    assert policy.addresses_for(HOST_NAME, 8000, hosts, names_for) == ["127.0.0.1"]
    with pytest.raises(Denied) as caught:
        policy.addresses_for(HOST_NAME, 8001, hosts, names_for)
    assert str(caught.value).endswith(f"no --allow-connect rule for {HOST_NAME}:8001 (127.0.0.1, ::1)")
    named = Policy.build({Kind.CONNECT: [f"{HOST_NAME}:8000"]})
    assert named.addresses_for(HOST_NAME, 8000, hosts, names_for) == hosts

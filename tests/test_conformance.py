"""Issue 14: where PROTOCOL.md and the monitor disagreed, one test per item that both now say the same.

Each test drives a live monitor (a spawned ``arca-monitor``, as a guest
written from the spec alone would) and, where the item was a gap in the text,
also checks that PROTOCOL.md states what the monitor does.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from arca_control.protocol.messages import Connect, ConnectErr, Error, Listen, ListenErr, Resolve, ResolveErr, UdpBind
from arca_control.protocol.wire import Endpoint, FamilyFilter, GaiError
from arca_monitor.resolver import EAI_NODATA, ResolveError, Resolver

from .dns_server import dns_server
from .test_monitor import RawMonitor

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

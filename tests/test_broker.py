"""The broker as a front end other than the control protocol sees it: ask, get a socket or a typed error, audited and counted.

Real kernel sockets on loopback; no control channel, no protocol messages.
"""

from __future__ import annotations

import errno
import json
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
import trio

from arca_control.protocol.wire import Endpoint
from arca_monitor.audit import AuditLog
from arca_monitor.broker import Broker, Held
from arca_monitor.config import Config
from arca_monitor.inflight import Connecting
from arca_monitor.policy import Denied, Kind, Policy
from arca_monitor.resolver import Resolver

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path


@dataclass
class Flow:
    """What a front end relays, as the broker counts it."""

    connection_id: int
    bytes_up: int = 0
    bytes_down: int = 0


def make_broker(config: Config | None = None, rules: dict[Kind, Iterable[str]] | None = None,
                audit: AuditLog | None = None) -> Broker:
    return Broker(config or Config(), Policy.build(rules or {}), Resolver(hosts_file=None, dns=False),
                  audit or AuditLog(None), session=7)


@pytest.fixture
def server() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        yield listener


async def test_connect_gives_a_connected_socket_counted_once_registered(server: socket.socket, tmp_path: Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    with AuditLog.to(str(log_path)) as audit:
        broker = make_broker(Config(max_connections=1), audit=audit)
        sock = await broker.connect(Endpoint(*server.getsockname()))
        with sock:
            assert sock.getpeername() == server.getsockname()
            flow = Flow(broker.new_connection_id())
            broker.connection_opened(flow, via="redirect")
            assert broker.connections == {flow.connection_id: flow}
            with pytest.raises(OSError, match="--max-connections") as caught:  # the guest's one connection is open
                await broker.connect(Endpoint(*server.getsockname()))
            assert caught.value.errno == errno.EMFILE
            flow.bytes_up, flow.bytes_down = 10, 20
            assert broker.bytes_moved() == (10, 20)
            broker.connection_changed("close", flow, how="closed")
            broker.connection_changed("close", flow, how="closed")  # reported twice: counted once
        assert (broker.connections, broker.bytes_moved(), broker.denials) == ({}, (10, 20), 0)
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [(line["session"], line["event"], line["connection_id"]) for line in lines][:2] == [
        (7, "open", 1), (7, "close", 1)]


async def test_a_denial_is_typed_counted_and_opens_nothing() -> None:
    broker = make_broker()
    with pytest.raises(Denied) as caught:
        await broker.connect(Endpoint("192.0.2.1", 443))
    assert caught.value.errno == errno.EACCES
    assert "--allow-connect" in str(caught.value)
    with pytest.raises(Denied):
        broker.listen(Endpoint("127.0.0.1", 80), 16)  # privileged: the default does not name it
    assert broker.denials == 2
    assert not broker.held


def test_what_cannot_be_done_at_all_is_refused_before_the_policy(tmp_path: Path) -> None:
    broker = make_broker()  # the default policy has no unix rule: it would say EACCES
    for endpoint, code in ((Endpoint(str(tmp_path / "u.sock"), 0), errno.EAFNOSUPPORT), (Endpoint("", 0), errno.EINVAL)):
        with pytest.raises(OSError, match="UDP needs an IP address") as caught:
            broker.udp_bind(endpoint)
        assert caught.value.errno == code
    with pytest.raises(OSError, match="V6ONLY") as caught:
        broker.listen(Endpoint("127.0.0.1", 0), 16, v6only=True)
    assert caught.value.errno == errno.EINVAL
    assert broker.denials == 0
    assert not list(tmp_path.iterdir())


def test_listeners_and_udp_sockets_count_until_released() -> None:
    broker = make_broker(Config(max_listeners=1))
    bound = broker.listen(Endpoint("127.0.0.1", 0), 100_000)
    with bound.sock:
        assert bound.local.port == bound.sock.getsockname()[1]
        with pytest.raises(OSError, match="--max-listeners") as caught:
            broker.listen(Endpoint("127.0.0.1", 0), 16)
        assert caught.value.errno == errno.EMFILE
    broker.released(Held.LISTENER)
    udp = broker.udp_bind(Endpoint("127.0.0.1", 0))
    with udp.sock:
        assert udp.sock.type == socket.SOCK_DGRAM
        assert broker.held == {Held.LISTENER: 0, Held.DATAGRAM_SOCKET: 1}
    broker.listen(Endpoint("127.0.0.1", 0), 16).sock.close()  # room again


async def test_a_connect_in_progress_is_in_flight_until_it_ends(stalled_address: tuple[str, int]) -> None:
    broker = make_broker(Config(max_in_flight=2))
    queued = [1]
    broker.count_waiting(lambda: queued[0])  # a front end's own waiting requests count too
    started = broker.start_connect(Endpoint(*stalled_address))
    assert isinstance(started, Connecting)
    assert broker.in_flight == 2
    with pytest.raises(OSError, match="--max-in-flight") as caught:
        broker.check_in_flight()
    assert caught.value.errno == errno.EAGAIN
    with trio.move_on_after(0.1):
        await started.finish(30)
    assert started.sock.fileno() == -1  # closed when given up
    assert broker.in_flight == 1
    with pytest.raises(OSError, match="no answer") as caught:
        await broker.connect(Endpoint(*stalled_address), 0.05)
    assert caught.value.errno == errno.ETIMEDOUT
    assert broker.in_flight == 1


def test_lookups_literals_answer_themselves_names_need_a_rule() -> None:
    broker = make_broker(rules={Kind.CONNECT: ["127.0.0.1:80"], Kind.RESOLVE: ["*.example.test"]})
    assert broker.start_lookup("127.0.0.1") is None
    slot = broker.start_lookup("db.example.test")
    assert slot is not None
    assert broker.in_flight == 1
    with slot:
        pass
    slot.release()  # a second release does nothing
    assert broker.in_flight == 0
    with pytest.raises(Denied):
        broker.start_lookup("elsewhere.test")
    assert broker.denials == 1

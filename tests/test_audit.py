"""The audit log, line by line, for a scripted session."""

from __future__ import annotations

import json

import pytest

import arca_control

from .conftest import read_all, wait_until


async def test_audit_log_records_requests_decisions_and_connection_lives(tmp_path):
    log_path = tmp_path / "audit.jsonl"
    async with arca_control.open_session("--audit-log", str(log_path)) as session:
        listener = await session.listen("127.0.0.1", 0)
        client = await session.connect(*listener.local)
        server = await listener.accept()
        await client.send_all(b"x" * 1000)
        await client.send_eof()
        assert await read_all(server) == b"x" * 1000
        await server.send_all(b"y" * 10)
        await server.aclose()
        assert await read_all(client) == b"y" * 10
        await client.aclose()
        with pytest.raises(PermissionError):
            await session.listen("127.0.0.1", 80)
        with pytest.raises(ConnectionRefusedError):
            await session.connect("127.0.0.1", 1)
        assert not session.streams
        # The relays finish closing a moment after the streams.
        await wait_until(lambda: sum('"close"' in line for line in log_path.read_text().splitlines()) >= 2)
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert all(line["session"] == lines[0]["session"] and line["ts"] > 0 for line in lines)
    requests = [(entry["op"], entry["decision"]) for entry in lines if entry["event"] == "request"]
    assert requests[:4] == [("Hello", "allowed"), ("Listen", "allowed"), ("Connect", "allowed"), ("Accept", "allowed")]
    denied = next(entry for entry in lines if entry["event"] == "request" and entry["decision"] == "denied")
    assert denied["op"] == "Listen"
    assert denied["endpoint"] == "127.0.0.1:80"
    assert "--allow-listen" in denied["reason"]
    failed = next(entry for entry in lines if entry["event"] == "request" and entry["decision"] == "failed")
    assert failed["op"] == "Connect"
    assert failed["errno"] == "ECONNREFUSED"
    opened = [entry for entry in lines if entry["event"] == "open"]
    assert sorted(entry["via"] for entry in opened) == ["accept", "connect"]
    by_id = {entry["connection_id"]: entry for entry in opened}
    closes = {entry["connection_id"]: entry for entry in lines if entry["event"] == "close"}
    connect_id = next(i for i, entry in by_id.items() if entry["via"] == "connect")
    accept_id = next(i for i, entry in by_id.items() if entry["via"] == "accept")
    assert closes[connect_id]["bytes_up"] == 1000
    assert closes[connect_id]["bytes_down"] == 10
    assert closes[accept_id]["bytes_up"] == 10
    assert closes[accept_id]["bytes_down"] == 1000
    assert all(c["seconds"] >= 0 and c["how"] == "closed" for c in closes.values())
    half_closes = {(entry["event"], entry["connection_id"]) for entry in lines if entry["event"] in ("guest_eof", "peer_eof")}
    assert ("guest_eof", connect_id) in half_closes
    assert ("peer_eof", accept_id) in half_closes


def test_no_audit_log_by_default_and_never_on_stdout(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "arca_monitor", "--help"], capture_output=True, text=True)
    assert "--audit-log" in result.stdout
    assert "never stdout" in result.stdout


async def test_stats_count_what_the_session_did():
    async with arca_control.open_session() as session:
        listener = await session.listen("127.0.0.1", 0)
        client = await session.connect(*listener.local)
        server = await listener.accept()
        await client.send_all(b"u" * 5000)
        assert len(await server.receive_some(65536)) > 0
        with pytest.raises(PermissionError):
            await session.listen("127.0.0.1", 80)
        with pytest.raises(ConnectionRefusedError):
            await session.connect("127.0.0.1", 1)
        await session.udp_bind("127.0.0.1", 0)
        stats = await session.stats()
        assert (stats["listeners"], stats["connections"], stats["datagram_sockets"]) == (1, 2, 1)
        assert stats["denials"] == 1
        assert stats["requests"] == {"Hello": 1, "Listen": 2, "Connect": 2, "Accept": 1, "UdpBind": 1, "Stats": 1}
        assert stats["errors"] == {"EACCES": 1, "ECONNREFUSED": 1}

        async def bytes_up() -> bool:  # the relay counts as bytes move
            return (await session.stats())["bytes_up"] >= 5000

        await wait_until(bytes_up)
        await client.aclose()
        await server.aclose()

        async def closed() -> bool:
            return not (await session.stats())["connections"]

        await wait_until(closed)
        stats = await session.stats()  # closed connections still count
        assert stats["bytes_up"] == 5000
        assert stats["bytes_down"] == 5000

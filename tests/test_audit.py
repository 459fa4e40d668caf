"""The audit log, line by line, for a scripted session."""

from __future__ import annotations

import json

import pytest
import trio

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
    requests = [(l["op"], l["decision"]) for l in lines if l["event"] == "request"]
    assert requests[:4] == [("Hello", "allowed"), ("Listen", "allowed"), ("Connect", "allowed"), ("Accept", "allowed")]
    denied = next(l for l in lines if l["event"] == "request" and l["decision"] == "denied")
    assert denied["op"] == "Listen" and denied["endpoint"] == "127.0.0.1:80" and "--allow-listen" in denied["reason"]
    failed = next(l for l in lines if l["event"] == "request" and l["decision"] == "failed")
    assert failed["op"] == "Connect" and failed["errno"] == "ECONNREFUSED"
    opened = [l for l in lines if l["event"] == "open"]
    assert sorted(l["via"] for l in opened) == ["accept", "connect"]
    by_id = {l["connection_id"]: l for l in opened}
    closes = {l["connection_id"]: l for l in lines if l["event"] == "close"}
    connect_id = next(i for i, l in by_id.items() if l["via"] == "connect")
    accept_id = next(i for i, l in by_id.items() if l["via"] == "accept")
    assert closes[connect_id]["bytes_up"] == 1000 and closes[connect_id]["bytes_down"] == 10
    assert closes[accept_id]["bytes_up"] == 10 and closes[accept_id]["bytes_down"] == 1000
    assert all(c["seconds"] >= 0 and c["how"] == "closed" for c in closes.values())
    half_closes = {(l["event"], l["connection_id"]) for l in lines if l["event"] in ("guest_eof", "peer_eof")}
    assert ("guest_eof", connect_id) in half_closes and ("peer_eof", accept_id) in half_closes


async def test_no_audit_log_by_default_and_never_on_stdout(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "arca_monitor", "--help"], capture_output=True, text=True)
    assert "--audit-log" in result.stdout and "never stdout" in result.stdout


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
        with trio.fail_after(5):
            while (await session.stats())["bytes_up"] < 5000:  # the relay counts as bytes move
                await trio.sleep(0.02)
        await client.aclose()
        await server.aclose()
        with trio.fail_after(5):  # closed connections still count
            while (stats := await session.stats())["connections"]:
                await trio.sleep(0.02)
        assert stats["bytes_up"] == 5000 and stats["bytes_down"] == 5000

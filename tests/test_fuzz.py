"""The frame fuzzer (tools/fuzz/): bounded runs of each mode, the regression corpus,
and planted bugs it must catch, so a clean run means something."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from arca_control.protocol import codec, errors
from arca_control.protocol.messages import REGISTRY, Accept
from tools.fuzz.cli import main
from tools.fuzz.codec_mode import check_codec
from tools.fuzz.mutations import MUTATIONS
from tools.fuzz.run import MAX_SAVED

ROOT = Path(__file__).resolve().parent.parent
REGRESSION = ROOT / "tools" / "fuzz" / "corpus" / "regression"


def summary(text: str) -> dict[str, str]:
    """The fuzzer's "key: value" summary lines."""
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line and not line.startswith(" "))


def counts(line: str) -> dict[str, int]:
    """"name 12, other name 3" -> {"name": 12, "other name": 3}."""
    return {name: int(n) for name, n in (item.rsplit(" ", 1) for item in line.split(", "))}


def run_tool(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.fuzz", *args], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT
    )


def test_codec_mode_finds_no_violation(tmp_path, capsys):
    assert main(["codec", "--count", "20000", "--seed", "20240601", "--quiet", "--corpus", str(tmp_path)]) == 0
    result = summary(capsys.readouterr().out)
    assert result["cases"] == "20000"
    assert result["findings"] == "0"
    assert set(counts(result["mutations"])) == set(MUTATIONS)  # every mutation was tried
    outcomes = counts(result["decode"])
    assert outcomes["ok"] > 500
    assert {"InvalidField", "TruncatedFrame", "TrailingBytes", "OversizedFrame", "UnknownMessageType",
            "UnsupportedVersion"} <= set(outcomes)
    assert not list(tmp_path.iterdir())


def test_live_mode_finds_no_violation(tmp_path):
    result = run_tool("live", "--count", "2000", "--seed", "7", "--quiet", "--corpus", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    found = summary(result.stdout)
    assert int(found["cases"]) >= 2000
    assert found["findings"] == "0"
    sessions = counts(found["sessions"])
    assert sessions["limit (closed by monitor)"] >= 1
    assert sessions["normal"] >= 1
    assert {"HelloOk", "Error", "ListenOk", "CloseListenerOk", "AcceptErr", "AcceptOk", "ConnectErr"} <= set(
        counts(found["replies"])
    )
    assert not list(tmp_path.iterdir())


def test_regression_corpus_keeps_the_invariant(capsys):
    files = sorted(REGRESSION.glob("*.bin"))
    assert len(files) >= 20
    seen_types = set()
    for path in files:
        data = path.read_bytes()
        assert check_codec(data) == [], path.name
        if path.name.startswith("valid-"):
            seen_types.add(type(codec.decode(data)))
        else:  # the malformed ones are malformed as a whole
            with pytest.raises(errors.ProtocolError):
                codec.decode(data)
    assert seen_types == set(REGISTRY.values())
    assert main(["codec", "--replay", str(REGRESSION), "--quiet"]) == 0
    assert summary(capsys.readouterr().out)["cases"] == str(len(files))


# --- planted bugs: the checks are not vacuous ------------------------------------------------

_real_decode = codec.decode


def decode_raising_keyerror(data, **kwargs):
    if data[:1] == b"\x03":  # every Accept
        raise KeyError("listener")
    return _real_decode(data, **kwargs)


def decode_losing_the_request_id(data, **kwargs):
    msg = _real_decode(data, **kwargs)
    return dataclasses.replace(msg, request_id=1) if msg.request_id > 1 else msg


class DecoderIgnoringEof(codec.FrameDecoder):
    def feed(self, data):
        if data:  # never told about the end of the stream: a cut frame goes unreported
            super().feed(data)


ACCEPT = codec.encode(Accept(request_id=3, listener_id=1))


@pytest.mark.parametrize(
    ("attribute", "bug", "sample", "symptom"),
    [
        ("decode", decode_raising_keyerror, ACCEPT, "KeyError"),
        ("decode", decode_losing_the_request_id, ACCEPT, "encodes to"),
        ("FrameDecoder", DecoderIgnoringEof, ACCEPT[:9], "says TruncatedFrame"),
    ],
    ids=["decode-raises-KeyError", "decode-loses-request-id", "FrameDecoder-ignores-EOF"],
)
def test_codec_checks_catch_a_planted_bug(monkeypatch, tmp_path, capsys, attribute, bug, sample, symptom):
    monkeypatch.setattr(codec, attribute, bug)
    problems = check_codec(sample)
    assert problems
    assert any(symptom in p for p in problems), problems
    assert main(["codec", "--count", "300", "--seed", "1", "--quiet", "--corpus", str(tmp_path)]) == 1
    assert int(summary(capsys.readouterr().out)["findings"]) > 0
    saved = sorted(tmp_path.glob("codec-*.bin"))
    assert saved
    assert len(saved) <= MAX_SAVED
    assert main(["codec", "--replay", *map(str, saved), "--quiet"]) == 1
    monkeypatch.undo()  # with the bug gone, the saved cases pass
    assert main(["codec", "--replay", str(tmp_path), "--quiet"]) == 0


# Bugs planted in the monitor process only, through a sitecustomize module, and what the fuzzer must say of each.
PLANTED = {
    "fd_leak": ("""
        async def run(self, _run=session.MonitorSession.run):
            os.open(os.devnull, os.O_RDONLY)  # one descriptor lost per session
            await _run(self)
        session.MonitorSession.run = run
    """, "fds"),
    # The monitor's own core refuses the wrong reply and answers EIO "internal error" instead.
    "wrong_errno": ("""
        async def send(self, reply, fds=(), _send=session.MonitorSession.send):
            if type(reply).__name__ == "Error" and reply.errno == errno.EBADMSG:
                reply = type(reply).make(reply.request_id, errno.EPROTO, reply.message)
            await _send(self, reply, fds)
        session.MonitorSession.send = send
    """, "answered with an internal error"),
    # Past the monitor's core, on the wire: the fuzzer's bystander core refuses it.
    "wrong_errno_on_the_wire": ("""
        from arca_control.protocol import channel, codec
        async def send_bytes(self, data, fds=(), _send=channel.ControlChannel.send_bytes):
            reply = codec.decode(data)
            if type(reply).__name__ == "Error" and reply.errno == errno.EBADMSG:
                data = codec.encode(type(reply).make(reply.request_id, errno.EPROTO, reply.message))
            await _send(self, data, fds)
        channel.ControlChannel.send_bytes = send_bytes
    """, "broke the protocol"),
    # A handler that raises is answered EIO "internal error" and the session goes on: still a finding.
    "internal_error": ("""
        from arca_monitor import tcp
        async def accept(self, request):
            raise RuntimeError("planted")
        tcp.TcpRequests.accept = accept
    """, "answered with an internal error"),
    # StatsOk must carry the counts the protocol core keeps (here the monitor's core, miscounted).
    "stats_miscounted": ("""
        async def _stats(self, request, _stats=session.MonitorSession._stats):
            self.core.requests[request.TYPE] += 1  # this Stats counted twice
            await _stats(self, request)
        session.MonitorSession._stats = _stats
    """, "as the core counted them"),
}


@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_live_checks_catch_a_planted_monitor_bug(tmp_path, bug):
    code, symptom = PLANTED[bug]
    plant = tmp_path / "plant"
    plant.mkdir()
    # Loaded by every interpreter started with this PYTHONPATH; only the monitor runs the patched code.
    (plant / "sitecustomize.py").write_text(
        "import errno, os\nfrom arca_monitor import session\n" + textwrap.dedent(code)
    )
    env = {**os.environ, "PYTHONPATH": str(plant)}
    result = run_tool("live", "--count", "300", "--seed", "3", "--quiet", "--corpus", str(tmp_path / "found"), env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert int(summary(result.stdout)["findings"]) > 0
    assert symptom in result.stdout, result.stdout
    assert list((tmp_path / "found").glob("live-*.bin"))

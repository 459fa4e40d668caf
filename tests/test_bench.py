"""Smoke test for the bench (tools/bench/): every case runs on tiny loads and reports sane numbers.

It checks that the bench itself works (results produced, positive, the table and
the JSON well-formed), never how fast anything is: this machine is too noisy for
performance assertions, and the bench's own run is where the ratios are judged.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from arca_control.protocol.codec import decode, encode
from arca_control.protocol.messages import REGISTRY
from tools.bench.base import CASES, Sizes
from tools.bench.cli import metadata, parse_cases
from tools.bench.codec import sample_message
from tools.bench.programs import PROGRAMS
from tools.bench.report import Target, build_rows, format_table, write_json
from tools.bench.run import run_cases

ROOT = Path(__file__).resolve().parent.parent

TINY = Sizes(
    download_bytes=8 << 20,
    upload_bytes=8 << 20,
    repeats=1,
    connects=50,
    accepts=200,
    accept_clients=4,
    codec_seconds=0.2,
    scale_connections=200,
    scale_concurrency=100,
    curl_bytes=8 << 20,
    program_bytes=4 << 20,
)


def require_socat() -> None:
    if shutil.which("socat") is None:
        pytest.fail("socat is not installed; the bench's relay baseline needs it (apt-get install socat, "
                    "or `make test`, which installs it)")


def non_negative(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


def positive(value: object) -> bool:
    return non_negative(value) and isinstance(value, (int, float)) and value > 0


def test_parse_cases_takes_letters_and_names():
    assert parse_cases("a,codec, G") == ["a", "f", "g"]
    with pytest.raises(Exception, match="unknown case"):
        parse_cases("a,bogus")


def test_sample_message_exists_for_every_type():
    for cls in REGISTRY.values():
        msg = sample_message(cls)
        assert decode(encode(msg)) == msg


async def test_every_case_on_tiny_loads(tmp_path):
    require_socat()
    results = await run_cases(TINY, CASES)
    cases = {"download", "upload", "connect", "accept", "codec", "scale", "curl", "programs"}
    assert set(results.entries()) == cases
    assert not results.failed

    download = results.download
    assert download is not None
    for transfers in (download, results.upload):
        assert transfers is not None
        for variant in ("direct", "socat", "arca"):
            assert positive(transfers.variants[variant].median_mb_per_s), (transfers, variant)
        # CPU time comes in clock ticks (10 ms): 8 MiB may well cost less than one.
        assert non_negative(transfers.variants["arca"].median_relay_cpu_s_per_gib)
        assert non_negative(transfers.variants["socat"].median_relay_cpu_s_per_gib)
    connect, accept, codec, scale = results.connect, results.accept, results.codec, results.scale
    assert connect is not None
    assert accept is not None
    assert codec is not None
    assert scale is not None
    for latency, rate in ((connect.arca, accept.arca), (connect.direct, accept.direct)):
        assert positive(latency.median_ms)
        assert latency.p99_ms >= latency.median_ms
        assert positive(rate.median_per_s)
    assert len(codec.types) == len(REGISTRY)
    assert all(positive(t.parse_per_s) for t in codec.types.values())
    assert all(positive(t.build_per_s) for t in codec.types.values())
    assert scale.connections == 200
    assert scale.drained
    assert scale.peak.fds >= 3 * 200  # the socket, the rx pipe end and the tx socket end per connection
    assert positive(scale.open_s)
    assert positive(scale.peak.rss_kib)
    curl = results.curl
    assert curl is not None
    for direction in (curl.download, curl.upload):
        assert positive(direction.variants["direct"].median_mb_per_s)
        assert positive(direction.variants["arca"].median_mb_per_s)
        assert positive(direction.variants["plain_relay"].median_mb_per_s)
        assert non_negative(direction.variants["arca"].median_relay_cpu_s_per_gib)
    programs = results.programs
    assert programs is not None
    assert [row.program for row in programs.rows] == list(PROGRAMS)
    for program_row in programs.rows:
        assert program_row.transfers.nbytes == 4 << 20
        for variant in ("direct", "arca"):
            assert positive(program_row.transfers.variants[variant].median_mb_per_s), (program_row, variant)

    rows = build_rows(results)
    assert {row.case[0] for row in rows} == set("abcdefghi")
    # Issue 15's targets, printed for every row they are about.
    targets = {row.case: row.target for row in rows if row.target is not None}
    program_cases = [row.case for row in rows if row.case.startswith("i ")]
    assert program_cases == [f"i {program.label}" for program in PROGRAMS]
    api_paths = [*program_cases, "a download vs direct TCP", "b upload vs direct TCP",
                 "h curl download in the sandbox vs on the host", "h curl upload in the sandbox vs on the host"]
    for case in api_paths:
        assert targets[case] == Target(">=", 0.9), case
    for case in ("a download, socket channel vs direct", "b upload, socket channel vs direct"):
        assert targets[case] == Target(">=", 0.8), case
    assert targets["c monitor CPU download (vs socat)"] == Target("<=", 0.15, of="measured", unit="s/GiB")
    assert targets["c monitor CPU upload (vs socat)"] == Target("<=", 0.25, of="measured", unit="s/GiB")
    assert targets["d connect+close median"] == Target("<=", 1.5)
    assert targets["e accept rate"] == Target(">=", 0.7)
    assert targets["f codec parse, slowest type"] == Target(">=", 200_000, of="measured", unit="/s")
    for row in rows:
        if row.case.startswith("i "):
            assert row.ratio is not None
            assert row.ratio > 0, row
    for row in rows:
        if row.unit == "s/GiB":
            assert non_negative(row.measured), row
        else:
            assert positive(row.measured), row
        if row.target is not None:
            assert row.met in (True, False), row
    table = format_table(rows)
    assert len(table.splitlines()) == len(rows) + 2
    assert "ratio" in table.splitlines()[0]

    path = tmp_path / "bench.json"
    write_json(path, metadata(TINY, quick=True), results, rows)
    document = json.loads(path.read_text())
    assert set(document) == {"meta", "results", "rows"}
    assert document["meta"]["sizes"]["download_bytes"] == 8 << 20
    assert set(document["results"]) == cases
    assert document["results"]["download"]["arca"]["median_mb_per_s"] == download.variants["arca"].median_mb_per_s
    assert document["results"]["scale"]["peak"]["fds"] == scale.peak.fds
    assert set(document["results"]["programs"]) == {program.name for program in PROGRAMS}
    for program_row in programs.rows:
        entry = document["results"]["programs"][program_row.program.name]
        assert entry["label"] == program_row.program.label
        assert entry["arca"]["median_mb_per_s"] == program_row.transfers.variants["arca"].median_mb_per_s
        assert positive(entry["direct"]["median_mb_per_s"])
    assert len(document["rows"]) == len(rows)
    assert all({"case", "measured", "baseline", "ratio", "target", "met"} <= set(r) for r in document["rows"])


def test_command_line_writes_json(tmp_path):
    # The codec case alone needs no peers: this checks main(), the exit status and --json.
    path = tmp_path / "codec.json"
    run = subprocess.run(
        [sys.executable, "-m", "tools.bench", "--quick", "--cases", "codec", "--json", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    assert "f codec parse" in run.stdout
    rows = json.loads(path.read_text())["rows"]
    assert rows
    assert all(row["case"].startswith("f ") for row in rows)

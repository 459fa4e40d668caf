"""Smoke test for tools/bench.py: every case runs on tiny loads and reports sane numbers.

It checks that the bench itself works (results produced, positive, the table and
the JSON well-formed), never how fast anything is: this machine is too noisy for
performance assertions, and the bench's own run is where the ratios are judged.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH_PATH = Path(__file__).resolve().parent.parent / "tools" / "bench.py"


def _load_bench():
    # tools/ is not a package: load the script as a module, registered so dataclasses resolve.
    spec = importlib.util.spec_from_file_location("arca_bench", BENCH_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load_bench()

TINY = bench.Sizes(
    download_bytes=8 << 20,
    upload_bytes=8 << 20,
    repeats=1,
    connects=50,
    accepts=200,
    accept_clients=4,
    codec_seconds=0.2,
    scale_connections=200,
    scale_concurrency=100,
)


def require_socat() -> None:
    if shutil.which("socat") is None:
        pytest.fail("socat is not installed; the bench's relay baseline needs it (apt-get install socat, "
                    "or `make test`, which installs it)")


def non_negative(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


def positive(value) -> bool:
    return non_negative(value) and value > 0


def test_parse_cases_takes_letters_and_names():
    assert bench.parse_cases("a,codec, G") == ["a", "f", "g"]
    with pytest.raises(Exception, match="unknown case"):
        bench.parse_cases("a,bogus")


def test_sample_message_exists_for_every_type():
    from arca_control.protocol.codec import decode, encode
    from arca_control.protocol.messages import REGISTRY

    for cls in REGISTRY.values():
        msg = bench.sample_message(cls)
        assert decode(encode(msg)) == msg


async def test_every_case_on_tiny_loads(tmp_path):
    require_socat()
    results = await bench.run_cases(TINY, bench.CASES)
    assert set(results) == {"download", "upload", "connect", "accept", "codec", "scale"}
    failed = {name: entry["error"] for name, entry in results.items() if "error" in entry}
    assert not failed

    for name in ("download", "upload"):
        for variant in ("direct", "socat", "arca"):
            assert positive(results[name][variant]["median_mb_per_s"]), (name, variant)
        # CPU time comes in clock ticks (10 ms): 8 MiB may well cost less than one.
        assert non_negative(results[name]["arca"]["median_relay_cpu_s_per_gib"])
        assert non_negative(results[name]["socat"]["median_relay_cpu_s_per_gib"])
    for variant in ("arca", "direct"):
        assert positive(results["connect"][variant]["median_ms"])
        assert results["connect"][variant]["p99_ms"] >= results["connect"][variant]["median_ms"]
        assert positive(results["accept"][variant]["median_per_s"])
    assert len(results["codec"]["types"]) == len(bench.REGISTRY)
    assert all(positive(t["parse_per_s"]) and positive(t["build_per_s"]) for t in results["codec"]["types"].values())
    scale = results["scale"]
    assert scale["connections"] == 200 and scale["drained"]
    assert scale["peak"]["fds"] >= 3 * 200  # the socket, the rx pipe end and the tx socket end per connection
    assert positive(scale["open_s"]) and positive(scale["peak"]["rss_kib"])

    rows = bench.build_rows(results)
    assert {row.case[0] for row in rows} == set("abcdefg")
    for row in rows:
        if row.unit == "s/GiB":
            assert non_negative(row.measured), row
        else:
            assert positive(row.measured), row
        if row.target is not None:
            assert row.met in (True, False), row
    table = bench.format_table(rows)
    assert len(table.splitlines()) == len(rows) + 2 and "ratio" in table.splitlines()[0]

    path = tmp_path / "bench.json"
    bench.write_json(path, bench.metadata(TINY, quick=True), results, rows)
    document = json.loads(path.read_text())
    assert set(document) == {"meta", "results", "rows"}
    assert document["meta"]["sizes"]["download_bytes"] == 8 << 20
    assert len(document["rows"]) == len(rows)
    assert all({"case", "measured", "baseline", "ratio", "target", "met"} <= set(r) for r in document["rows"])


def test_command_line_writes_json(tmp_path):
    # The codec case alone needs no peers: this checks main(), the exit status and --json.
    path = tmp_path / "codec.json"
    run = subprocess.run(
        [sys.executable, str(BENCH_PATH), "--quick", "--cases", "codec", "--json", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "f codec parse" in run.stdout
    rows = json.loads(path.read_text())["rows"]
    assert rows and all(row["case"].startswith("f ") for row in rows)

"""The benchmark script keeps running: a quick pass with tiny counts, timing nothing."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "benchmarks" / "run.py"


def _load_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_quick_run_prints_targets_and_writes_json(tmp_path: Path) -> None:
    """`run.py --quick --no-network` measures every configuration, prints targets, writes JSON."""
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--no-network", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    worlds = data["in_process"]
    assert set(worlds) == {"plain", "buttress-sentry", "peer-sentry"}
    names = {c["name"] for w in worlds.values() for c in w["configs"]}
    assert {
        "bare-starlette",
        "bare-fastapi",
        "layer-context",
        "layer-metrics",
        "layer-errors",
        "layer-ratelimit",
        "buttress-starlette",
        "peer-starlette",
        "buttress-429",
        "peer-429",
        "buttress-500",
        "peer-404",
    } <= names
    wrong = [
        (w["world"], c["name"], c["status"], c["expected_status"])
        for w in worlds.values()
        for c in w["configs"]
        if c["status"] != c["expected_status"]
    ]
    assert wrong == []  # every configuration answers what it is meant to measure
    assert set(data["memory"]) == {"ips", "paths"}
    assert "--no-network" in data["network"]["skipped"]
    assert "network part skipped" in proc.stdout
    targets = [line for line in proc.stdout.splitlines() if line.startswith(("- PASS", "- MISS"))]
    assert len(targets) >= 5
    assert "| bare-starlette |" in proc.stdout
    # Instructions per request under valgrind's callgrind (two configurations when quick):
    # the stack costs more than the bare app, and the target line says by how much.
    counts = data["callgrind"]
    assert set(counts) == {"bare", "buttress-sentry"}
    assert 0 < counts["bare"] < counts["buttress-sentry"]
    assert "whole stack with Sentry over bare, instructions per request" in proc.stdout
    again = subprocess.run(
        [sys.executable, str(RUN), "--from-json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "### Targets" in again.stdout  # the report comes back from the JSON alone


def test_network_part_is_skipped_with_a_reason_without_wrk(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without wrk on PATH the network part reports itself skipped and why, starting nothing."""
    run = _load_run()
    monkeypatch.setenv("PATH", str(tmp_path))
    result = run.network(True, None, None)
    assert "wrk is not installed" in result["skipped"]


def test_wrk_output_is_parsed() -> None:
    """req/s, latency percentiles and non-2xx counts come out of wrk's report."""
    run = _load_run()
    sample = """Running 5s test @ http://127.0.0.1:8000/items/42
  1 threads and 32 connections
  Latency Distribution
     50%    2.10ms
     75%  850.00us
     90%    3.20ms
     99%    1.02s
  61234 requests in 5.00s, 9.00MB read
  Non-2xx or 3xx responses: 7
Requests/sec:  12246.80
"""
    parsed = run.parse_wrk(sample)
    assert parsed["rps"] == pytest.approx(12246.8)
    assert parsed["p50_ms"] == pytest.approx(2.1)
    assert parsed["p75_ms"] == pytest.approx(0.85)
    assert parsed["p99_ms"] == pytest.approx(1020.0)
    assert parsed["requests"] == 61234
    assert parsed["non_2xx"] == 7

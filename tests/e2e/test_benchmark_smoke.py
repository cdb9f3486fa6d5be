"""A tiny run of the performance harness: it runs end to end and writes the JSON it promises.

No timing is asserted (figures on a shared 2-core machine mean nothing); the harness itself
is `python -m benchmarks.harness`, documented in docs/performance.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN_KEYS = {
    "system",
    "backend",
    "mix",
    "carrier_latency_ms",
    "orders",
    "terminal",
    "fulfilled",
    "cancelled",
    "seconds",
    "orders_per_second",
    "events",
    "events_per_second",
    "latency_ms",
    "peak_rss_mib",
    "config",
    "notes",
}


def run_harness(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.harness", "--quick", "--json", str(out), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return dict(json.loads(out.read_text()))


def assert_complete_run(run: dict[str, Any], orders: int) -> None:
    assert run.keys() >= RUN_KEYS
    assert run["orders"] == run["terminal"] == orders
    # The quick mix compensates every tenth order (an unsupported shipping country).
    assert run["cancelled"] == orders // 10
    assert run["fulfilled"] == orders - orders // 10
    assert set(run["latency_ms"]) >= {"p50", "p95", "p99"}
    assert run["peak_rss_mib"] and all(v > 0 for v in run["peak_rss_mib"].values())


def test_quick_benchmark_measures_our_saga_against_the_plain_sql_limit(tmp_path: Path) -> None:
    doc = run_harness(tmp_path)

    assert {"meta", "plan", "runs", "comparisons", "targets", "skipped"} <= doc.keys()
    assert doc["meta"]["command"].startswith(".venv/bin/python -m benchmarks.harness")
    assert doc["meta"]["machine"]["nproc"] >= 1
    assert {r["system"] for r in doc["runs"]} == {"ours", "plain_sql"}
    for run in doc["runs"]:
        assert_complete_run(run, 50)
    ours = next(r for r in doc["runs"] if r["system"] == "ours")
    # The worker, and the projector process that keeps the read models beside it.
    assert set(ours["peak_rss_mib"]) == {"worker-0", "projector"}
    assert ours["config"]["projected_after_s"] is not None
    assert [c["against"] for c in doc["comparisons"]] == ["plain_sql"]
    assert any(t["target"].startswith(">= 40% of the plain-SQL limit") for t in doc["targets"])


@pytest.mark.parametrize("peer", ["dbos", "eventsourcing"])
def test_quick_benchmark_runs_each_peer_saga(tmp_path: Path, peer: str) -> None:
    pytest.importorskip(peer, reason=f"{peer} is in the bench extra: pip install -e '.[bench]'")

    doc = run_harness(tmp_path, "--peers", peer, "--skip-ours", "--skip-plain", "--orders", "20")

    [run] = doc["runs"]
    assert run["system"] == peer
    assert_complete_run(run, 20)


def test_in_process_benchmark_drains_its_backlog() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.inprocess", "--orders", "20", "--concurrency", "4"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("sqlite: 20 orders in "), proc.stdout
    assert "CPU" in proc.stdout and "per order" in proc.stdout

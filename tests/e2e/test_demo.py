"""`fulfillment demo` and the worker-concurrency benchmark, run as a user would run them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import date
from pathlib import Path

from fulfillment.entrypoints.demo_mix import Scenario, plan_orders

REPO_ROOT = Path(__file__).resolve().parents[2]
FULFILLMENT = Path(sys.executable).parent / "fulfillment"
OUTCOMES = (
    "fulfilled",
    "cancelled: prescription_expired",
    "cancelled: insufficient_stock",
    "cancelled: unsupported_destination",
    "cancelled: retries_exhausted",
)


def _env() -> dict[str, str]:
    """The caller's environment without FULFILLMENT_* settings, wide enough for the tables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FULFILLMENT_")}
    env.update(COLUMNS="160", PYTHONIOENCODING="utf-8")
    return env


def _demo(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = (
        [str(FULFILLMENT)]
        if FULFILLMENT.exists()
        else [sys.executable, "-m", "fulfillment.entrypoints.cli"]
    )
    return subprocess.run(
        [*command, "demo", *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )


def _count(output: str, label: str) -> int:
    match = re.search(rf"{re.escape(label)}\W+(\d+)", output)
    assert match, f"no {label!r} row in the summary:\n{output}"
    return int(match.group(1))


def test_demo_runs_every_kind_of_order_and_keeps_inventory_consistent(tmp_path: Path) -> None:
    result = _demo(tmp_path, "--orders", "40", "--seed", "3")

    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    for outcome in OUTCOMES:
        assert _count(output, outcome) >= 1, f"no order ended {outcome}:\n{output}"
    assert sum(_count(output, outcome) for outcome in OUTCOMES) == 40
    assert _count(output, "stuck (not finished)") == 0
    assert "inventory invariant holds" in output
    assert "latency p95" in output and "orders/s" in output
    # The compensated example shows LIFO: the reservation is released before the prescription.
    example = output[output.index("Example: order") :]
    assert example.index("InventoryReleased") < example.index("PrescriptionCancelled")
    assert (tmp_path / "fulfillment-demo.db").exists()


def test_demo_starts_from_a_fresh_database_each_run(tmp_path: Path) -> None:
    (tmp_path / "fulfillment-demo.db").write_text("not a database")

    result = _demo(tmp_path, "--orders", "10", "--database", "fulfillment-demo.db")

    assert result.returncode == 0, result.stdout + result.stderr
    assert _count(result.stdout, "total") == 10


def test_the_same_seed_places_the_same_mix_of_orders() -> None:
    countries = ("US", "GB", "DE")
    first = plan_orders(200, 11, countries, date(2030, 1, 1), "a")
    again = plan_orders(200, 11, countries, date(2030, 1, 1), "b")
    other = plan_orders(200, 12, countries, date(2030, 1, 1), "a")

    assert [(p.scenario, p.command.items) for p in first] == [
        (p.scenario, p.command.items) for p in again
    ]
    assert [p.scenario for p in first] != [p.scenario for p in other]
    assert {p.scenario for p in first} == set(Scenario)
    unsupported = [p for p in first if p.scenario is Scenario.UNSUPPORTED_DESTINATION]
    assert all(p.command.shipping_address.country not in countries for p in unsupported)


def test_benchmark_prints_the_ratio_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.worker_concurrency",
            "--orders-c1",
            "3",
            "--orders-cN",
            "20",
            "--concurrency",
            "10",
            "--latency-ms",
            "20",
            "--json",
            str(out),
        ],
        cwd=REPO_ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"ratio c=10 / c=1: [\d.]+x", result.stdout), result.stdout
    data = json.loads(out.read_text())
    assert [(r["concurrency"], r["orders"], r["fulfilled"]) for r in data["runs"]] == [
        (1, 3, 3),
        (10, 20, 20),
    ]
    assert data["ratio"] > 0 and data["carrier_latency_ms"] == 20

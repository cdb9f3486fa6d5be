"""`fulfillment demo` and the worker-concurrency benchmark, run as a user would run them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from fulfillment import views
from fulfillment.bootstrap import bootstrap
from fulfillment.config import Settings
from fulfillment.entrypoints.demo_mix import CATALOGUE, Scenario, plan_orders, seed_lots

REPO_ROOT = Path(__file__).resolve().parents[2]
FULFILLMENT = Path(sys.executable).parent / "fulfillment"
OUTCOMES = (
    "delivered",
    "fulfilled, not yet delivered",
    "cancelled: prescription_expired",
    "cancelled: insufficient_stock",
    "cancelled: unsupported_destination",
    "cancelled: retries_exhausted",
    "cancelled: verification_rejected",
    "cancelled: customer_request",
)
SECTIONS = (
    "Outcomes (final order status)",
    "Verification and cancellation",
    "Timings",
    "Inventory",
    "Lots: units shipped of seeded, by days to expiry",
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
    """The number in the summary table row `label` (not in the progress lines)."""
    match = re.search(rf"^[│┃|]\s*{re.escape(label)}\s*[│┃|]\s*(\d+)", output, re.MULTILINE)
    assert match, f"no {label!r} row in the summary:\n{output}"
    return int(match.group(1))


def test_demo_runs_the_whole_lifecycle_and_keeps_inventory_consistent(tmp_path: Path) -> None:
    result = _demo(tmp_path, "--orders", "40", "--seed", "3")

    output = result.stdout
    assert result.returncode == 0, output + result.stderr
    for section in SECTIONS:
        assert section in output, f"no {section!r} section:\n{output}"
    for outcome in OUTCOMES:
        if outcome != "fulfilled, not yet delivered":  # the demo waits for deliveries
            assert _count(output, outcome) >= 1, f"no order ended {outcome}:\n{output}"
    assert sum(_count(output, outcome) for outcome in OUTCOMES) == 40
    assert _count(output, "stuck (not finished)") == 0
    assert _count(output, "approved by the pharmacist") >= 1
    assert _count(output, "rejected by the pharmacist") >= 1
    assert _count(output, "clarification requested, then decided") == 1
    assert _count(output, "verification not required by the policy") >= 1
    requested = _count(output, "cancellations requested by customers")
    assert requested >= 1
    assert (
        _count(output, "cancelled as the customer asked") + _count(output, "too late to cancel")
        == requested
    )
    assert "inventory invariant holds" in output
    assert "FEFO held" in output
    assert "latency p95" in output and "orders/s" in output and "delivery p50" in output
    # The compensated example shows LIFO: the reservation is released before the prescription.
    example = output[output.index("Example: order") :]
    assert example.index("InventoryReleased") < example.index("PrescriptionCancelled")
    database = tmp_path / "fulfillment-demo.db"
    command = "FULFILLMENT_DATABASE_URL=sqlite:///fulfillment-demo.db fulfillment orders list"
    assert command in output
    assert database.exists()
    _check_the_demo_database(database)


def _check_the_demo_database(database: Path) -> None:
    """What the demo left in its database, read as an operator would (the views)."""
    app = bootstrap(Settings(database_url=f"sqlite:///{database}"), pool_size=2)
    try:
        orders: list[dict[str, Any]] = []
        cursor = None
        while True:
            page, cursor = views.list_orders(app, None, views.MAX_LIMIT, cursor)
            orders += page
            if cursor is None:
                break
        assert len(orders) == 40
        by_status = Counter(o["status"] for o in orders)
        reasons = Counter(o["reason"] for o in orders if o["status"] == "cancelled")
        assert by_status["delivered"] >= 1, by_status
        assert by_status["awaiting_verification"] == 0, by_status
        assert reasons["verification_rejected"] >= 1, reasons
        assert reasons["customer_request"] >= 1, reasons
        rejected = [o for o in orders if o["reason"] == "verification_rejected"]
        assert all(o["verification"] == {"status": "rejected", "by": "ph-demo"} for o in rejected)
        delivered = [o for o in orders if o["status"] == "delivered"]
        assert all(o["shipment"]["status"] == "delivered" for o in delivered)
        # The short-dated lots (inside the 30-day minimum shelf life) were never used: no
        # order took units of them, and they hold what was seeded.
        today = datetime.now(UTC).date()  # the demo's: its lots expire relative to it
        for product in CATALOGUE:
            seeded = seed_lots(product, today)[0]
            level = views.get_inventory(app, product.sku)
            assert level is not None and level["dea_schedule"] == product.dea_schedule
            short = next(lot for lot in level["lots"] if lot["lot"] == seeded.lot)
            assert date.fromisoformat(short["expires_on"]) < today + timedelta(days=30)
            assert short["on_hand"] == seeded.on_hand and short["reserved"] == 0
            assert views.lot_orders(app, product.sku, short["lot"]) == []
            for order in orders:
                assert short["lot"] not in {lot["lot"] for lot in order["lots"]}, order
        # FEFO: the first usable lot (~200 days) is drawn first, so every product that
        # shipped anything shipped from it.
        shipped = Counter(
            (lot["sku"], lot["lot"])
            for o in orders
            if o["status"] == "delivered"
            for lot in o["lots"]
        )
        assert shipped
        for sku in {sku for sku, _ in shipped}:
            product = next(p for p in CATALOGUE if p.sku == sku)
            assert shipped[sku, seed_lots(product, today)[1].lot] >= 1, (sku, shipped)
    finally:
        app.close()


def test_no_patient_data_in_the_logs_of_a_whole_demo_run(tmp_path: Path) -> None:
    """Every line the demo prints, its logs at DEBUG included (retries, failed steps,
    compensations, rejections), holds none of its patients, addresses or prescribers;
    and its database file and WAL hold them only sealed."""
    command = (
        [str(FULFILLMENT)]
        if FULFILLMENT.exists()
        else [sys.executable, "-m", "fulfillment.entrypoints.cli"]
    )
    result = subprocess.run(
        [*command, "demo", "--orders", "60", "--seed", "11"],
        cwd=tmp_path,
        env={**_env(), "FULFILLMENT_LOG_LEVEL": "DEBUG"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    logs = result.stdout + result.stderr
    assert "attempt" in logs  # the failures were there to be logged
    database = tmp_path / "fulfillment-demo.db"
    app = bootstrap(Settings(database_url=f"sqlite:///{database}"), pool_size=2)
    try:
        secrets: set[str] = set()
        for event in views.events_after(app, 0, views.MAX_LIMIT):
            if event["type"] == "OrderCreated":
                data = event["data"]
                secrets |= {
                    data["prescription"]["patient_name"],
                    data["prescription"]["prescriber_id"],
                }
                secrets |= {data["shipping_address"]["name"], data["shipping_address"]["line1"]}
    finally:
        app.close()
    assert len(secrets) > 60
    stored = b"".join(
        path.read_bytes()
        for path in (database, database.with_name(database.name + "-wal"))
        if path.exists()
    ).decode("utf-8", errors="replace")
    assert [s for s in secrets if s in logs] == []
    assert [s for s in secrets if s in stored] == []


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

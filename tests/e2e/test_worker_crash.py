"""A worker process killed with SIGKILL mid-flight loses nothing and duplicates nothing.

Sixty orders (most deliverable, some to an unsupported country, some competing for
scarce stock) are worked on by a real `fulfillment worker` process, which is killed
with `kill -9` while sagas are in flight. Two fresh worker processes then take over
at once, and while both run, thirty more orders arrive, so the two share the work
(on SQLite: two processes contending for the one write lock). Every saga must end,
each order with at most one prescription, reservation and shipment, the stock exactly
right, and every event stream without gaps.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from saga_testkit import place_order
from sqlalchemy import select

from fulfillment.adapters import tables as t
from fulfillment.bootstrap import App
from fulfillment.service_layer import commands as c

from .processes import Fate, Ledger, jobs_processed, wait_until, worker_processes

pytestmark = pytest.mark.slow

FIRST_BATCH = 60
ORDERS = 90
ASPIRIN_ON_HAND = 1000
INSULIN_ON_HAND = 5
WORKER_SETTINGS = {
    "carrier_latency_ms": 30,
    "retry_backoff_seconds": 0.01,
    "job_lease_seconds": 2,
    "carrier_countries": "US,CA,GB",
}


def place_orders(app: App, numbers: range, kinds: dict[str, str]) -> int:
    """Place a mix of orders, noting order id -> kind; returns the ASPIRIN they order."""
    aspirin = 0
    for i in numbers:
        kind = ("deliverable", "deliverable", "abroad", "deliverable", "scarce", "deliverable")[
            i % 6
        ]
        if kind == "scarce":
            items = {"INSULIN": 1}
        else:
            items = {"ASPIRIN": 1 + i % 3}
            if kind == "deliverable":
                aspirin += 1 + i % 3
        order_id = f"order-{i:03d}"
        kinds[order_id] = kind
        place_order(
            app,
            order_id,
            items,
            country="BR" if kind == "abroad" else "US",
            customer_id=f"customer-{i % 7}",
            patient_name=f"Patient {i}",
        )
    return aspirin


def _streams(ledger: Ledger, orders: list[str]) -> str:
    """The events of these orders' streams (what a failure message shows)."""
    with ledger._read() as conn:
        rows = conn.execute(
            select(t.events.c.stream_id, t.events.c.version, t.events.c.type)
            .where(
                t.events.c.stream_id.in_([f"{p}-{o}" for o in orders for p in ("order", "saga")])
            )
            .order_by(t.events.c.position)
        ).all()
    return "; ".join(f"{s}#{v} {ty}" for s, v, ty in rows) or "none"


def test_killed_worker_leaves_no_saga_unfinished_or_duplicated(
    make_app: Callable[..., App], database_url: str, tmp_path: Path
) -> None:
    app = make_app()
    app.bus.handle(c.SetInventory("ASPIRIN", ASPIRIN_ON_HAND))
    app.bus.handle(c.SetInventory("INSULIN", INSULIN_ON_HAND))
    kinds: dict[str, str] = {}
    aspirin_ordered = place_orders(app, range(FIRST_BATCH), kinds)
    ledger = Ledger(database_url)
    try:
        with worker_processes(tmp_path, database_url) as start:
            doomed = start(8, **WORKER_SETTINGS)
            wait_until(
                lambda: ledger.finished_orders() >= 5 and ledger.job_counts().get("running"),
                timeout=60,
                what=f"first orders finished by worker {doomed.pid}",
            )
            doomed.kill()
            finished_at_kill = ledger.finished_orders()
            held_by_the_dead = ledger.job_counts().get("running", 0)
            assert finished_at_kill < FIRST_BATCH, "it finished everything before the kill"

            survivors = [start(8, **WORKER_SETTINGS), start(8, **WORKER_SETTINGS)]
            wait_until(
                lambda: all(w.said("running with concurrency") for w in survivors),
                60,
                "both up",
                context=lambda: "\n".join(w.output() + w.stacks() for w in survivors),
            )
            aspirin_ordered += place_orders(app, range(FIRST_BATCH, ORDERS), kinds)
            wait_until(
                lambda: ledger.finished_orders() >= ORDERS and not ledger.job_counts(),
                timeout=60,
                what="every saga finished after the crash",
                context=lambda: (
                    f"{ledger.finished_orders()} of {ORDERS} finished; jobs: "
                    + "; ".join(
                        f"{j.saga_id} {j.kind} {j.status} claims={j.claims} {j.last_error}"
                        for j in ledger.jobs()[:10]
                    )
                    + f"; unfinished: {_streams(ledger, sorted(set(kinds) - set(ledger.fates())))}"
                ),
            )
            for worker in survivors:
                worker.terminate()
            for worker in survivors:
                assert worker.wait(30) == 0, worker.output()
                assert jobs_processed(worker.output()) > 0, worker.output()

        assert held_by_the_dead > 0, "no job was in flight when the worker was killed"
        fates = ledger.fates()
        assert set(fates) == set(kinds)
        by_kind: dict[str, Counter[Fate]] = {}
        for order_id, fate in fates.items():
            by_kind.setdefault(kinds[order_id], Counter())[fate] += 1
        assert by_kind == {
            "deliverable": Counter({Fate("fulfilled", None): 60}),
            "abroad": Counter({Fate("cancelled", "unsupported_destination"): 15}),
            "scarce": Counter(
                {Fate("fulfilled", None): 5, Fate("cancelled", "insufficient_stock"): 10}
            ),
        }
        # Each order and each saga ended exactly once, one way.
        assert ledger.finished_orders() == ORDERS
        assert all(len(ends) == 1 for ends in ledger.saga_end_events().values())
        assert len(ledger.saga_end_events()) == ORDERS

        for table in (t.prescriptions, t.inventory_reservations, t.shipments):
            assert ledger.orders_with_more_than_one(table) == [], table.name
        fulfilled = {o for o, fate in fates.items() if fate.status == "fulfilled"}
        shipments = ledger.records(t.shipments)
        assert set(shipments) == fulfilled
        assert set(shipments.values()) == {"initiated"}
        reservations = ledger.records(t.inventory_reservations)
        assert {o for o, s in reservations.items() if s == "consumed"} == fulfilled
        assert "reserved" not in reservations.values()
        assert "active" not in ledger.records(t.prescriptions).values()

        stock = ledger.inventory()
        assert all(0 <= reserved <= on_hand for on_hand, reserved in stock.values())
        assert stock == {
            "ASPIRIN": (ASPIRIN_ON_HAND - aspirin_ordered, 0),
            "INSULIN": (0, 0),
        }

        assert ledger.streams_with_gaps() == []
        assert len(ledger.stream_ids()) == 2 * ORDERS
    finally:
        ledger.close()

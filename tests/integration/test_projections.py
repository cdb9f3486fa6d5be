"""The order_summaries projection on every backend: what it shows, and that it is exact.

Orders run through the real command bus and worker; the projector follows the event log.
The tests check the rows an operator or API client reads, that a batch applied twice (or
by two projectors at once) changes nothing, and that a rebuild gives the same rows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import saga_testkit
from saga_testkit import failing_job, run_jobs
from sqlalchemy import select

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import create_db_engine
from fulfillment.adapters.projections import Projector, ProjectorThread, row_from_db
from fulfillment.bootstrap import App
from fulfillment.domain.errors import TransientFailure
from fulfillment.service_layer import commands as c

MakeApp = Callable[..., App]


# --- helpers ----------------------------------------------------------------------------


# Orders of 2 ASPIRIN for cust-7: the assertions name the customer, the stock counts on 2.
place_order = partial(saga_testkit.place_order, qty=2, customer_id="cust-7")


def stock(app: App, sku: str, on_hand: int) -> None:
    app.bus.handle(c.SetInventory(sku=sku, on_hand=on_hand))


def release_keeps_failing(app: App) -> Callable[..., Any]:
    """Make the release-inventory compensation fail transiently; returns what restores it."""

    return failing_job(
        app, "release_inventory", lambda: TransientFailure("inventory service unreachable")
    )


def summaries(app: App) -> dict[str, dict[str, Any]]:
    with app.engine.connect() as conn:
        rows = conn.execute(select(t.order_summaries)).all()
    return {r.order_id: row_from_db(r._mapping) for r in rows}


def summary(app: App, order_id: str) -> dict[str, Any]:
    return summaries(app)[order_id]


def steps(row: dict[str, Any]) -> dict[str, tuple[str, int]]:
    return {s["name"]: (s["status"], s["attempts"]) for s in row["steps"]}


def event_count(app: App) -> int:
    with app.engine.connect() as conn:
        return len(conn.execute(select(t.events.c.position)).all())


# --- what the rows show -------------------------------------------------------------------


def test_a_fulfilled_order_shows_every_step_done_and_its_shipment(app: App) -> None:
    stock(app, "ASPIRIN", 10)
    place_order(app, "o-happy", {"ASPIRIN": 3})
    run_jobs(app)
    Projector(app.engine, app.mapper).catch_up()

    row = summary(app, "o-happy")
    assert row["status"] == "fulfilled"
    assert row["reason"] is None
    assert row["saga_status"] == "completed"
    assert row["customer_id"] == "cust-7"
    assert row["items"] == [{"sku": "ASPIRIN", "quantity": 3}]
    assert steps(row) == {
        "create_prescription": ("succeeded", 1),
        "verify_prescription": ("succeeded", 0),  # by policy, in the step before it
        "reserve_inventory": ("succeeded", 1),
        "initiate_shipment": ("succeeded", 1),
        "await_pickup": ("succeeded", 0),  # picked up as booked
    }
    assert row["verification"] == {"status": "not_required", "by": "policy"}
    assert row["lots"] == [{"sku": "ASPIRIN", "lot": "default", "quantity": 3}]
    assert row["shipment"]["status"] == "in_transit"
    assert row["shipment"]["tracking_number"].startswith("SP")
    assert row["finished_at"] is not None and row["finished_at"] >= row["placed_at"]


def test_every_order_status_of_the_lifecycle_fits_its_row(make_app: MakeApp) -> None:
    """The longest statuses and reasons are stored as they are (the column was once too
    narrow for `awaiting_verification` on PostgreSQL and MariaDB)."""
    from fulfillment.domain.status import OrderStatus

    app = make_app(verification_required_for="all")
    stock(app, "ASPIRIN", 10)
    place_order(app, "o-waiting", {"ASPIRIN": 1})
    run_jobs(app)
    Projector(app.engine, app.mapper).catch_up()

    row = summary(app, "o-waiting")
    assert row["status"] == "awaiting_verification"
    assert row["verification"] == {"status": "pending", "by": None}
    widest = max(OrderStatus, key=len)
    assert len(widest) <= t.order_summaries.c.status.type.length  # type: ignore[attr-defined]


def test_a_cancelled_order_shows_its_reason_and_the_undone_steps(app: App) -> None:
    stock(app, "ASPIRIN", 10)
    place_order(app, "o-nowhere", country="ZZ")
    run_jobs(app)
    Projector(app.engine, app.mapper).catch_up()

    row = summary(app, "o-nowhere")
    assert row["status"] == "cancelled"
    assert row["reason"] == "unsupported_destination"
    assert row["saga_status"] == "compensated"
    assert steps(row) == {
        "create_prescription": ("compensated", 1),
        "verify_prescription": ("succeeded", 0),
        "reserve_inventory": ("compensated", 1),
        "initiate_shipment": ("failed", 1),
        "await_pickup": ("pending", 0),
    }
    assert row["shipment"] is None


def test_an_order_whose_compensation_keeps_failing_needs_attention(make_app: MakeApp) -> None:
    app = make_app(max_attempts=2)
    stock(app, "ASPIRIN", 10)
    restore_release = release_keeps_failing(app)
    place_order(app, "o-parked", country="ZZ")
    run_jobs(app)
    projector = Projector(app.engine, app.mapper)
    projector.catch_up()

    row = summary(app, "o-parked")
    assert (row["status"], row["saga_status"]) == ("needs_attention", "compensation_failed")
    assert row["reason"] == "unsupported_destination"
    assert steps(row)["reserve_inventory"] == ("compensation_failed", 1)
    assert row["finished_at"] is None

    # The operator fixes the inventory service and retries: the order ends cancelled.
    restore_release()
    app.bus.handle(c.ResumeSaga(saga_id="o-parked"))
    run_jobs(app)
    projector.catch_up()
    row = summary(app, "o-parked")
    assert (row["status"], row["saga_status"]) == ("cancelled", "compensated")


def test_an_order_not_yet_worked_on_is_pending_with_every_step_pending(app: App) -> None:
    place_order(app, "o-new")
    Projector(app.engine, app.mapper).catch_up()

    row = summary(app, "o-new")
    assert (row["status"], row["saga_status"]) == ("pending", "running")
    assert set(steps(row).values()) == {("pending", 0)}
    assert row["finished_at"] is None and row["shipment"] is None


# --- exactly once ---------------------------------------------------------------------------


def test_a_batch_applied_twice_changes_nothing(app: App) -> None:
    stock(app, "ASPIRIN", 10)
    place_order(app, "o-1")
    place_order(app, "o-2", country="ZZ")
    run_jobs(app)
    first, second = Projector(app.engine, app.mapper), Projector(app.engine, app.mapper)

    batch = first.read_batch()
    same_batch = second.read_batch()
    assert batch is not None and same_batch == batch

    assert first.commit_batch(batch) is True
    after_first = (summaries(app), first.checkpoint())
    assert second.commit_batch(same_batch) is False  # its checkpoint moved: rejected
    assert first.commit_batch(batch) is False  # and so is a plain re-run of the same batch
    assert (summaries(app), first.checkpoint()) == after_first
    assert first.checkpoint() == batch.end


def test_concurrent_projectors_apply_each_event_exactly_once(app: App, database_url: str) -> None:
    stock(app, "ASPIRIN", 1000)
    # Small batches and separate engines: as many races as possible, as between processes.
    engines = [create_db_engine(database_url, pool_size=2) for _ in range(3)]
    projectors = [Projector(engine, app.mapper, batch_size=7) for engine in engines]
    applied = [0] * len(projectors)
    writing = threading.Event()

    def follow(i: int) -> None:
        while True:
            done = writing.is_set()
            n = projectors[i].run_once()
            applied[i] += n
            if done and n == 0 and projectors[i].checkpoint() >= projectors[i].lag().head:
                return

    threads = [threading.Thread(target=follow, args=(i,)) for i in range(len(projectors))]
    try:
        for thread in threads:
            thread.start()
        for i in range(12):
            place_order(app, f"o-{i:02d}", country="ZZ" if i % 4 == 0 else "US")
        run_jobs(app)
        writing.set()
        for thread in threads:
            thread.join(60)
    finally:
        writing.set()
        for engine in engines:
            engine.dispose()

    assert sum(applied) == event_count(app)  # no event applied twice, none skipped
    assert Projector(app.engine, app.mapper).lag().behind == 0
    incremental = summaries(app)
    Projector(app.engine, app.mapper).rebuild()
    assert summaries(app) == incremental


def test_a_rebuilt_projection_equals_the_one_built_while_orders_ran(app: App) -> None:
    stock(app, "ASPIRIN", 4)
    stock(app, "PARKED", 1)
    release_keeps_failing(app)
    follower = ProjectorThread(Projector(app.engine, app.mapper, batch_size=5), 0.005)
    follower.start()
    try:
        # Stock for two of the five US orders: three are cancelled for want of stock.
        for i in range(5):
            place_order(app, f"o-{i}", {"ASPIRIN": 2})
        # One goes nowhere and parks on the failing release of its reservation.
        place_order(app, "o-parked", {"PARKED": 1}, country="ZZ")
        run_jobs(app)
    finally:
        follower.stop()
    projector = Projector(app.engine, app.mapper)
    projector.catch_up()
    incremental = summaries(app)
    statuses = sorted(row["status"] for row in incremental.values())
    assert statuses == ["cancelled"] * 3 + ["fulfilled"] * 2 + ["needs_attention"]
    checkpoint = projector.checkpoint()

    assert projector.rebuild() == event_count(app)
    assert summaries(app) == incremental
    assert projector.checkpoint() == checkpoint


def test_lag_counts_the_events_the_projection_has_not_applied(app: App) -> None:
    projector = Projector(app.engine, app.mapper)
    assert projector.lag().as_dict() == {"checkpoint": 0, "head": 0, "lag": 0, "behind": 0}

    place_order(app, "o-1")
    written = event_count(app)
    lag = projector.lag()
    assert (lag.checkpoint, lag.behind) == (0, written)
    assert lag.positions == lag.head > 0

    projector.catch_up()
    lag = projector.lag()
    assert (lag.checkpoint, lag.behind, lag.positions) == (lag.head, 0, 0)


def test_the_projector_thread_follows_new_events(app: App) -> None:
    follower = ProjectorThread(app, poll_interval=0.005)
    follower.start()
    try:
        place_order(app, "o-followed")
        deadline = datetime.now(UTC) + timedelta(seconds=30)
        while "o-followed" not in summaries(app) and datetime.now(UTC) < deadline:
            threading.Event().wait(0.01)
    finally:
        follower.stop()
    assert summary(app, "o-followed")["status"] == "pending"
    assert not follower.is_alive()

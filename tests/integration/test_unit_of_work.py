"""The unit of work commits a step's effect, its events, the next job and the end of the
current job in ONE transaction (docs/architecture.md, rule 1), or none of them."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import date, datetime
from functools import partial

import pytest
import saga_testkit
from saga_testkit import wait_until
from sqlalchemy import Table, func, select

from fulfillment.adapters import tables as t
from fulfillment.adapters.event_store import SqlAlchemyEventStore
from fulfillment.bootstrap import App
from fulfillment.domain.events import PrescriptionCreated
from fulfillment.service_layer import order_saga
from fulfillment.service_layer.job_runner import JobOutcome
from fulfillment.service_layer.jobs import ClaimedJob
from fulfillment.service_layer.unit_of_work import StreamAppend

ORDER = "order-1"
SKU = "SKU-A"


class Boom(Exception):
    """The process dies mid-transaction."""


# Order ORDER: 2 of SKU, with 5 in stock, its prescription still valid on 2030-01-01 (a
# test creates the prescription as of that day); the tests count on all of these.
place_order = partial(
    saga_testkit.place_order,
    order_id=ORDER,
    sku=SKU,
    qty=2,
    stock=5,
    expires_on=date(2099, 1, 1),
)


def claim(app: App, kind: str, lease_seconds: float = 30.0, worker: str = "w1") -> ClaimedJob:
    """Claim the next job (waiting out a backoff of a few milliseconds); it must be `kind`."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        jobs = app.queue.claim(1, worker, lease_seconds)
        if jobs:
            assert jobs[0].kind == kind
            return jobs[0]
        time.sleep(0.01)
    raise AssertionError(f"no {kind} job became claimable")


def saga_event_types(app: App, order_id: str = ORDER) -> list[str]:
    with app.uow() as uow:
        return [e.type for e in uow.events.read_stream(f"saga-{order_id}")]


def count(app: App, table: Table) -> int:
    with app.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def reserved(app: App) -> int:
    with app.uow() as uow:
        level = uow.inventory.get(SKU)
    assert level is not None
    return level.reserved


def test_a_step_commits_its_effect_events_next_job_and_the_end_of_its_job_together(
    app: App,
) -> None:
    place_order(app)
    assert app.runner.run(claim(app, "create_prescription")) is JobOutcome.DONE
    job = claim(app, "reserve_inventory")

    assert app.runner.run(job) is JobOutcome.DONE

    assert reserved(app) == 2
    assert count(app, t.inventory_reservations) == 1
    with app.uow() as uow:
        last = uow.events.read_stream(f"saga-{ORDER}")[-1]
    assert last.type == "InventoryReserved"
    started = last.metadata["job_started_at"]  # when the run began, before its event
    assert datetime.fromisoformat(started) <= last.recorded_at
    assert last.metadata == {
        "correlation_id": ORDER,
        "causation_id": f"job:{job.id}",
        "job_started_at": started,
    }
    next_job = app.queue.for_saga(ORDER)
    assert next_job is not None
    assert (next_job.kind, next_job.status, next_job.claims) == ("initiate_shipment", "ready", 0)


def test_a_handler_that_raises_after_its_effects_leaves_nothing_behind(app: App) -> None:
    place_order(app)
    events_before = saga_event_types(app)
    job = claim(app, "create_prescription")

    with pytest.raises(Boom), app.uow(job) as uow:
        saga = uow.sagas.get(ORDER)
        assert saga is not None
        details = order_saga.started(saga).prescription
        prescription_id = uow.prescriptions.create(
            ORDER, details, date(2030, 1, 1), customer_id="c1"
        )
        saga.succeed(
            "create_prescription",
            PrescriptionCreated(
                occurred_at=app.clock.now(), saga_id=ORDER, prescription_id=prescription_id
            ),
        )
        uow.inventory.set_on_hand("SKU-NEW", 3)
        uow.events.append([StreamAppend("order-stray", 0, saga.pending_events, ORDER)])
        raise Boom

    assert count(app, t.prescriptions) == 0
    with app.uow() as uow:
        assert uow.inventory.get("SKU-NEW") is None
        assert uow.events.read_stream("order-stray") == []
    assert saga_event_types(app) == events_before
    # The job is still there, still held by this worker, and can simply run again.
    held = app.queue.for_saga(ORDER)
    assert held is not None and (held.id, held.status) == (job.id, "running")
    assert app.runner.run(job) is JobOutcome.DONE
    assert count(app, t.prescriptions) == 1


def _crash_before_insert(original: Callable[..., None]) -> Callable[..., None]:
    def insert(*args: object) -> None:
        raise Boom("the process died before the events were written")

    return insert


def _crash_after_insert(original: Callable[..., None]) -> Callable[..., None]:
    def insert(*args: object) -> None:
        original(*args)
        raise Boom("the process died after writing the events, before the commit")

    return insert


def _patch_event_insert(
    app: App,
    monkeypatch: pytest.MonkeyPatch,
    crash: Callable[[Callable[..., None]], Callable[..., None]],
) -> None:
    """Crash where the events are written: the unit of work's own append, and the insert
    of a group commit (the worker's default), the stock group's included."""
    monkeypatch.setattr(SqlAlchemyEventStore, "append", crash(SqlAlchemyEventStore.append))
    for group in (app.group, app.stock_group):
        if group is not None:
            monkeypatch.setattr(group, "insert_events", crash(group.insert_events))


@pytest.mark.parametrize("crash", [_crash_before_insert, _crash_after_insert])
def test_a_crash_while_storing_the_events_rolls_back_the_reservation(
    app: App,
    monkeypatch: pytest.MonkeyPatch,
    crash: Callable[[Callable[..., None]], Callable[..., None]],
) -> None:
    place_order(app)
    assert app.runner.run(claim(app, "create_prescription")) is JobOutcome.DONE
    events_before = saga_event_types(app)
    job = claim(app, "reserve_inventory")

    _patch_event_insert(app, monkeypatch, crash)
    assert app.runner.run(job) is JobOutcome.JOB_FAILED
    monkeypatch.undo()

    assert reserved(app) == 0
    assert count(app, t.inventory_reservations) == 0
    assert saga_event_types(app) == events_before
    left = app.queue.for_saga(ORDER)
    assert left is not None and left.kind == "reserve_inventory" and left.failures == 1

    # Claimable again (after its short backoff), and this time it reserves exactly once.
    again = claim(app, "reserve_inventory", worker="w2")
    assert again.claim_token != job.claim_token
    assert app.runner.run(again) is JobOutcome.DONE
    assert reserved(app) == 2
    assert count(app, t.inventory_reservations) == 1
    assert saga_event_types(app) == [*events_before, "InventoryReserved"]


def test_a_worker_whose_lease_was_taken_over_commits_nothing(app: App) -> None:
    place_order(app)
    stale = claim(app, "create_prescription", lease_seconds=0.05, worker="slow")
    wait_until(lambda: app.queue.reap_expired() != 0, 10, "the expired lease is reaped")
    fresh = claim(app, "create_prescription", worker="fast")

    assert app.runner.run(stale) is JobOutcome.LEASE_LOST
    assert count(app, t.prescriptions) == 0
    assert "PrescriptionCreated" not in saga_event_types(app)

    assert app.runner.run(fresh) is JobOutcome.DONE
    assert count(app, t.prescriptions) == 1
    assert saga_event_types(app).count("PrescriptionCreated") == 1


def test_a_job_run_on_a_stale_cache_runs_again_on_fresh_events(
    make_app: Callable[..., App],
) -> None:
    """A job's unit of work trusts the process's stream cache; if another process moved
    the saga on meanwhile, the job must neither skip its step nor consume its job."""
    app, other = make_app(), make_app()
    place_order(app)
    assert app.runner.run(claim(app, "create_prescription")) is JobOutcome.DONE
    # Another worker process takes the saga one step further: this process's cached
    # saga still awaits the reservation.
    assert other.runner.run(claim(other, "reserve_inventory", worker="w2")) is JobOutcome.DONE

    assert app.runner.run(claim(app, "initiate_shipment")) is JobOutcome.DONE

    assert saga_event_types(app)[-2:] == ["ShipmentInitiated", "ShipmentPickedUp"]
    assert count(app, t.shipments) == 1
    left = app.queue.for_saga(ORDER)
    assert left is not None and left.kind == "complete"


def test_the_stream_cache_keeps_sagas_in_flight_and_lets_finished_ones_go(app: App) -> None:
    place_order(app)
    for kind in ("create_prescription", "reserve_inventory", "initiate_shipment"):
        assert app.runner.run(claim(app, kind)) is JobOutcome.DONE
    assert app.cache.get(f"saga-{ORDER}"), "a saga in flight stays cached between its steps"

    assert app.runner.run(claim(app, "complete")) is JobOutcome.DONE

    assert saga_event_types(app)[-1] == "OrderFulfillmentSagaCompleted"
    assert app.cache.get(f"saga-{ORDER}") == ()
    assert app.cache.get(f"order-{ORDER}") == ()

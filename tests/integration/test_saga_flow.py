"""The saga end to end on every backend: each domain rule of docs/api.md.

Orders go in through the command bus, the worker runs their jobs until the queue is idle,
and the tests look at what a user would see: the order's fate, the saga's events in
commit order, stock levels and the prescription / reservation / shipment records.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from saga_testkit import history, order_of, place_order, run_jobs, saga_of
from sqlalchemy import func, select

from fulfillment.adapters import job_queue
from fulfillment.adapters import tables as t
from fulfillment.adapters.carrier import SimulatedCarrier
from fulfillment.bootstrap import App
from fulfillment.domain.events import SagaCompensationStarted
from fulfillment.domain.status import (
    OrderStatus,
    PrescriptionStatus,
    ReservationStatus,
    SagaStatus,
    ShipmentStatus,
)
from fulfillment.domain.values import OrderLine, PrescriptionDetails, ShippingAddress
from fulfillment.service_layer import commands as c
from fulfillment.service_layer import order_saga
from fulfillment.service_layer.jobs import JobSpec
from fulfillment.service_layer.order_saga import ORDER_SAGA, Step

COUNTRIES = ("US", "CA", "GB")
MakeApp = Callable[..., App]


# --- helpers ----------------------------------------------------------------------------


def today_utc() -> date:
    return datetime.now(UTC).date()


def saga_events(app: App, order_id: str) -> list[Any]:
    with app.uow() as uow:
        return uow.events.load(f"saga-{order_id}")


def stock(app: App, sku: str) -> tuple[int, int]:
    """(on_hand, reserved) of a SKU."""
    with app.uow() as uow:
        level = uow.inventory.get(sku)
    assert level is not None
    return level.on_hand, level.reserved


def rows(app: App, table: Any, order_id: str) -> list[Any]:
    with app.engine.connect() as conn:
        return list(conn.execute(select(table).where(table.c.order_id == order_id)))


def statuses(app: App, order_id: str) -> dict[str, list[str]]:
    """Status of every prescription / reservation / shipment record of the order."""
    return {
        name: [r.status for r in rows(app, table, order_id)]
        for name, table in (
            ("prescriptions", t.prescriptions),
            ("reservations", t.inventory_reservations),
            ("shipments", t.shipments),
        )
    }


def event_count(app: App) -> int:
    with app.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(t.events)).scalar_one())


def enqueue_again(app: App, order_id: str, kind: str) -> None:
    """Put a job back in the queue, as a duplicate delivery would."""
    with app.engine.begin() as conn:
        job_queue.enqueue(conn, [JobSpec(order_id, kind)])


class FailFirstCalls:
    """`fail_keys` for SimulatedCarrier: the first `n` calls per idempotency key fail."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, key: str) -> bool:
        with self._lock:
            self.calls[key] += 1
            return self.calls[key] <= self.n


@pytest.fixture
def stocked(make_app: MakeApp) -> App:
    """An app whose carrier ships to US/CA/GB, with 10 ASPIRIN and 5 INSULIN on hand."""
    app = make_app(carrier_countries=COUNTRIES, max_attempts=3)
    app.bus.handle(c.SetInventory("ASPIRIN", 10))
    app.bus.handle(c.SetInventory("INSULIN", 5))
    return app


# --- happy path -------------------------------------------------------------------------


def test_order_with_valid_prescription_and_stock_is_fulfilled(stocked: App) -> None:
    place_order(stocked, "o-1", {"ASPIRIN": 3, "INSULIN": 2})
    run_jobs(stocked)

    order = order_of(stocked, "o-1")
    saga = saga_of(stocked, "o-1")
    assert order.status is OrderStatus.FULFILLED
    assert saga.status is SagaStatus.COMPLETED
    assert order.tracking_number == order_saga.tracking_number(saga)
    assert history(stocked, "o-1") == [
        "OrderCreated",
        "OrderFulfillmentSagaStarted",
        "PrescriptionCreated",
        "PrescriptionVerified",  # by policy: no SKU with a DEA schedule
        "InventoryReserved",
        "ShipmentInitiated",
        "ShipmentPickedUp",  # the simulated carrier picks up as it books
        "OrderFulfillmentSagaCompleted",
        "OrderFulfilled",
    ]
    # The waits were passed in their steps' transactions: no attempt of their own.
    assert [s.attempts for s in saga.steps.values()] == [1, 0, 1, 1, 0, 1]
    assert stock(stocked, "ASPIRIN") == (7, 0)
    assert stock(stocked, "INSULIN") == (3, 0)
    assert statuses(stocked, "o-1") == {
        "prescriptions": [PrescriptionStatus.DISPENSED],
        "reservations": [ReservationStatus.CONSUMED],
        "shipments": [ShipmentStatus.INITIATED],
    }
    assert rows(stocked, t.shipments, "o-1")[0].tracking_number == order.tracking_number
    assert stocked.queue.counts() == {}


def test_prescription_expiring_today_is_still_valid(stocked: App) -> None:
    place_order(stocked, "o-today", {"ASPIRIN": 1}, expires_on=today_utc())
    run_jobs(stocked)

    assert order_of(stocked, "o-today").status is OrderStatus.FULFILLED


def test_repeated_lines_of_one_sku_reserve_their_sum(stocked: App) -> None:
    stocked.bus.handle(
        c.CreateOrder(
            order_id="o-twice",
            customer_id="cust-1",
            items=(OrderLine("INSULIN", 2), OrderLine("INSULIN", 3)),
            prescription=PrescriptionDetails("dr", "Ada", today_utc() + timedelta(days=1)),
            shipping_address=ShippingAddress("Ada", "1 Way", "London", "N1", "GB"),
        )
    )
    run_jobs(stocked)

    assert order_of(stocked, "o-twice").status is OrderStatus.FULFILLED
    assert stock(stocked, "INSULIN") == (0, 0)


# --- business failures ------------------------------------------------------------------


def test_expired_prescription_cancels_order_with_nothing_to_compensate(stocked: App) -> None:
    place_order(stocked, "o-exp", {"ASPIRIN": 1}, expires_on=today_utc() - timedelta(days=1))
    run_jobs(stocked)

    order = order_of(stocked, "o-exp")
    saga = saga_of(stocked, "o-exp")
    assert order.status is OrderStatus.CANCELLED
    assert order.reason == "prescription_expired"
    assert saga.status is SagaStatus.COMPENSATED
    assert saga.failed_step == Step.CREATE_PRESCRIPTION
    assert history(stocked, "o-exp") == [
        "OrderCreated",
        "OrderFulfillmentSagaStarted",
        "PrescriptionCreationFailed",
        "SagaCompensationStarted",
        "OrderCancelled",
    ]
    started = [e for e in saga_events(stocked, "o-exp") if isinstance(e, SagaCompensationStarted)]
    assert started[0].compensations == ()
    assert statuses(stocked, "o-exp") == {"prescriptions": [], "reservations": [], "shipments": []}
    assert stock(stocked, "ASPIRIN") == (10, 0)


@pytest.mark.parametrize(
    "items",
    [
        pytest.param({"ASPIRIN": 2, "UNKNOWN": 1}, id="unknown-sku"),
        pytest.param({"ASPIRIN": 2, "INSULIN": 6}, id="not-enough-stock"),
    ],
)
def test_missing_stock_cancels_whole_order_and_leaves_stock_as_before(
    stocked: App, items: dict[str, int]
) -> None:
    place_order(stocked, "o-short", items)
    run_jobs(stocked)

    order = order_of(stocked, "o-short")
    assert order.status is OrderStatus.CANCELLED
    assert order.reason == "insufficient_stock"
    assert saga_of(stocked, "o-short").status is SagaStatus.COMPENSATED
    assert history(stocked, "o-short") == [
        "OrderCreated",
        "OrderFulfillmentSagaStarted",
        "PrescriptionCreated",
        "PrescriptionVerified",
        "InventoryReservationFailed",
        "SagaCompensationStarted",
        "PrescriptionCancelled",
        "OrderCancelled",
    ]
    # All or nothing: the ASPIRIN line that was available is not held back.
    assert stock(stocked, "ASPIRIN") == (10, 0)
    assert stock(stocked, "INSULIN") == (5, 0)
    assert statuses(stocked, "o-short") == {
        "prescriptions": [PrescriptionStatus.CANCELLED],
        "reservations": [],
        "shipments": [],
    }


def test_unsupported_destination_compensates_in_reverse_order(stocked: App) -> None:
    place_order(stocked, "o-br", {"ASPIRIN": 4}, country="BR")
    run_jobs(stocked)

    order = order_of(stocked, "o-br")
    assert order.status is OrderStatus.CANCELLED
    assert order.reason == "unsupported_destination"
    assert history(stocked, "o-br") == [
        "OrderCreated",
        "OrderFulfillmentSagaStarted",
        "PrescriptionCreated",
        "PrescriptionVerified",
        "InventoryReserved",
        "ShipmentInitiationFailed",
        "SagaCompensationStarted",
        "InventoryReleased",
        "PrescriptionCancelled",
        "OrderCancelled",
    ]
    started = [e for e in saga_events(stocked, "o-br") if isinstance(e, SagaCompensationStarted)]
    assert [str(x) for x in started[0].compensations] == [
        "release_inventory",
        "cancel_prescription",
    ]
    assert stock(stocked, "ASPIRIN") == (10, 0)
    assert statuses(stocked, "o-br") == {
        "prescriptions": [PrescriptionStatus.CANCELLED],
        "reservations": [ReservationStatus.RELEASED],
        "shipments": [],
    }


def test_cancelled_order_frees_stock_for_the_next_order(stocked: App) -> None:
    place_order(stocked, "o-first", {"INSULIN": 5}, country="BR")
    run_jobs(stocked)
    place_order(stocked, "o-second", {"INSULIN": 5})
    run_jobs(stocked)

    assert order_of(stocked, "o-first").status is OrderStatus.CANCELLED
    assert order_of(stocked, "o-second").status is OrderStatus.FULFILLED
    assert stock(stocked, "INSULIN") == (0, 0)


# --- transient failures -----------------------------------------------------------------


def test_transient_carrier_fault_is_retried_then_succeeds(make_app: MakeApp) -> None:
    flaky = FailFirstCalls(1)
    app = make_app(
        max_attempts=3,
        carrier=SimulatedCarrier(COUNTRIES, fail_keys=flaky),
    )
    app.bus.handle(c.SetInventory("ASPIRIN", 10))
    place_order(app, "o-flaky", {"ASPIRIN": 1})
    run_jobs(app)

    saga = saga_of(app, "o-flaky")
    assert order_of(app, "o-flaky").status is OrderStatus.FULFILLED
    assert saga.status is SagaStatus.COMPLETED
    assert saga.steps[Step.INITIATE_SHIPMENT].attempts == 2
    assert saga.steps[Step.INITIATE_SHIPMENT].errors == [
        "carrier unavailable (simulated transient fault)"
    ]
    assert history(app, "o-flaky").count("SagaStepAttemptFailed") == 1
    assert flaky.calls == {"o-flaky:shipment": 2}
    assert len(rows(app, t.shipments, "o-flaky")) == 1
    assert stock(app, "ASPIRIN") == (9, 0)


def test_exhausted_retries_cancel_order_and_compensate(make_app: MakeApp) -> None:
    app = make_app(
        max_attempts=3,
        carrier=SimulatedCarrier(COUNTRIES, fail_keys=lambda key: key.endswith(":shipment")),
    )
    app.bus.handle(c.SetInventory("ASPIRIN", 10))
    place_order(app, "o-down", {"ASPIRIN": 2})
    run_jobs(app)

    order = order_of(app, "o-down")
    saga = saga_of(app, "o-down")
    assert order.status is OrderStatus.CANCELLED
    assert order.reason == "retries_exhausted"
    assert saga.status is SagaStatus.COMPENSATED
    assert saga.steps[Step.INITIATE_SHIPMENT].attempts == 3
    assert history(app, "o-down") == [
        "OrderCreated",
        "OrderFulfillmentSagaStarted",
        "PrescriptionCreated",
        "PrescriptionVerified",
        "InventoryReserved",
        "SagaStepAttemptFailed",
        "SagaStepAttemptFailed",
        "ShipmentInitiationFailed",
        "SagaCompensationStarted",
        "InventoryReleased",
        "PrescriptionCancelled",
        "OrderCancelled",
    ]
    assert stock(app, "ASPIRIN") == (10, 0)
    assert statuses(app, "o-down")["shipments"] == []


def test_max_attempts_setting_bounds_the_attempts(make_app: MakeApp) -> None:
    app = make_app(
        max_attempts=1,
        carrier=SimulatedCarrier(COUNTRIES, fail_keys=FailFirstCalls(1)),
    )
    app.bus.handle(c.SetInventory("ASPIRIN", 10))
    place_order(app, "o-once", {"ASPIRIN": 1})
    run_jobs(app)

    assert order_of(app, "o-once").reason == "retries_exhausted"
    assert "SagaStepAttemptFailed" not in history(app, "o-once")


# --- idempotency ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["create_prescription", "reserve_inventory", "initiate_shipment", "complete"]
)
def test_duplicate_step_job_after_fulfilment_changes_nothing(stocked: App, kind: str) -> None:
    place_order(stocked, "o-dup", {"ASPIRIN": 3})
    run_jobs(stocked)
    before = (event_count(stocked), statuses(stocked, "o-dup"), stock(stocked, "ASPIRIN"))

    enqueue_again(stocked, "o-dup", kind)
    run_jobs(stocked)

    after = (event_count(stocked), statuses(stocked, "o-dup"), stock(stocked, "ASPIRIN"))
    assert after == before
    assert stock(stocked, "ASPIRIN") == (7, 0)
    assert stocked.queue.counts() == {}


@pytest.mark.parametrize("kind", ["release_inventory", "cancel_prescription"])
def test_duplicate_compensation_job_does_not_release_twice(stocked: App, kind: str) -> None:
    place_order(stocked, "o-comp", {"ASPIRIN": 4}, country="BR")
    run_jobs(stocked)
    place_order(stocked, "o-keep", {"ASPIRIN": 6})
    # Reserve o-keep's stock (two jobs) without shipping it yet.
    for _ in range(2):
        (job,) = stocked.queue.claim(1, "test", 30)
        stocked.runner.run(job)
    assert stock(stocked, "ASPIRIN") == (10, 6)
    before = event_count(stocked)

    enqueue_again(stocked, "o-comp", kind)
    claimed = stocked.queue.claim(2, "test", 30)
    (dup,) = [j for j in claimed if j.saga_id == "o-comp"]
    stocked.runner.run(dup)
    for job in claimed:
        if job is not dup:
            stocked.queue.release(job)

    assert event_count(stocked) == before
    assert stock(stocked, "ASPIRIN") == (10, 6)
    run_jobs(stocked)
    assert order_of(stocked, "o-keep").status is OrderStatus.FULFILLED
    assert stock(stocked, "ASPIRIN") == (4, 0)


def test_handler_called_again_for_a_finished_step_changes_nothing(stocked: App) -> None:
    place_order(stocked, "o-again", {"INSULIN": 1})
    (job,) = stocked.queue.claim(1, "test", 30)
    stocked.runner.run(job)  # prescription created; reserve_inventory is queued
    before = history(stocked, "o-again")

    stocked.bus.handle(c.RunSagaJob(saga_id="o-again", kind="create_prescription"))

    assert history(stocked, "o-again") == before
    assert len(rows(stocked, t.prescriptions, "o-again")) == 1
    run_jobs(stocked)
    for kind in ORDER_SAGA.job_kinds:
        stocked.bus.handle(c.RunSagaJob(saga_id="o-again", kind=kind))
    assert order_of(stocked, "o-again").status is OrderStatus.FULFILLED
    assert history(stocked, "o-again")[-1] == "OrderFulfilled"
    assert len(history(stocked, "o-again")) == 9
    assert stock(stocked, "INSULIN") == (4, 0)
    assert statuses(stocked, "o-again") == {
        "prescriptions": [PrescriptionStatus.DISPENSED],
        "reservations": [ReservationStatus.CONSUMED],
        "shipments": [ShipmentStatus.INITIATED],
    }


def test_many_orders_share_stock_without_overselling(stocked: App) -> None:
    for i in range(8):
        place_order(stocked, f"o-{i}", {"INSULIN": 1})
    run_jobs(stocked, 8)

    fates = Counter(order_of(stocked, f"o-{i}").status for i in range(8))
    assert fates == {OrderStatus.FULFILLED: 5, OrderStatus.CANCELLED: 3}
    assert stock(stocked, "INSULIN") == (0, 0)

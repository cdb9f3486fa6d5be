"""Recovery on every backend: parked compensations, deadlines, and leases that run out.

* A compensation that keeps failing parks the saga in `compensation_failed`; the order
  stays open until an operator retries it (`ResumeSaga`).
* A saga or a step past its deadline fails with `saga_timeout` / `step_timeout` and
  compensates, checked against the injected clock.
* A worker that dies holding a job loses its lease; the reaper hands the job to another
  worker, and a worker that comes back late cannot commit its stale work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from saga_testkit import history, order_of, place_order, run_jobs, saga_of, wait_until
from sqlalchemy import select

from fulfillment.adapters import tables as t
from fulfillment.adapters.carrier import SimulatedCarrier
from fulfillment.adapters.clock import FixedClock
from fulfillment.adapters.services import SqlAlchemyInventoryService
from fulfillment.adapters.unit_of_work import SqlAlchemyUnitOfWork
from fulfillment.bootstrap import App
from fulfillment.domain.errors import IllegalTransition, TransientFailure
from fulfillment.domain.status import OrderStatus, SagaStatus, StepStatus
from fulfillment.entrypoints.worker import Worker
from fulfillment.service_layer import commands as c
from fulfillment.service_layer import order_saga
from fulfillment.service_layer.job_runner import JobOutcome
from fulfillment.service_layer.jobs import ClaimedJob
from fulfillment.service_layer.order_saga import Compensation, Step

MakeApp = Callable[..., App]
COUNTRIES = ("US", "CA", "GB")
T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


# --- helpers ----------------------------------------------------------------------------


def next_year() -> date:
    return datetime.now(UTC).date() + timedelta(days=365)


def run_one_job(app: App) -> JobOutcome:
    """Claim and run the single ready job (the saga advances one step)."""
    (job,) = app.queue.claim(1, "test-worker", 30)
    return app.runner.run(job)


def stock(app: App, sku: str) -> tuple[int, int]:
    with app.uow() as uow:
        level = uow.inventory.get(sku)
    assert level is not None
    return level.on_hand, level.reserved


def records(app: App, table: Any, order_id: str) -> list[Any]:
    with app.engine.connect() as conn:
        return list(conn.execute(select(table).where(table.c.order_id == order_id)))


# --- a warehouse system that can be down ------------------------------------------------


class Outage:
    def __init__(self) -> None:
        self.down = True


class UnreliableInventoryService(SqlAlchemyInventoryService):
    """Releasing a reservation fails transiently while the warehouse system is down."""

    def __init__(self, conn: Any, outage: Outage) -> None:
        super().__init__(conn)
        self.outage = outage

    def release(self, order_id: str) -> None:
        if self.outage.down:
            raise TransientFailure("warehouse system unreachable")
        super().release(order_id)


def with_warehouse_outage(app: App) -> Outage:
    """Route the app's commands through units of work whose inventory release may fail."""
    outage = Outage()

    class OutageUnitOfWork(SqlAlchemyUnitOfWork):
        def _begin(self) -> None:
            super()._begin()
            self.inventory = UnreliableInventoryService(self.conn, outage)

    def factory(job: ClaimedJob | None) -> SqlAlchemyUnitOfWork:
        return OutageUnitOfWork(app.engine, app.mapper, job)

    app.bus.uow_factory = factory
    return outage


@pytest.fixture
def outage_app(make_app: MakeApp) -> tuple[App, Outage]:
    """An order to Brazil (unsupported) whose reservation cannot be released yet."""
    app = make_app(carrier_countries=COUNTRIES, max_attempts=3)
    outage = with_warehouse_outage(app)
    app.bus.handle(c.SetInventory("ASPIRIN", 10))
    place_order(app, "o-br", {"ASPIRIN": 4}, country="BR", expires_on=next_year())
    run_jobs(app)
    return app, outage


# --- compensation that keeps failing ----------------------------------------------------


def test_compensation_that_keeps_failing_parks_the_saga(outage_app: tuple[App, Outage]) -> None:
    app, _ = outage_app

    saga = saga_of(app, "o-br")
    assert saga.status is SagaStatus.COMPENSATION_FAILED
    assert saga.parked_error == "warehouse system unreachable"
    assert saga.steps[Step.RESERVE_INVENTORY].status is StepStatus.COMPENSATION_FAILED
    assert saga.steps[Step.RESERVE_INVENTORY].compensation_attempts == 3
    assert saga.compensation_stack == [
        Compensation.CANCEL_PRESCRIPTION,
        Compensation.RELEASE_INVENTORY,
    ]
    assert history(app, "o-br")[-4:] == [
        "SagaCompensationStarted",
        "CompensationAttemptFailed",
        "CompensationAttemptFailed",
        "SagaCompensationFailed",
    ]
    # Not cancelled yet: the stock is still held and nothing runs until an operator acts.
    assert order_of(app, "o-br").status is OrderStatus.PENDING
    assert stock(app, "ASPIRIN") == (10, 4)
    assert app.queue.counts() == {}


def test_operator_retry_finishes_compensation_and_cancels_order(
    outage_app: tuple[App, Outage],
) -> None:
    app, outage = outage_app

    outage.down = False
    app.bus.handle(c.ResumeSaga(saga_id="o-br"))
    run_jobs(app)

    order = order_of(app, "o-br")
    assert order.status is OrderStatus.CANCELLED
    assert order.reason == "unsupported_destination"
    assert saga_of(app, "o-br").status is SagaStatus.COMPENSATED
    assert history(app, "o-br")[-5:] == [
        "SagaCompensationFailed",
        "SagaCompensationRetried",
        "InventoryReleased",
        "PrescriptionCancelled",
        "OrderCancelled",
    ]
    assert stock(app, "ASPIRIN") == (10, 0)
    assert [r.status for r in records(app, t.prescriptions, "o-br")] == ["cancelled"]
    assert [r.status for r in records(app, t.inventory_reservations, "o-br")] == ["released"]


def test_operator_retry_during_the_outage_parks_again_with_fresh_attempts(
    outage_app: tuple[App, Outage],
) -> None:
    app, outage = outage_app

    app.bus.handle(c.ResumeSaga(saga_id="o-br"))
    run_jobs(app)

    assert saga_of(app, "o-br").status is SagaStatus.COMPENSATION_FAILED
    assert history(app, "o-br").count("CompensationAttemptFailed") == 4
    assert history(app, "o-br").count("SagaCompensationFailed") == 2
    assert order_of(app, "o-br").status is OrderStatus.PENDING

    outage.down = False
    app.bus.handle(c.ResumeSaga(saga_id="o-br"))
    run_jobs(app)
    assert order_of(app, "o-br").status is OrderStatus.CANCELLED
    assert stock(app, "ASPIRIN") == (10, 0)


def test_retrying_a_saga_that_is_not_parked_is_refused(make_app: MakeApp) -> None:
    app = make_app()
    app.bus.handle(c.SetInventory("ASPIRIN", 10))
    place_order(app, "o-ok", {"ASPIRIN": 1}, expires_on=next_year())
    run_jobs(app)
    before = history(app, "o-ok")

    with pytest.raises(IllegalTransition):
        app.bus.handle(c.ResumeSaga(saga_id="o-ok"))

    assert history(app, "o-ok") == before
    assert app.queue.counts() == {}


# --- deadlines --------------------------------------------------------------------------


def test_saga_past_its_deadline_fails_with_saga_timeout_and_compensates(
    make_app: MakeApp,
) -> None:
    clock = FixedClock(T0)
    app = make_app(clock=clock, saga_timeout_seconds=600)
    app.bus.handle(c.SetInventory("ASPIRIN", 10))
    place_order(app, "o-late", {"ASPIRIN": 3}, expires_on=date(2030, 6, 1))
    run_one_job(app)  # prescription created
    run_one_job(app)  # inventory reserved
    assert stock(app, "ASPIRIN") == (10, 3)

    clock.advance(601)
    run_jobs(app)

    order = order_of(app, "o-late")
    saga = saga_of(app, "o-late")
    assert order.status is OrderStatus.CANCELLED
    assert order.reason == "saga_timeout"
    assert saga.status is SagaStatus.COMPENSATED
    assert saga.failed_step == Step.INITIATE_SHIPMENT
    assert history(app, "o-late")[-5:] == [
        "ShipmentInitiationFailed",
        "SagaCompensationStarted",
        "InventoryReleased",
        "PrescriptionCancelled",
        "OrderCancelled",
    ]
    assert stock(app, "ASPIRIN") == (10, 0)
    assert records(app, t.shipments, "o-late") == []


def test_saga_within_its_deadline_is_fulfilled(make_app: MakeApp) -> None:
    clock = FixedClock(T0)
    app = make_app(clock=clock, saga_timeout_seconds=600)
    app.bus.handle(c.SetInventory("ASPIRIN", 10))
    place_order(app, "o-on-time", {"ASPIRIN": 3}, expires_on=date(2030, 6, 1))
    run_one_job(app)

    clock.advance(599)
    run_jobs(app)

    assert order_of(app, "o-on-time").status is OrderStatus.FULFILLED


def test_step_past_its_deadline_fails_with_step_timeout(make_app: MakeApp) -> None:
    clock = FixedClock(T0)
    app = make_app(clock=clock, step_timeout_seconds=60, saga_timeout_seconds=3600)
    app.bus.handle(c.SetInventory("ASPIRIN", 10))
    place_order(app, "o-slow", {"ASPIRIN": 3}, expires_on=date(2030, 6, 1))
    run_one_job(app)

    clock.advance(61)
    run_jobs(app)

    order = order_of(app, "o-slow")
    assert order.status is OrderStatus.CANCELLED
    assert order.reason == "step_timeout"
    assert saga_of(app, "o-slow").failed_step == Step.RESERVE_INVENTORY
    assert history(app, "o-slow")[-4:] == [
        "InventoryReservationFailed",
        "SagaCompensationStarted",
        "PrescriptionCancelled",
        "OrderCancelled",
    ]
    assert stock(app, "ASPIRIN") == (10, 0)


# --- leases -----------------------------------------------------------------------------


def test_job_of_a_dead_worker_is_reaped_and_finished_by_another(make_app: MakeApp) -> None:
    carrier = SimulatedCarrier(COUNTRIES)
    app = make_app(carrier=carrier, job_lease_seconds=1.0)
    app.bus.handle(c.SetInventory("ASPIRIN", 10))
    place_order(app, "o-crash", {"ASPIRIN": 2}, expires_on=next_year())
    run_one_job(app)
    run_one_job(app)

    # A worker claims the shipment step, books the carrier, and dies before committing.
    (job,) = app.queue.claim(1, "doomed-worker", 0.3)
    assert job.kind == "initiate_shipment"
    saga = saga_of(app, "o-crash")
    order = order_saga.started(saga)
    booked = carrier.book("o-crash:shipment", order.shipping_address, order.items)

    run_jobs(app)

    order = order_of(app, "o-crash")
    assert order.status is OrderStatus.FULFILLED
    assert order.tracking_number == booked.tracking_number
    assert len(records(app, t.shipments, "o-crash")) == 1
    assert history(app, "o-crash").count("ShipmentInitiated") == 1
    assert stock(app, "ASPIRIN") == (8, 0)


def test_worker_that_lost_its_lease_cannot_commit_stale_work(make_app: MakeApp) -> None:
    app = make_app()
    app.bus.handle(c.SetInventory("ASPIRIN", 10))
    place_order(app, "o-zombie", {"ASPIRIN": 2}, expires_on=next_year())
    (stale,) = app.queue.claim(1, "paused-worker", 0.2)
    wait_until(lambda: app.queue.reap_expired() == 1, 20, "the expired lease is reaped")
    (fresh,) = app.queue.claim(1, "other-worker", 30)
    assert (fresh.id, fresh.kind) == (stale.id, stale.kind)

    assert app.runner.run(stale) is JobOutcome.LEASE_LOST
    assert history(app, "o-zombie") == ["OrderCreated", "OrderFulfillmentSagaStarted"]
    assert records(app, t.prescriptions, "o-zombie") == []

    assert app.runner.run(fresh) is JobOutcome.DONE
    run_jobs(app)
    assert order_of(app, "o-zombie").status is OrderStatus.FULFILLED
    assert len(records(app, t.prescriptions, "o-zombie")) == 1
    assert history(app, "o-zombie").count("PrescriptionCreated") == 1


def test_heartbeats_keep_a_long_step_from_being_taken_over(make_app: MakeApp) -> None:
    # The carrier takes longer than a lease; without heartbeats the second worker would
    # reap the job and book the shipment a second time.
    carrier = SimulatedCarrier(COUNTRIES, latency_ms=1500)
    app = make_app(carrier=carrier, job_lease_seconds=0.6)
    app.bus.handle(c.SetInventory("ASPIRIN", 10))
    place_order(app, "o-long", {"ASPIRIN": 1}, expires_on=next_year())
    run_one_job(app)
    run_one_job(app)

    first = Worker(app, 2, worker_id="worker-a")
    errors: list[BaseException] = []

    def run_first() -> None:
        try:
            first.run(until_idle=True, timeout=30)
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    thread = threading.Thread(target=run_first)
    thread.start()
    wait_until(lambda: first.in_flight == 1, 20, "the job in flight")
    Worker(app, 2, worker_id="worker-b").run(until_idle=True, timeout=30)
    thread.join(30)

    assert not errors
    assert order_of(app, "o-long").status is OrderStatus.FULFILLED
    assert carrier.calls == 1
    assert history(app, "o-long").count("ShipmentInitiated") == 1

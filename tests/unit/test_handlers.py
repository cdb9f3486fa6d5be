"""The handlers through the message bus and the job runner, on the in-memory fakes."""

from __future__ import annotations

from dataclasses import replace
from datetime import date, timedelta

import pytest

from fulfillment.domain.errors import InvalidInventory
from fulfillment.domain.events import OrderCancelled, OrderFulfilled, SagaCompensationStarted
from fulfillment.domain.order import Order
from fulfillment.domain.status import (
    OrderStatus,
    PrescriptionStatus,
    ReservationStatus,
    SagaStatus,
    ShipmentStatus,
)
from fulfillment.domain.values import OrderLine
from fulfillment.service_layer import commands as c
from fulfillment.service_layer.handlers import NotFound, NothingToResume
from fulfillment.service_layer.job_runner import JobOutcome
from fulfillment.service_layer.jobs import JobSpec
from fulfillment.service_layer.messagebus import ConcurrencyError
from fulfillment.service_layer.order_saga import ORDER_SAGA, Compensation, Step
from fulfillment.service_layer.ports import IdempotencyRecord, StockLevel
from fulfillment.service_layer.retry import RetryPolicy

from .builders import TODAY, address, lines, placed_order, prescription
from .fakes import DEAD, READY, FakeApp, FakeCarrier, JobRow, make_fake_app

DONE, STEP_FAILED, RETRY = JobOutcome.DONE, JobOutcome.STEP_FAILED, JobOutcome.RETRY_SCHEDULED
ASPIRIN = "ASPIRIN-100"


@pytest.fixture
def app() -> FakeApp:
    app = make_fake_app()
    app.bus.handle(c.SetInventory(ASPIRIN, 10))
    return app


def place_order(
    app: FakeApp,
    order_id: str = "o-1",
    *,
    items: tuple[OrderLine, ...] = lines((ASPIRIN, 2)),
    expires_on: date | None = None,
    country: str = "NL",
    idempotency: IdempotencyRecord | None = None,
) -> str:
    result: str = app.bus.handle(
        c.CreateOrder(
            order_id, "c-1", items, prescription(expires_on), address(country), idempotency
        )
    )
    return result


def saga_events(app: FakeApp, saga_id: str = "o-1") -> list[str]:
    return app.db.event_types(f"saga-{saga_id}")


def order_events(app: FakeApp, order_id: str = "o-1") -> list[str]:
    return app.db.event_types(f"order-{order_id}")


def stock(app: FakeApp, sku: str = ASPIRIN) -> StockLevel:
    return app.db.inventory[sku]


def inject_job(app: FakeApp, saga_id: str, kind: str) -> None:
    """A late or duplicate job (the saga's current job, if any, is replaced)."""
    for row in [j for j in app.db.jobs.values() if j.saga_id == saga_id]:
        del app.db.jobs[row.id]
    app.db.jobs[999] = JobRow(999, saga_id, kind, READY, app.db.now())


def snapshot(app: FakeApp) -> tuple[object, ...]:
    db = app.db
    return (
        len(db.events),
        dict(db.prescriptions),
        dict(db.inventory),
        dict(db.reservations),
        dict(db.shipments),
        app.carrier.calls,
    )


# --- placing an order -------------------------------------------------------------------------


def test_placing_an_order_records_it_starts_its_saga_and_enqueues_the_first_step(
    app: FakeApp,
) -> None:
    assert place_order(app) == "o-1"

    assert order_events(app) == ["OrderCreated"]
    assert saga_events(app) == ["OrderFulfillmentSagaStarted"]
    last = app.db.commits[-1]
    assert last.appended == {
        "order-o-1": ["OrderCreated"],
        "saga-o-1": ["OrderFulfillmentSagaStarted"],
    }, "order and saga are stored in one transaction"
    assert last.enqueued == [JobSpec("o-1", "create_prescription")]
    assert [(j.saga_id, j.kind) for j in app.db.jobs.values()] == [("o-1", "create_prescription")]


def test_an_order_id_is_used_once(app: FakeApp) -> None:
    place_order(app)
    commits = len(app.db.commits)

    with pytest.raises(Exception, match="already exists"):
        place_order(app)

    assert len(app.db.commits) == commits


def test_the_same_idempotency_key_and_body_returns_the_first_order(app: FakeApp) -> None:
    key = IdempotencyRecord("key-1", "hash-a", "o-1", {"order_id": "o-1"})
    place_order(app, "o-1", idempotency=key)

    again = place_order(app, "o-2", idempotency=replace_order(key, "o-2"))

    assert again == "o-1"
    assert order_events(app, "o-2") == []
    assert len(app.db.jobs) == 1


def test_the_same_idempotency_key_with_another_body_is_refused(app: FakeApp) -> None:
    place_order(app, "o-1", idempotency=IdempotencyRecord("key-1", "hash-a", "o-1", {}))

    with pytest.raises(Exception, match="different request body"):
        place_order(app, "o-2", idempotency=IdempotencyRecord("key-1", "hash-b", "o-2", {}))

    assert order_events(app, "o-2") == []


def replace_order(record: IdempotencyRecord, order_id: str) -> IdempotencyRecord:
    return IdempotencyRecord(record.key, record.request_hash, order_id, record.response)


def test_an_order_without_a_saga_gets_one_started_once(app: FakeApp) -> None:
    with app.uow() as uow:  # an order stored before sagas existed
        uow.orders.add(placed_order("o-9"))
        uow.commit()

    app.bus.handle(c.StartOrderFulfillmentSaga("o-9"))
    app.bus.handle(c.StartOrderFulfillmentSaga("o-9"))

    assert saga_events(app, "o-9") == ["OrderFulfillmentSagaStarted"]
    assert app.db.job_of("o-9") is not None


def test_starting_the_saga_of_an_unknown_order_is_refused(app: FakeApp) -> None:
    with pytest.raises(NotFound):
        app.bus.handle(c.StartOrderFulfillmentSaga("nope"))


# --- the happy path ---------------------------------------------------------------------------


def test_each_step_enqueues_the_next_until_the_order_is_fulfilled(app: FakeApp) -> None:
    place_order(app)
    chain = []
    while (ran := app.run_next()) is not None:
        kind, outcome = ran
        assert outcome is DONE
        last = app.db.commits[-1]
        assert last.finished_job is not None, "each step consumes its job"
        chain.append((kind, [j.kind for j in last.enqueued]))

    assert chain == [
        ("create_prescription", ["reserve_inventory"]),
        ("reserve_inventory", ["initiate_shipment"]),
        ("initiate_shipment", ["complete"]),
        ("complete", []),
    ]
    # The waits pass in the steps' own transactions: no pharmacist is needed (no SKU
    # with a DEA schedule), and the carrier picks up as it books.
    assert saga_events(app) == [
        "OrderFulfillmentSagaStarted",
        "PrescriptionCreated",
        "PrescriptionVerified",
        "InventoryReserved",
        "ShipmentInitiated",
        "ShipmentPickedUp",
        "OrderFulfillmentSagaCompleted",
    ]
    order = app.db.order("o-1")
    assert order.status is OrderStatus.FULFILLED
    assert order.tracking_number == "TRK-o-1:shipment"
    assert app.db.jobs == {}


def test_a_fulfilled_order_takes_its_stock_off_the_shelf(app: FakeApp) -> None:
    place_order(app, items=lines((ASPIRIN, 2), (ASPIRIN, 1)))

    app.run_until_idle()

    assert stock(app) == StockLevel(ASPIRIN, on_hand=7, reserved=0)
    assert app.db.reservations["o-1"].status is ReservationStatus.CONSUMED
    assert app.db.prescriptions["o-1"].status is PrescriptionStatus.DISPENSED
    assert app.db.shipments["o-1"].status is ShipmentStatus.INITIATED


def test_the_order_and_its_saga_end_in_the_same_transaction(app: FakeApp) -> None:
    place_order(app)

    app.run_until_idle()

    assert app.db.commits[-1].appended == {
        "saga-o-1": ["OrderFulfillmentSagaCompleted"],
        "order-o-1": ["OrderFulfilled"],
    }


# --- business failures: compensation with the right reason ------------------------------------


def test_an_expired_prescription_cancels_the_order_with_nothing_to_undo(app: FakeApp) -> None:
    place_order(app, expires_on=TODAY - timedelta(days=1))

    assert app.run_until_idle() == [("create_prescription", STEP_FAILED)]

    assert saga_events(app) == [
        "OrderFulfillmentSagaStarted",
        "PrescriptionCreationFailed",
        "SagaCompensationStarted",
    ]
    saga = app.db.saga("o-1")
    assert saga.status is SagaStatus.COMPENSATED
    order = app.db.order("o-1")
    assert (order.status, order.reason) == (OrderStatus.CANCELLED, "prescription_expired")
    assert "o-1" not in app.db.prescriptions
    assert stock(app) == StockLevel(ASPIRIN, 10, 0)


def test_a_prescription_expiring_today_is_still_valid(app: FakeApp) -> None:
    place_order(app, expires_on=TODAY)

    app.run_until_idle()

    assert app.db.order("o-1").status is OrderStatus.FULFILLED


def test_insufficient_stock_cancels_the_prescription_and_the_order(app: FakeApp) -> None:
    place_order(app, items=lines((ASPIRIN, 11)))

    ran = app.run_until_idle()

    assert ran == [
        ("create_prescription", DONE),
        ("reserve_inventory", STEP_FAILED),
        ("cancel_prescription", DONE),
    ]
    assert saga_events(app)[3:] == [
        "InventoryReservationFailed",
        "SagaCompensationStarted",
        "PrescriptionCancelled",
    ]
    order = app.db.order("o-1")
    assert (order.status, order.reason) == (OrderStatus.CANCELLED, "insufficient_stock")
    assert app.db.prescriptions["o-1"].status is PrescriptionStatus.CANCELLED
    assert stock(app) == StockLevel(ASPIRIN, 10, 0)


def test_a_reservation_is_all_or_nothing_across_the_lines(app: FakeApp) -> None:
    app.bus.handle(c.SetInventory("IBUPROFEN-200", 1))
    place_order(app, items=lines((ASPIRIN, 2), ("IBUPROFEN-200", 5)))

    app.run_until_idle()

    assert app.db.order("o-1").reason == "insufficient_stock"
    assert stock(app) == StockLevel(ASPIRIN, 10, 0)
    assert stock(app, "IBUPROFEN-200") == StockLevel("IBUPROFEN-200", 1, 0)
    assert "o-1" not in app.db.reservations


def test_an_unknown_sku_is_insufficient_stock(app: FakeApp) -> None:
    place_order(app, items=lines(("NO-SUCH-SKU", 1)))

    app.run_until_idle()

    assert app.db.order("o-1").reason == "insufficient_stock"


def test_an_unsupported_destination_undoes_reservation_then_prescription(app: FakeApp) -> None:
    place_order(app, country="AQ")

    ran = app.run_until_idle()

    assert ran == [
        ("create_prescription", DONE),
        ("reserve_inventory", DONE),
        ("initiate_shipment", STEP_FAILED),
        ("release_inventory", DONE),
        ("cancel_prescription", DONE),
    ]
    assert saga_events(app)[4:] == [
        "ShipmentInitiationFailed",
        "SagaCompensationStarted",
        "InventoryReleased",
        "PrescriptionCancelled",
    ]
    started = app.db.load("saga-o-1")[5]
    assert isinstance(started, SagaCompensationStarted)
    assert started.compensations == (
        Compensation.RELEASE_INVENTORY,
        Compensation.CANCEL_PRESCRIPTION,
    )
    assert order_events(app) == ["OrderCreated", "OrderCancelled"]
    cancelled = app.db.load("order-o-1")[-1]
    assert isinstance(cancelled, OrderCancelled)
    assert cancelled.reason == "unsupported_destination"
    assert stock(app) == StockLevel(ASPIRIN, 10, 0), "a cancelled order leaves stock as before"
    assert app.db.reservations["o-1"].status is ReservationStatus.RELEASED
    assert app.carrier.bookings == {}


def test_a_step_run_after_the_sagas_deadline_fails_it(app: FakeApp) -> None:
    place_order(app)
    app.run_next()
    app.clock.advance(3601)

    app.run_until_idle()

    order = app.db.order("o-1")
    assert (order.status, order.reason) == (OrderStatus.CANCELLED, "saga_timeout")
    assert app.db.prescriptions["o-1"].status is PrescriptionStatus.CANCELLED


# --- transient failures: retries with backoff, then retries_exhausted ---------------------------


def run_to_shipment(app: FakeApp) -> None:
    place_order(app)
    assert [app.run_next() for _ in range(2)] == [
        ("create_prescription", DONE),
        ("reserve_inventory", DONE),
    ]


def test_a_transient_carrier_failure_schedules_a_retry_after_a_backoff(app: FakeApp) -> None:
    run_to_shipment(app)
    app.carrier.down_for = 1
    now = app.db.now()

    assert app.run_next() == ("initiate_shipment", RETRY)

    (retry,) = app.db.commits[-1].enqueued
    assert retry.kind == "initiate_shipment"
    assert 0.5 <= retry.delay_seconds <= 1.0, "base 1s: the first wait is 0.5..1s"
    job = app.db.job_of("o-1")
    assert job is not None and job.run_at == now + retry.delay_seconds
    assert app.queue.claim(1, "w", 30) == [], "not before the backoff has passed"
    assert saga_events(app)[-1] == "SagaStepAttemptFailed"

    assert app.run_until_idle() == [("initiate_shipment", DONE), ("complete", DONE)]
    assert app.db.saga("o-1").attempts(Step.INITIATE_SHIPMENT) == 2
    assert app.db.order("o-1").status is OrderStatus.FULFILLED
    assert len(app.carrier.bookings) == 1


def test_a_step_fails_with_retries_exhausted_after_max_attempts(app: FakeApp) -> None:
    run_to_shipment(app)
    app.carrier.down_for = 99

    ran = app.run_until_idle()

    assert ran == [
        ("initiate_shipment", RETRY),
        ("initiate_shipment", RETRY),
        ("initiate_shipment", STEP_FAILED),
        ("release_inventory", DONE),
        ("cancel_prescription", DONE),
    ]
    delays = [
        spec.delay_seconds
        for commit in app.db.commits
        if commit.appended.get("saga-o-1") == ["SagaStepAttemptFailed"]
        for spec in commit.enqueued
    ]
    assert len(delays) == 2
    assert 0.5 <= delays[0] <= 1.0 and 1.0 <= delays[1] <= 2.0, "exponential backoff"
    saga = app.db.saga("o-1")
    assert saga.attempts(Step.INITIATE_SHIPMENT) == 3
    assert saga.failure_reason == "retries_exhausted"
    order = app.db.order("o-1")
    assert (order.status, order.reason) == (OrderStatus.CANCELLED, "retries_exhausted")
    assert stock(app) == StockLevel(ASPIRIN, 10, 0)


def test_max_attempts_is_the_policys() -> None:
    app = make_fake_app(retry=RetryPolicy(max_attempts=1, base_seconds=1.0))
    app.bus.handle(c.SetInventory(ASPIRIN, 10))
    run_to_shipment(app)
    app.carrier.down_for = 99

    assert app.run_next() == ("initiate_shipment", STEP_FAILED)
    assert app.db.saga("o-1").failure_reason == "retries_exhausted"


# --- compensations that fail -------------------------------------------------------------------


def test_a_failed_compensation_attempt_is_retried_after_a_backoff(app: FakeApp) -> None:
    place_order(app, country="AQ")
    app.db.faults["inventory.release"] = 1

    ran = app.run_until_idle()

    assert ran[3:] == [
        ("release_inventory", RETRY),
        ("release_inventory", DONE),
        ("cancel_prescription", DONE),
    ]
    assert "CompensationAttemptFailed" in saga_events(app)
    assert app.db.order("o-1").status is OrderStatus.CANCELLED
    assert stock(app) == StockLevel(ASPIRIN, 10, 0)


def test_a_compensation_that_keeps_failing_parks_until_an_operator_retries(app: FakeApp) -> None:
    place_order(app, country="AQ")
    app.db.faults["inventory.release"] = 99

    ran = app.run_until_idle()

    assert [kind for kind, _ in ran].count("release_inventory") == 3, "max_attempts attempts"
    saga = app.db.saga("o-1")
    assert saga.status is SagaStatus.COMPENSATION_FAILED
    assert saga.compensation_attempts(Compensation.RELEASE_INVENTORY) == 3
    assert saga.parked_error == "inventory.release unavailable"
    assert saga_events(app)[-1] == "SagaCompensationFailed"
    assert app.db.jobs == {}, "a parked saga has no job"
    assert app.db.order("o-1").status is OrderStatus.PENDING
    assert stock(app) == StockLevel(ASPIRIN, 10, 2), "still reserved until undone"

    app.db.faults.clear()
    app.bus.handle(c.ResumeSaga("o-1"))

    assert app.db.commits[-1].enqueued == [JobSpec("o-1", "release_inventory")]
    assert app.run_until_idle() == [("release_inventory", DONE), ("cancel_prescription", DONE)]
    order = app.db.order("o-1")
    assert (order.status, order.reason) == (OrderStatus.CANCELLED, "unsupported_destination")
    assert stock(app) == StockLevel(ASPIRIN, 10, 0)


def test_only_a_saga_waiting_for_an_operator_can_be_resumed(app: FakeApp) -> None:
    place_order(app)
    commits = len(app.db.commits)

    with pytest.raises(NothingToResume, match="is running with its job ready: nothing to retry"):
        app.bus.handle(c.ResumeSaga("o-1"))
    with pytest.raises(NotFound):
        app.bus.handle(c.ResumeSaga("o-nobody"))

    assert len(app.db.commits) == commits


def test_resuming_a_saga_whose_job_is_dead_puts_the_job_back_in_line(app: FakeApp) -> None:
    place_order(app)
    ((job_id, row),) = app.db.jobs.items()
    app.db.jobs[job_id] = replace(row, status=DEAD, failures=10, run_at=app.db.now() + 3600)

    resumed = app.bus.handle(c.ResumeSaga("o-1"))

    assert (resumed.what, resumed.name) == ("job", "create_prescription")
    revived = app.db.jobs[job_id]
    assert (revived.status, revived.failures) == (READY, 0)
    assert revived.run_at <= app.db.now()
    assert app.run_until_idle()[0] == ("create_prescription", DONE)


# --- late and duplicate jobs -------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(ORDER_SAGA.job_kinds))
def test_a_duplicate_job_after_the_saga_ended_changes_nothing_but_is_consumed(
    app: FakeApp, kind: str
) -> None:
    place_order(app)
    app.run_until_idle()
    inject_job(app, "o-1", kind)
    before = snapshot(app)

    assert app.run_next() == (kind, DONE)

    assert snapshot(app) == before
    assert app.db.commits[-1].appended == {} and app.db.commits[-1].enqueued == []
    assert app.db.jobs == {}


@pytest.mark.parametrize("kind", sorted(ORDER_SAGA.job_kinds))
def test_a_duplicate_job_after_compensation_changes_nothing_but_is_consumed(
    app: FakeApp, kind: str
) -> None:
    place_order(app, country="AQ")
    app.run_until_idle()
    inject_job(app, "o-1", kind)
    before = snapshot(app)

    assert app.run_next() == (kind, DONE)

    assert snapshot(app) == before
    assert app.db.jobs == {}


@pytest.mark.parametrize("kind", sorted(set(ORDER_SAGA.job_kinds) - {"reserve_inventory"}))
def test_a_job_that_is_not_due_mid_saga_changes_nothing(app: FakeApp, kind: str) -> None:
    place_order(app)
    app.run_next()  # the prescription exists; reserve_inventory is due
    inject_job(app, "o-1", kind)
    before = snapshot(app)

    assert app.run_next() == (kind, DONE)

    assert snapshot(app) == before
    assert app.db.jobs == {}


def test_a_late_failure_report_for_a_step_already_done_changes_nothing(app: FakeApp) -> None:
    place_order(app)
    app.run_until_idle()
    before = snapshot(app)

    app.bus.handle(
        c.RecordJobFailure("o-1", Step.CREATE_PRESCRIPTION, "late", "prescription_expired")
    )

    assert snapshot(app) == before
    assert app.db.order("o-1").status is OrderStatus.FULFILLED


# --- commit conflicts ---------------------------------------------------------------------------


def test_a_commit_conflict_is_retried_by_the_bus_and_the_step_applies_once(app: FakeApp) -> None:
    place_order(app)
    commits = len(app.db.commits)
    app.db.conflicts_to_raise = 2

    assert app.run_next() == ("create_prescription", DONE)

    assert app.db.conflicts_to_raise == 0
    assert len(app.db.commits) == commits + 1
    assert saga_events(app).count("PrescriptionCreated") == 1
    assert [j.kind for j in app.db.jobs.values()] == ["reserve_inventory"]


def test_a_conflict_that_outlasts_the_bus_retries_reaches_the_caller(app: FakeApp) -> None:
    app.db.conflicts_to_raise = app.bus.conflict_retries + 1

    with pytest.raises(ConcurrencyError):
        place_order(app)

    assert order_events(app) == [] and app.db.jobs == {}


def test_two_concurrent_creations_of_one_order_create_it_once(app: FakeApp) -> None:
    app.db.before_next_commit.append(lambda: place_order(app, "o-1"))

    with pytest.raises(Exception, match="already exists"):
        place_order(app, "o-1")  # loses the race, is retried, then finds the order

    assert order_events(app) == ["OrderCreated"]
    assert saga_events(app) == ["OrderFulfillmentSagaStarted"]
    assert len(app.db.jobs) == 1


def test_a_concurrent_twin_request_with_the_same_key_gets_the_first_order(app: FakeApp) -> None:
    key = IdempotencyRecord("key-1", "hash-a", "o-2", {"order_id": "o-2"})
    app.db.before_next_commit.append(lambda: place_order(app, "o-2", idempotency=key))

    answer = place_order(app, "o-1", idempotency=replace_order(key, "o-1"))

    assert answer == "o-2"
    assert order_events(app, "o-1") == [] and saga_events(app, "o-1") == []
    assert order_events(app, "o-2") == ["OrderCreated"]


# --- inventory --------------------------------------------------------------------------------


def test_stock_below_what_is_reserved_is_refused(app: FakeApp) -> None:
    place_order(app, items=lines((ASPIRIN, 4)))
    app.run_next()
    app.run_next()
    assert stock(app) == StockLevel(ASPIRIN, 10, 4)

    with pytest.raises(InvalidInventory):
        app.bus.handle(c.SetInventory(ASPIRIN, 3))

    assert stock(app) == StockLevel(ASPIRIN, 10, 4)
    assert app.bus.handle(c.SetInventory(ASPIRIN, 4)) == StockLevel(ASPIRIN, 4, 4)


def test_recorded_events_carry_what_the_read_side_needs(app: FakeApp) -> None:
    place_order(app)
    app.run_until_idle()

    fulfilled = app.db.load("order-o-1")[-1]
    assert isinstance(fulfilled, OrderFulfilled)
    assert fulfilled.tracking_number == "TRK-o-1:shipment"
    metadata = [e.metadata for e in app.db.stream("saga-o-1")]
    assert all(m["correlation_id"] == "o-1" for m in metadata)
    assert metadata[0]["causation_id"] is None
    assert all(str(m["causation_id"]).startswith("job:") for m in metadata[1:])


def test_a_carrier_shipping_elsewhere_is_configurable() -> None:
    app = make_fake_app(carrier=FakeCarrier(countries=("AQ",)))
    app.bus.handle(c.SetInventory(ASPIRIN, 10))
    place_order(app, country="AQ")

    app.run_until_idle()

    assert app.db.order("o-1").status is OrderStatus.FULFILLED


def test_orders_are_replayed_from_their_stored_events(app: FakeApp) -> None:
    place_order(app)
    app.run_until_idle()

    order = Order.replay("o-1", app.db.load("order-o-1"))

    assert order.status is OrderStatus.FULFILLED
    assert order.version == 2

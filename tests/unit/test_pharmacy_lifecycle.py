"""The order saga's pharmacy lifecycle on the in-memory fakes: a pharmacist's
verification, cancellation until pickup, the carrier's pickup and its tracking updates
(docs/api.md). The same behaviour over HTTP and the three databases is in
tests/integration/test_lifecycle_api.py."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from fulfillment.domain.order import Order
from fulfillment.domain.saga import CancellationAccepted, TooLateToCancel
from fulfillment.domain.status import OrderStatus, SagaStatus, TrackingStatus
from fulfillment.service_layer import commands as c
from fulfillment.service_layer import order_saga
from fulfillment.service_layer.order_saga import Step
from fulfillment.service_layer.saga_engine import Forbidden, NotFound, Timeouts

from .builders import address, lines, prescription
from .fakes import FakeApp, FakeCarrier, make_fake_app

ASPIRIN = "ASPIRIN-100"
OXY = "OXYCODONE-5"  # DEA schedule II


def fake_app(policy: str = "controlled", *, pickup_at_booking: bool = True, **kw: Any) -> FakeApp:
    carrier = FakeCarrier()
    carrier.confirms_pickup_at_booking = pickup_at_booking
    app = make_fake_app(carrier=carrier, verification_required_for=policy, **kw)
    app.bus.handle(c.SetInventory(ASPIRIN, 10))
    app.bus.handle(c.SetInventory(OXY, 10, dea_schedule="II"))
    return app


def place(app: FakeApp, order_id: str = "o-1", sku: str = ASPIRIN) -> None:
    app.bus.handle(c.CreateOrder(order_id, "c-1", lines((sku, 2)), prescription(), address("NL")))


def saga_events(app: FakeApp, order_id: str = "o-1") -> list[str]:
    return app.db.event_types(f"saga-{order_id}")


def decide(
    app: FakeApp, decision: str, order_id: str = "o-1", role: str = "pharmacist", **payload: Any
) -> Any:
    body = {"pharmacist_id": "ph-7", **payload}
    return app.bus.handle(
        c.SignalSaga(order_id, decision, body, "alice", role=role), sender="alice"
    )


def cancel(app: FakeApp, order_id: str = "o-1", reason: str = "customer_request") -> Any:
    return app.bus.handle(c.CancelSaga(order_id, reason, "changed my mind", "shopfront"))


def track(app: FakeApp, status: str, event_id: str, order_id: str = "o-1") -> bool:
    number = order_saga.tracking_number(app.db.saga(order_id))
    assert number is not None
    result: bool = app.bus.handle(
        c.RecordTrackingUpdate(event_id, number, status, app.db.clock.now(), "Utrecht hub")
    )
    return result


def order(app: FakeApp, order_id: str = "o-1") -> Order:
    return app.db.order(order_id)


# --- verification -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "sku", "waits"),
    [
        ("controlled", ASPIRIN, False),
        ("controlled", OXY, True),
        ("all", ASPIRIN, True),
        ("none", OXY, False),
    ],
)
def test_the_policy_decides_which_orders_wait_for_a_pharmacist(
    policy: str, sku: str, waits: bool
) -> None:
    app = fake_app(policy)
    place(app, sku=sku)
    app.run_next()  # create_prescription

    saga = app.db.saga("o-1")
    assert order_saga.awaiting_verification(saga) is waits
    assert order_saga.verification(saga)["status"] == ("pending" if waits else "not_required")


def test_a_policy_verification_costs_no_job_and_no_transaction() -> None:
    app = fake_app("none")
    place(app)
    commits = len(app.db.commits)

    ran = app.run_until_idle()

    assert [kind for kind, _ in ran] == [
        "create_prescription",
        "reserve_inventory",
        "initiate_shipment",
        "complete",
    ]
    assert len(app.db.commits) - commits == 4
    events = saga_events(app)
    # Recorded in the prescription step's transaction, and the pickup in the shipment's.
    assert events[1:3] == ["PrescriptionCreated", "PrescriptionVerified"]
    assert events[4:6] == ["ShipmentInitiated", "ShipmentPickedUp"]
    verified = app.db.saga("o-1").result(order_saga.ev.PrescriptionVerified)
    assert verified is not None and verified.by == "policy"
    assert order(app).status is OrderStatus.FULFILLED


def waiting_for_verification(app: FakeApp) -> FakeApp:
    place(app, sku=OXY)
    app.run_next()
    assert order_saga.awaiting_verification(app.db.saga("o-1"))
    return app


def test_an_approval_records_the_pharmacist_and_the_saga_goes_on() -> None:
    app = waiting_for_verification(fake_app())

    accepted = decide(app, "approve", note="dose checked")
    app.run_until_idle()

    assert accepted.outcome == "continue"
    saga = app.db.saga("o-1")
    verified = saga.result(order_saga.ev.PrescriptionVerified)
    assert verified is not None
    assert (verified.by, verified.pharmacist_id, verified.note) == ("alice", "ph-7", "dose checked")
    assert order_saga.verification(saga) == {"status": "approved", "by": "ph-7"}
    assert order(app).status is OrderStatus.FULFILLED
    metadata = [e.metadata for e in app.db.events if e.type == "PrescriptionVerified"]
    assert metadata[0]["sender"] == "alice"


def test_a_rejection_cancels_the_order_and_undoes_the_prescription() -> None:
    app = waiting_for_verification(fake_app())

    decide(app, "reject", reason="interaction with warfarin")
    app.run_until_idle()

    assert saga_events(app)[-3:] == [
        "PrescriptionRejected",
        "SagaCompensationStarted",
        "PrescriptionCancelled",
    ]
    assert (order(app).status, order(app).reason) == (
        OrderStatus.CANCELLED,
        "verification_rejected",
    )
    assert order_saga.verification(app.db.saga("o-1"))["status"] == "rejected"


def test_a_clarification_keeps_the_order_waiting_then_an_approval_releases_it() -> None:
    app = waiting_for_verification(fake_app())

    accepted = decide(app, "request_clarification", note="which strength?")

    assert accepted.outcome == "wait"
    saga = app.db.saga("o-1")
    assert order_saga.verification(saga) == {"status": "clarification_requested", "by": "ph-7"}
    assert order_saga.awaiting_verification(saga)
    decide(app, "approve")
    app.run_until_idle()
    assert order(app).status is OrderStatus.FULFILLED


def test_no_decision_in_time_cancels_with_verification_timeout() -> None:
    app = fake_app(timeouts=Timeouts(waits={Step.VERIFY_PRESCRIPTION: 60.0}))
    waiting_for_verification(app)

    ran = app.run_until_idle()

    assert ran[0][0] == "verify_prescription"  # the timer
    assert (order(app).status, order(app).reason) == (
        OrderStatus.CANCELLED,
        "verification_timeout",
    )


@pytest.mark.parametrize("role", ["operator", "client", "viewer"])
def test_only_a_pharmacist_or_an_admin_may_decide(role: str) -> None:
    app = waiting_for_verification(fake_app())
    before = len(app.db.events)

    with pytest.raises(Forbidden):
        decide(app, "approve", role=role)

    assert len(app.db.events) == before
    decide(app, "approve", role="admin")


# --- cancellation -----------------------------------------------------------------------


def test_a_cancellation_while_waiting_for_a_pharmacist_compensates_at_once() -> None:
    app = waiting_for_verification(fake_app())

    assert cancel(app) is CancellationAccepted.NOW
    assert not [j for j in app.db.jobs.values() if j.kind == Step.VERIFY_PRESCRIPTION]
    app.run_until_idle()

    assert saga_events(app)[-3:] == [
        "OrderCancellationRequested",
        "SagaCompensationStarted",
        "PrescriptionCancelled",
    ]
    assert (order(app).status, order(app).reason) == (OrderStatus.CANCELLED, "customer_request")


def test_a_cancellation_before_a_step_begins_stops_the_saga_before_it() -> None:
    app = fake_app()
    place(app)
    app.run_next()  # prescription, verified by policy; reserve_inventory is queued

    assert cancel(app, reason="prescriber_cancelled") is CancellationAccepted.AFTER_STEP
    assert cancel(app) is CancellationAccepted.ALREADY
    app.run_until_idle()

    events = saga_events(app)
    assert "InventoryReserved" not in events
    assert events[-2:] == ["SagaCompensationStarted", "PrescriptionCancelled"]
    assert (order(app).status, order(app).reason) == (
        OrderStatus.CANCELLED,
        "prescriber_cancelled",
    )


def test_a_cancellation_racing_the_carrier_booking_voids_the_label() -> None:
    app = fake_app()
    place(app)
    app.run_next()
    app.run_next()  # reserved; initiate_shipment is next
    app.carrier.during_next_call.append(lambda: cancel(app))

    app.run_until_idle()

    events = saga_events(app)
    assert events[-5:] == [
        "ShipmentInitiated",
        "SagaCompensationStarted",
        "ShipmentCancelled",
        "InventoryReleased",
        "PrescriptionCancelled",
    ]
    assert app.carrier.cancelled == ["TRK-o-1:shipment"]
    assert app.db.inventory[ASPIRIN].reserved == 0
    assert order(app).status is OrderStatus.CANCELLED


def test_a_step_with_an_outside_call_runs_and_is_undone_even_when_cancelled_first() -> None:
    """Whether an earlier attempt made the carrier call cannot be known (a crash, a
    commit conflict): the booking is made or found again by its key, recorded, voided."""
    app = fake_app()
    place(app)
    app.run_next()
    app.run_next()  # reserved; initiate_shipment is queued, not begun
    assert cancel(app) is CancellationAccepted.AFTER_STEP

    app.run_until_idle()

    assert saga_events(app)[-5:] == [
        "ShipmentInitiated",
        "SagaCompensationStarted",
        "ShipmentCancelled",
        "InventoryReleased",
        "PrescriptionCancelled",
    ]
    assert app.carrier.cancelled == ["TRK-o-1:shipment"]


def test_after_pickup_or_on_a_finished_order_it_is_too_late_to_cancel() -> None:
    app = fake_app()
    place(app)
    for _ in range(3):
        app.run_next()  # picked up at booking: the pivot is next
    before = len(app.db.events)

    with pytest.raises(TooLateToCancel):
        cancel(app)
    assert len(app.db.events) == before
    app.run_until_idle()
    with pytest.raises(TooLateToCancel):
        cancel(app)


# --- pickup and tracking ----------------------------------------------------------------


def waiting_for_pickup(app: FakeApp) -> FakeApp:
    place(app)
    for _ in range(3):
        app.run_next()
    saga = app.db.saga("o-1")
    assert saga.waiting is not None and saga.waiting.name == Step.AWAIT_PICKUP
    return app


def test_the_carriers_in_transit_is_the_pickup_then_the_order_is_fulfilled() -> None:
    app = waiting_for_pickup(fake_app(pickup_at_booking=False))

    assert track(app, "in_transit", "evt-1") is True
    app.run_until_idle()

    assert saga_events(app)[-3:] == [
        "SagaSignalReceived",
        "ShipmentPickedUp",
        "OrderFulfillmentSagaCompleted",
    ]
    assert order(app).status is OrderStatus.FULFILLED
    assert app.db.inventory[ASPIRIN].on_hand == 8


def test_tracking_after_pickup_moves_forward_only_and_once_per_event() -> None:
    app = waiting_for_pickup(fake_app(pickup_at_booking=False))
    track(app, "in_transit", "evt-1")
    app.run_until_idle()

    assert track(app, "out_for_delivery", "evt-2")
    assert track(app, "delivered", "evt-3")
    assert track(app, "delivered", "evt-3") is False  # a repeat changes nothing
    assert track(app, "in_transit", "evt-4")  # late: recorded, not applied

    o = order(app)
    assert o.tracking_status is TrackingStatus.DELIVERED
    assert o.display_status is OrderStatus.DELIVERED
    assert app.db.event_types("order-o-1")[-3:] == [
        "ShipmentTrackingUpdated",
        "ShipmentDelivered",
        "ShipmentTrackingUpdated",
    ]
    assert order_saga.shipment_status(app.db.saga("o-1"), o) == "delivered"


def test_a_returned_parcel_shows_as_returned() -> None:
    app = fake_app()
    place(app)
    app.run_until_idle()

    track(app, "delivery_failed", "evt-1")
    track(app, "returned_to_sender", "evt-2")

    assert order(app).display_status is OrderStatus.RETURNED


def test_an_unknown_tracking_number_is_not_found() -> None:
    app = fake_app()
    with pytest.raises(NotFound):
        app.bus.handle(c.RecordTrackingUpdate("evt-1", "NOPE", "delivered", app.db.clock.now()))


def test_no_pickup_in_time_undoes_the_shipment_with_pickup_timeout() -> None:
    app = fake_app(pickup_at_booking=False, timeouts=Timeouts(waits={Step.AWAIT_PICKUP: 600.0}))
    waiting_for_pickup(app)

    app.run_until_idle()

    assert saga_events(app)[-4:] == [
        "SagaCompensationStarted",
        "ShipmentCancelled",
        "InventoryReleased",
        "PrescriptionCancelled",
    ]
    assert (order(app).status, order(app).reason) == (OrderStatus.CANCELLED, "pickup_timeout")


def test_a_cancellation_while_waiting_for_pickup_voids_the_label() -> None:
    app = waiting_for_pickup(fake_app(pickup_at_booking=False))

    assert cancel(app) is CancellationAccepted.NOW
    app.run_until_idle()

    assert app.carrier.cancelled == ["TRK-o-1:shipment"]
    assert order(app).status is OrderStatus.CANCELLED
    assert app.db.saga("o-1").status is SagaStatus.COMPENSATED


def test_time_spent_waiting_does_not_count_against_the_sagas_deadline() -> None:
    app = waiting_for_verification(fake_app())
    app.db.clock.advance(timedelta(hours=5).total_seconds())  # the saga deadline is 1 h

    decide(app, "approve")
    app.run_until_idle()

    assert order(app).status is OrderStatus.FULFILLED

"""The order saga, declared once (`fulfillment.domain.saga_definition`), with its
steps' actions.

    create prescription   ->  PrescriptionCreated  | PrescriptionCreationFailed
        undone by cancel prescription              -> PrescriptionCancelled
    verify prescription   (a wait) a pharmacist decides: approve -> PrescriptionVerified,
        reject -> PrescriptionRejected (fails: verification_rejected),
        request_clarification -> PrescriptionClarificationRequested (waits again);
        no decision in time fails (verification_timeout). An order the policy does not
        hold (FULFILLMENT_VERIFICATION_REQUIRED_FOR) passes at once: PrescriptionVerified
        by "policy", in the prescription step's transaction.
    reserve inventory     ->  InventoryReserved    | InventoryReservationFailed
        undone by release inventory                -> InventoryReleased
    initiate shipment     ->  ShipmentInitiated    | ShipmentInitiationFailed
        (books the carrier first, outside any transaction)
        undone by cancel shipment                  -> ShipmentCancelled
    await pickup          (a wait) the carrier's pickup (a tracking update in_transit)
        -> ShipmentPickedUp; none in time fails (pickup_timeout). A carrier that picks
        up as it books passes at once, in the shipment step's transaction.
    complete (the pivot)  ->  OrderFulfillmentSagaCompleted: stock consumed, prescription
                              dispensed, order fulfilled; retried, never undone

Until the pivot an order can be cancelled (OrderCancellationRequested): the saga
compensates after the step in progress. When the saga ends its order is settled in
the same transaction: fulfilled, or cancelled with the failure's reason. Version 1 (no
waits) stays registered for the sagas that started under it. The step, wait and
compensation names are the job kinds the queue stores and the `step` labels of the
metrics: part of the public contract (docs/api.md). How this module is built: docs/sagas.md.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, StringConstraints

from fulfillment.domain import events as ev
from fulfillment.domain.errors import PersonalDataErased, PrescriptionExpired
from fulfillment.domain.order import Order
from fulfillment.domain.saga import Saga, WaitTimeouts
from fulfillment.domain.saga_definition import (
    CONTINUE,
    WAIT_AGAIN,
    CompensationSpec,
    SagaDefinition,
    SignalSpec,
    StepSpec,
    WaitSpec,
    fail,
    register,
)
from fulfillment.domain.status import (
    FailureReason,
    SagaStatus,
    ShipmentStatus,
    TrackingStatus,
    VerificationStatus,
)
from fulfillment.service_layer.ports import Booking
from fulfillment.service_layer.saga_engine import NotFound, StepContext


class Step(StrEnum):
    """The order saga's steps and waits, in order."""

    CREATE_PRESCRIPTION = "create_prescription"
    VERIFY_PRESCRIPTION = "verify_prescription"  # a wait
    RESERVE_INVENTORY = "reserve_inventory"
    INITIATE_SHIPMENT = "initiate_shipment"
    AWAIT_PICKUP = "await_pickup"  # a wait
    COMPLETE = "complete"


class Signal(StrEnum):
    """The signals of the order saga's waits (`POST /sagas/{id}/signals/{name}`)."""

    APPROVE = "approve"
    REJECT = "reject"
    REQUEST_CLARIFICATION = "request_clarification"
    PICKED_UP = "picked_up"


#: The API roles that may decide a verification.
PHARMACIST_ROLES = frozenset({"pharmacist", "admin"})
VERIFICATION_POLICIES = ("controlled", "all", "none")
#: The default timeouts of the waits (FULFILLMENT_VERIFICATION_TIMEOUT_SECONDS,
#: FULFILLMENT_PICKUP_TIMEOUT_SECONDS).
VERIFICATION_TIMEOUT_SECONDS = 86400.0
PICKUP_TIMEOUT_SECONDS = 259200.0


#: The pivot's job kind: the saga's last step, which only goes forward.
COMPLETE = Step.COMPLETE


class Compensation(StrEnum):
    """What undoes each step."""

    CANCEL_PRESCRIPTION = "cancel_prescription"
    RELEASE_INVENTORY = "release_inventory"
    CANCEL_SHIPMENT = "cancel_shipment"


def started(saga: Saga) -> ev.OrderFulfillmentSagaStarted:
    """The order saga's start event: the order it fulfils."""
    event = saga.started
    assert isinstance(event, ev.OrderFulfillmentSagaStarted), saga.id
    return event


def tracking_number(saga: Saga) -> str | None:
    shipment = saga.result(ev.ShipmentInitiated)
    return shipment.tracking_number if shipment is not None else None


# --- the steps' actions -----------------------------------------------------------------


def create_prescription(ctx: StepContext) -> ev.PrescriptionCreated:
    order = started(ctx.saga)
    prescription = order.prescription
    if prescription.is_expired(ctx.today):
        raise PrescriptionExpired(f"prescription expired on {prescription.expires_on.isoformat()}")
    if prescription.erased:
        raise PersonalDataErased("the patient's data was erased")
    prescription_id = ctx.uow.prescriptions.create(
        ctx.saga.id, prescription, ctx.today, customer_id=order.customer_id
    )
    return ev.PrescriptionCreated(
        occurred_at=ctx.now, saga_id=ctx.saga.id, prescription_id=prescription_id
    )


def cancel_prescription(ctx: StepContext) -> ev.PrescriptionCancelled:
    created = ctx.saga.result(ev.PrescriptionCreated)
    assert created is not None
    ctx.uow.prescriptions.cancel(ctx.saga.id)
    return ev.PrescriptionCancelled(
        occurred_at=ctx.now, saga_id=ctx.saga.id, prescription_id=created.prescription_id
    )


def reserve_inventory(ctx: StepContext) -> ev.InventoryReserved:
    items = started(ctx.saga).items
    reservation = ctx.uow.inventory.reserve(
        ctx.saga.id, items, today=ctx.today, min_shelf_life_days=ctx.deps.min_shelf_life_days
    )
    return ev.InventoryReserved(
        occurred_at=ctx.now,
        saga_id=ctx.saga.id,
        reservation_id=reservation.reservation_id,
        lines=items,
        lots=reservation.lots,
    )


def release_inventory(ctx: StepContext) -> ev.InventoryReleased:
    reserved = ctx.saga.result(ev.InventoryReserved)
    assert reserved is not None
    ctx.uow.inventory.release(ctx.saga.id)
    return ev.InventoryReleased(
        occurred_at=ctx.now, saga_id=ctx.saga.id, reservation_id=reserved.reservation_id
    )


def book_carrier(ctx: StepContext) -> Booking:
    """Outside any transaction; idempotent by key, so a retry books nothing twice."""
    order = started(ctx.saga)
    if order.shipping_address.erased:
        raise PersonalDataErased("the customer's address was erased")
    return ctx.carrier.book(f"{ctx.saga.id}:shipment", order.shipping_address, order.items)


def record_shipment(ctx: StepContext) -> ev.ShipmentInitiated:
    booking: Booking = ctx.prepared
    country = started(ctx.saga).shipping_address.country
    shipment_id = ctx.uow.shipments.record_initiated(ctx.saga.id, booking, country)
    return ev.ShipmentInitiated(
        occurred_at=ctx.now,
        saga_id=ctx.saga.id,
        shipment_id=shipment_id,
        carrier=booking.carrier,
        tracking_number=booking.tracking_number,
    )


def cancel_booking(ctx: StepContext) -> None:
    shipment = ctx.saga.result(ev.ShipmentInitiated)
    assert shipment is not None
    ctx.carrier.cancel(f"{ctx.saga.id}:shipment-cancel", shipment.tracking_number)


def record_shipment_cancelled(ctx: StepContext) -> ev.ShipmentCancelled:
    shipment = ctx.saga.result(ev.ShipmentInitiated)
    assert shipment is not None
    ctx.uow.shipments.cancel(ctx.saga.id)
    return ev.ShipmentCancelled(
        occurred_at=ctx.now,
        saga_id=ctx.saga.id,
        shipment_id=shipment.shipment_id,
        tracking_number=shipment.tracking_number,
    )


def complete(ctx: StepContext) -> ev.OrderFulfillmentSagaCompleted:
    """Stock leaves the shelf and the prescription is dispensed."""
    ctx.uow.inventory.consume(ctx.saga.id)
    ctx.uow.prescriptions.mark_dispensed(ctx.saga.id)
    number = tracking_number(ctx.saga)
    assert number is not None
    return ev.OrderFulfillmentSagaCompleted(
        occurred_at=ctx.now, saga_id=ctx.saga.id, tracking_number=number
    )


# --- the waits --------------------------------------------------------------------------

Id = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]
Note = Annotated[str, StringConstraints(max_length=2000)]


class _Signal(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Decision(_Signal):
    """A pharmacist's decision (approve, reject, request_clarification)."""

    pharmacist_id: Id
    note: Note | None = None
    reason: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None


class PickedUp(_Signal):
    """The carrier's confirmation that it has the parcel."""

    event_id: Id | None = None
    occurred_at: AwareDatetime | None = None
    location: Annotated[str, StringConstraints(max_length=200)] | None = None


def verification_required(ctx: StepContext) -> bool:
    """Whether a pharmacist must verify this order (FULFILLMENT_VERIFICATION_REQUIRED_FOR):
    `all`, `none`, or `controlled`: a line's SKU has a DEA schedule (one lookup)."""
    policy = ctx.deps.verification_required_for
    if policy == "all":
        return True
    if policy == "none":
        return False
    return ctx.uow.inventory.controlled(line.sku for line in started(ctx.saga).items)


def verified_by_policy(ctx: StepContext) -> ev.PrescriptionVerified | None:
    if verification_required(ctx):
        return None
    return ev.PrescriptionVerified(occurred_at=ctx.now, saga_id=ctx.saga.id, by="policy")


def _decision(ctx: StepContext) -> tuple[str, Decision]:
    decision: Decision = ctx.payload
    return ctx.sender or "anonymous", decision


def approved(ctx: StepContext) -> ev.PrescriptionVerified:
    by, decision = _decision(ctx)
    return ev.PrescriptionVerified(
        occurred_at=ctx.now,
        saga_id=ctx.saga.id,
        by=by,
        pharmacist_id=decision.pharmacist_id,
        note=decision.note,
    )


def rejected(ctx: StepContext) -> ev.PrescriptionRejected:
    by, decision = _decision(ctx)
    return ev.PrescriptionRejected(
        occurred_at=ctx.now,
        saga_id=ctx.saga.id,
        by=by,
        pharmacist_id=decision.pharmacist_id,
        reason=decision.reason,
        note=decision.note,
    )


def clarification_requested(ctx: StepContext) -> ev.PrescriptionClarificationRequested:
    by, decision = _decision(ctx)
    return ev.PrescriptionClarificationRequested(
        occurred_at=ctx.now,
        saga_id=ctx.saga.id,
        by=by,
        pharmacist_id=decision.pharmacist_id,
        note=decision.note,
    )


def picked_up(ctx: StepContext) -> ev.ShipmentPickedUp:
    pickup: PickedUp = ctx.payload
    number = tracking_number(ctx.saga)
    assert number is not None
    return ev.ShipmentPickedUp(
        occurred_at=ctx.now,
        saga_id=ctx.saga.id,
        tracking_number=number,
        picked_up_at=pickup.occurred_at or ctx.now,
        location=pickup.location,
        carrier_event_id=pickup.event_id,
    )


def picked_up_at_booking(ctx: StepContext) -> ev.ShipmentPickedUp | None:
    """A carrier that picks up as it books: no wait (FULFILLMENT_CARRIER_PICKUP_DELAY_MS=0
    of the simulated one). The booking just made, in the shipment step's transaction,
    may say so for itself (`Booking.picked_up_at_booking`: the HTTP carrier's answer)."""
    booking = ctx.prepared if isinstance(ctx.prepared, Booking) else None
    said = booking.picked_up_at_booking if booking is not None else None
    if not (ctx.carrier.confirms_pickup_at_booking if said is None else said):
        return None
    number = tracking_number(ctx.saga)
    assert number is not None
    return ev.ShipmentPickedUp(
        occurred_at=ctx.now, saga_id=ctx.saga.id, tracking_number=number, picked_up_at=ctx.now
    )


def settle_order(ctx: StepContext) -> None:
    """The order ends with its saga: fulfilled, or cancelled with the failure's reason."""
    order_id = started(ctx.saga).order_id
    order = ctx.uow.orders.get(order_id)
    if order is None:
        raise NotFound(f"order {order_id} not found")
    if ctx.saga.status is SagaStatus.COMPENSATED:
        order.cancel(ctx.saga.failure_reason or "cancelled", at=ctx.now)
    elif ctx.saga.status is SagaStatus.COMPLETED:
        number = tracking_number(ctx.saga)
        assert number is not None
        order.fulfil(number, at=ctx.now)


_PRESCRIPTION = StepSpec(
    Step.CREATE_PRESCRIPTION,
    action=create_prescription,
    succeeded=ev.PrescriptionCreated,
    failed=ev.PrescriptionCreationFailed,
    compensation=CompensationSpec(
        Compensation.CANCEL_PRESCRIPTION,
        action=cancel_prescription,
        recorded_by=ev.PrescriptionCancelled,
    ),
    label="rx",
    description="prescription checked and registered",
)
_RESERVE = StepSpec(
    Step.RESERVE_INVENTORY,
    action=reserve_inventory,
    succeeded=ev.InventoryReserved,
    failed=ev.InventoryReservationFailed,
    compensation=CompensationSpec(
        Compensation.RELEASE_INVENTORY,
        action=release_inventory,
        recorded_by=ev.InventoryReleased,
        shared_rows=True,
    ),
    shared_rows=True,
    label="stock",
    description="stock held for every line",
)
_SHIPMENT = StepSpec(
    Step.INITIATE_SHIPMENT,
    prepare=book_carrier,
    action=record_shipment,
    succeeded=ev.ShipmentInitiated,
    failed=ev.ShipmentInitiationFailed,
    compensation=CompensationSpec(
        Compensation.CANCEL_SHIPMENT,
        prepare=cancel_booking,
        action=record_shipment_cancelled,
        recorded_by=ev.ShipmentCancelled,
    ),
    label="ship",
    description="carrier booked, tracking number issued",
)
_COMPLETE = StepSpec(
    Step.COMPLETE,
    action=complete,
    succeeded=ev.OrderFulfillmentSagaCompleted,
    pivot=True,
    shared_rows=True,
    label="done",
    description="stock consumed, prescription dispensed",
)

_VERIFY = WaitSpec(
    Step.VERIFY_PRESCRIPTION,
    signals=(
        SignalSpec(Signal.APPROVE, Decision, CONTINUE, record=approved, roles=PHARMACIST_ROLES),
        SignalSpec(
            Signal.REJECT,
            Decision,
            fail(FailureReason.VERIFICATION_REJECTED),
            record=rejected,
            roles=PHARMACIST_ROLES,
        ),
        SignalSpec(
            Signal.REQUEST_CLARIFICATION,
            Decision,
            WAIT_AGAIN,
            record=clarification_requested,
            roles=PHARMACIST_ROLES,
        ),
    ),
    timeout_seconds=VERIFICATION_TIMEOUT_SECONDS,
    on_timeout=fail(FailureReason.VERIFICATION_TIMEOUT),
    skip=verified_by_policy,
    records=(
        ev.PrescriptionVerified,
        ev.PrescriptionRejected,
        ev.PrescriptionClarificationRequested,
    ),
    label="verify",
    description="a pharmacist reviews the prescription",
)
_PICKUP = WaitSpec(
    Step.AWAIT_PICKUP,
    signals=(SignalSpec(Signal.PICKED_UP, PickedUp, CONTINUE, record=picked_up),),
    timeout_seconds=PICKUP_TIMEOUT_SECONDS,
    on_timeout=fail(FailureReason.PICKUP_TIMEOUT),
    skip=picked_up_at_booking,
    records=(ev.ShipmentPickedUp,),
    label="pickup",
    description="the carrier picks the parcel up",
)

#: The first version: no waits (sagas that started under it finish under it).
ORDER_SAGA_V1 = register(
    SagaDefinition(
        name="order_fulfillment",
        version=1,
        started=ev.OrderFulfillmentSagaStarted,
        settle=settle_order,
        steps=(_PRESCRIPTION, _RESERVE, _SHIPMENT, _COMPLETE),
        cancellation=ev.OrderCancellationRequested,
    )
)

ORDER_SAGA = register(
    SagaDefinition(
        name="order_fulfillment",
        version=2,
        started=ev.OrderFulfillmentSagaStarted,
        settle=settle_order,
        steps=(_PRESCRIPTION, _VERIFY, _RESERVE, _SHIPMENT, _PICKUP, _COMPLETE),
        cancellation=ev.OrderCancellationRequested,
    )
)


# --- what the read side shows of a saga ---------------------------------------------------


def verification(saga: Saga | None) -> dict[str, str | None]:
    """`{"status", "by"}` of the order's pharmacist verification (docs/api.md)."""
    status, by = VerificationStatus.PENDING, None
    if saga is None or saga.started is None:
        return {"status": status.value, "by": by}
    if Step.VERIFY_PRESCRIPTION not in saga.steps:
        return {"status": VerificationStatus.NOT_REQUIRED.value, "by": None}
    verified = saga.result(ev.PrescriptionVerified)
    rejected_by = saga.result(ev.PrescriptionRejected)
    state = saga.steps[Step.VERIFY_PRESCRIPTION]
    if verified is not None:
        policy = verified.by == "policy"
        status = VerificationStatus.NOT_REQUIRED if policy else VerificationStatus.APPROVED
        by = verified.by if policy else (verified.pharmacist_id or verified.by)
    elif rejected_by is not None:
        status, by = VerificationStatus.REJECTED, rejected_by.pharmacist_id
    elif state.signals and state.signals[-1] == Signal.REQUEST_CLARIFICATION:
        asked = saga.result(ev.PrescriptionClarificationRequested)
        status = VerificationStatus.CLARIFICATION_REQUESTED
        by = asked.pharmacist_id if asked is not None else None
    return {"status": status.value, "by": by}


def awaiting_verification(saga: Saga | None) -> bool:
    waiting = saga.waiting if saga is not None else None
    return waiting is not None and waiting.name == Step.VERIFY_PRESCRIPTION


def lots(saga: Saga | None) -> list[dict[str, object]]:
    """The lots the reservation took (empty before it, or for a reservation without)."""
    reserved = saga.result(ev.InventoryReserved) if saga is not None else None
    return [lot.to_dict() for lot in reserved.lots] if reserved is not None else []


def shipment_status(saga: Saga, order: Order) -> str:
    """The parcel's status: booked (`initiated`), voided (`cancelled`), then as the
    carrier's updates moved it (`in_transit` from pickup on)."""
    if saga.was_compensated(ev.ShipmentCancelled):
        return ShipmentStatus.CANCELLED.value
    if order.tracking_status is not None:
        return order.tracking_status.value
    if saga.result(ev.ShipmentPickedUp) is not None:
        return TrackingStatus.IN_TRANSIT.value
    return ShipmentStatus.INITIATED.value


def start(
    order: Order,
    *,
    deadline_at: datetime,
    at: datetime,
    timeouts: WaitTimeouts = None,
    definition: SagaDefinition | None = None,
) -> Saga:
    """The saga of a placed order (its id is the order's id), under the newest version
    of the order saga unless `definition` names another."""
    definition = definition or ORDER_SAGA
    created = order.to_created_event()
    return Saga.start(
        definition,
        ev.OrderFulfillmentSagaStarted(
            occurred_at=at,
            saga_id=created.order_id,
            order_id=created.order_id,
            definition_version=definition.version,
            customer_id=created.customer_id,
            items=created.items,
            prescription=created.prescription,
            shipping_address=created.shipping_address,
            deadline_at=deadline_at,
        ),
        timeouts=timeouts,
    )

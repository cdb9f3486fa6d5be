"""The order saga, declared once (`fulfillment.domain.saga_definition`), with its
steps' actions.

    create prescription   ->  PrescriptionCreated  | PrescriptionCreationFailed
        undone by cancel prescription              -> PrescriptionCancelled
    reserve inventory     ->  InventoryReserved    | InventoryReservationFailed
        undone by release inventory                -> InventoryReleased
    initiate shipment     ->  ShipmentInitiated    | ShipmentInitiationFailed
        (books the carrier first, outside any transaction)
        undone by cancel shipment                  -> ShipmentCancelled
    complete (the pivot)  ->  OrderFulfillmentSagaCompleted: stock consumed, prescription
                              dispensed, order fulfilled; retried, never undone

When the saga ends its order is settled in the same transaction: fulfilled, or
cancelled with the failure's reason. The step and compensation names are the job kinds
the queue stores and the `step` labels of the metrics: part of the public contract
(docs/api.md). How this module is built: docs/sagas.md.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from fulfillment.domain import events as ev
from fulfillment.domain.errors import PrescriptionExpired
from fulfillment.domain.order import Order
from fulfillment.domain.saga import Saga, WaitTimeouts
from fulfillment.domain.saga_definition import CompensationSpec, SagaDefinition, StepSpec, register
from fulfillment.domain.status import SagaStatus
from fulfillment.service_layer.ports import Booking
from fulfillment.service_layer.saga_engine import NotFound, StepContext


class Step(StrEnum):
    """The order saga's steps, in order."""

    CREATE_PRESCRIPTION = "create_prescription"
    RESERVE_INVENTORY = "reserve_inventory"
    INITIATE_SHIPMENT = "initiate_shipment"
    COMPLETE = "complete"


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
    prescription = started(ctx.saga).prescription
    if prescription.is_expired(ctx.today):
        raise PrescriptionExpired(f"prescription expired on {prescription.expires_on.isoformat()}")
    prescription_id = ctx.uow.prescriptions.create(ctx.saga.id, prescription, ctx.today)
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
    reservation_id = ctx.uow.inventory.reserve(ctx.saga.id, items)
    return ev.InventoryReserved(
        occurred_at=ctx.now, saga_id=ctx.saga.id, reservation_id=reservation_id, lines=items
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


ORDER_SAGA = register(
    SagaDefinition(
        name="order_fulfillment",
        version=1,
        started=ev.OrderFulfillmentSagaStarted,
        settle=settle_order,
        steps=(
            StepSpec(
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
            ),
            StepSpec(
                Step.RESERVE_INVENTORY,
                action=reserve_inventory,
                succeeded=ev.InventoryReserved,
                failed=ev.InventoryReservationFailed,
                compensation=CompensationSpec(
                    Compensation.RELEASE_INVENTORY,
                    action=release_inventory,
                    recorded_by=ev.InventoryReleased,
                ),
                label="stock",
                description="stock held for every line",
            ),
            StepSpec(
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
            ),
            StepSpec(
                Step.COMPLETE,
                action=complete,
                succeeded=ev.OrderFulfillmentSagaCompleted,
                pivot=True,
                label="done",
                description="stock consumed, prescription dispensed",
            ),
        ),
    )
)


def start(
    order: Order, *, deadline_at: datetime, at: datetime, timeouts: WaitTimeouts = None
) -> Saga:
    """The saga of a placed order (its id is the order's id)."""
    created = order.to_created_event()
    return Saga.start(
        ORDER_SAGA,
        ev.OrderFulfillmentSagaStarted(
            occurred_at=at,
            saga_id=created.order_id,
            order_id=created.order_id,
            definition_version=ORDER_SAGA.version,
            customer_id=created.customer_id,
            items=created.items,
            prescription=created.prescription,
            shipping_address=created.shipping_address,
            deadline_at=deadline_at,
        ),
        timeouts=timeouts,
    )

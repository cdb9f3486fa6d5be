"""Domain events: immutable facts, past tense, each with an `event_version`.

The names are part of the public contract (docs/api.md). `EVENT_TYPES` is the
one registry of them (a saga definition registers the events it declares); the
mapper in `adapters` turns them into stored rows and back,
upcasting old versions on the way in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from fulfillment.domain.values import LotAllocation, OrderLine, PrescriptionDetails, ShippingAddress


@dataclass(frozen=True, kw_only=True)
class DomainEvent:
    """Base of all events. `occurred_at` is stored as the row's `recorded_at`, not in data."""

    event_version: ClassVar[int] = 1
    occurred_at: datetime


# --- Order stream -----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class OrderCreated(DomainEvent):
    order_id: str
    customer_id: str
    items: tuple[OrderLine, ...]
    prescription: PrescriptionDetails
    shipping_address: ShippingAddress


@dataclass(frozen=True, kw_only=True)
class OrderFulfilled(DomainEvent):
    order_id: str
    tracking_number: str


@dataclass(frozen=True, kw_only=True)
class OrderCancelled(DomainEvent):
    order_id: str
    reason: str


# --- Saga stream ------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class OrderFulfillmentSagaStarted(DomainEvent):
    saga_id: str
    order_id: str
    definition_version: int
    customer_id: str
    items: tuple[OrderLine, ...]
    prescription: PrescriptionDetails
    shipping_address: ShippingAddress
    deadline_at: datetime


@dataclass(frozen=True, kw_only=True)
class PrescriptionCreated(DomainEvent):
    saga_id: str
    prescription_id: str


@dataclass(frozen=True, kw_only=True)
class PrescriptionCreationFailed(DomainEvent):
    saga_id: str
    reason: str
    error: str


@dataclass(frozen=True, kw_only=True)
class InventoryReserved(DomainEvent):
    saga_id: str
    reservation_id: str
    lines: tuple[OrderLine, ...]
    #: The lots the units came from, first expiry first (absent before lots existed).
    lots: tuple[LotAllocation, ...] = ()


@dataclass(frozen=True, kw_only=True)
class InventoryReservationFailed(DomainEvent):
    saga_id: str
    reason: str
    error: str


@dataclass(frozen=True, kw_only=True)
class ShipmentInitiated(DomainEvent):
    saga_id: str
    shipment_id: str
    carrier: str
    tracking_number: str


@dataclass(frozen=True, kw_only=True)
class ShipmentInitiationFailed(DomainEvent):
    saga_id: str
    reason: str
    error: str


@dataclass(frozen=True, kw_only=True)
class SagaStepAttemptFailed(DomainEvent):
    """A transient failure of one attempt; the step runs again after `retry_in_seconds`."""

    saga_id: str
    step: str
    attempt: int
    error: str
    retry_in_seconds: float


@dataclass(frozen=True, kw_only=True)
class OrderFulfillmentSagaCompleted(DomainEvent):
    """The reservation was consumed and the prescription dispensed."""

    saga_id: str
    tracking_number: str


@dataclass(frozen=True, kw_only=True)
class SagaCompensationStarted(DomainEvent):
    saga_id: str
    failed_step: str
    reason: str
    compensations: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class ShipmentCancelled(DomainEvent):
    saga_id: str
    shipment_id: str
    tracking_number: str


@dataclass(frozen=True, kw_only=True)
class InventoryReleased(DomainEvent):
    saga_id: str
    reservation_id: str


@dataclass(frozen=True, kw_only=True)
class PrescriptionCancelled(DomainEvent):
    saga_id: str
    prescription_id: str


@dataclass(frozen=True, kw_only=True)
class CompensationAttemptFailed(DomainEvent):
    saga_id: str
    compensation: str
    attempt: int
    error: str
    retry_in_seconds: float


@dataclass(frozen=True, kw_only=True)
class SagaCompensationFailed(DomainEvent):
    """Compensation kept failing: the saga parks until an operator retries it."""

    saga_id: str
    compensation: str
    error: str


@dataclass(frozen=True, kw_only=True)
class SagaCompensationRetried(DomainEvent):
    saga_id: str
    compensation: str


# --- Any saga's waits (fulfillment.domain.saga_definition.WaitSpec) --------------------


@dataclass(frozen=True, kw_only=True)
class SagaWaitStarted(DomainEvent):
    """The saga now waits at `wait` for a signal, until `timeout_at` (None: no timeout)."""

    saga_id: str
    wait: str
    timeout_at: datetime | None


@dataclass(frozen=True, kw_only=True)
class SagaSignalReceived(DomainEvent):
    """A signal the saga's wait accepted, with its validated payload and where it led
    (`continue`, `fail` with `reason`, or `wait`). Its sender is in the metadata."""

    saga_id: str
    wait: str
    signal: str
    payload: dict[str, Any]
    outcome: str
    reason: str | None


@dataclass(frozen=True, kw_only=True)
class SagaWaitTimedOut(DomainEvent):
    """No accepted signal before the wait's timeout: its timeout outcome applies."""

    saga_id: str
    wait: str
    outcome: str
    reason: str | None


# --- The pharmacy lifecycle: verification, cancellation, pickup and tracking -----------


@dataclass(frozen=True, kw_only=True)
class PrescriptionVerified(DomainEvent):
    """A pharmacist approved the prescription (`by`: the API key's name, with their
    `pharmacist_id`), or no review was required (`by` "policy")."""

    saga_id: str
    by: str
    pharmacist_id: str | None = None
    note: str | None = None


@dataclass(frozen=True, kw_only=True)
class PrescriptionRejected(DomainEvent):
    saga_id: str
    by: str
    pharmacist_id: str
    reason: str | None = None
    note: str | None = None


@dataclass(frozen=True, kw_only=True)
class PrescriptionClarificationRequested(DomainEvent):
    """The pharmacist asks the prescriber a question; the saga keeps waiting."""

    saga_id: str
    by: str
    pharmacist_id: str
    note: str | None = None


@dataclass(frozen=True, kw_only=True)
class OrderCancellationRequested(DomainEvent):
    """A customer or the prescriber asked to stop the order: it takes effect after the
    step in progress (at once when the saga waits)."""

    saga_id: str
    reason: str
    by: str
    note: str | None = None


@dataclass(frozen=True, kw_only=True)
class ShipmentPickedUp(DomainEvent):
    """The carrier has the parcel (`in_transit`): the saga can no longer be undone.
    `carrier_event_id` is None when the carrier confirmed pickup at booking."""

    saga_id: str
    tracking_number: str
    picked_up_at: datetime
    location: str | None = None
    carrier_event_id: str | None = None


@dataclass(frozen=True, kw_only=True)
class CarrierReport(DomainEvent):
    """What a carrier's tracking update says, recorded on the order's stream (the base
    of the three events below)."""

    order_id: str
    tracking_number: str
    carrier_event_id: str
    reported_at: datetime
    location: str | None = None


@dataclass(frozen=True, kw_only=True)
class ShipmentTrackingUpdated(CarrierReport):
    """A tracking update after pickup (in_transit, out_for_delivery, delivery_failed, or
    any that came out of order); `applied` is False for an out-of-order update that does
    not move the shipment's status."""

    status: str
    applied: bool = True


@dataclass(frozen=True, kw_only=True)
class ShipmentDelivered(CarrierReport):
    pass


@dataclass(frozen=True, kw_only=True)
class ShipmentReturned(CarrierReport):
    pass


EVENT_TYPES: dict[str, type[DomainEvent]] = {
    cls.__name__: cls
    for cls in (
        OrderCreated,
        OrderFulfilled,
        OrderCancelled,
        OrderFulfillmentSagaStarted,
        PrescriptionCreated,
        PrescriptionCreationFailed,
        InventoryReserved,
        InventoryReservationFailed,
        ShipmentInitiated,
        ShipmentInitiationFailed,
        SagaStepAttemptFailed,
        OrderFulfillmentSagaCompleted,
        SagaCompensationStarted,
        ShipmentCancelled,
        InventoryReleased,
        PrescriptionCancelled,
        CompensationAttemptFailed,
        SagaCompensationFailed,
        SagaCompensationRetried,
        SagaWaitStarted,
        SagaSignalReceived,
        SagaWaitTimedOut,
        PrescriptionVerified,
        PrescriptionRejected,
        PrescriptionClarificationRequested,
        OrderCancellationRequested,
        ShipmentPickedUp,
        ShipmentTrackingUpdated,
        ShipmentDelivered,
        ShipmentReturned,
    )
}


def register_event_types(*classes: type[DomainEvent]) -> None:
    """Make events declared elsewhere (a saga definition's) known to the mapper; a
    name already taken by another class is refused."""
    for cls in classes:
        if EVENT_TYPES.setdefault(cls.__name__, cls) is not cls:
            raise ValueError(f"event type {cls.__name__} is already registered")

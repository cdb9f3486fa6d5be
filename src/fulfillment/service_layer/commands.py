"""Commands: imperative, frozen, one handler each."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from fulfillment.domain.values import OrderLine, PrescriptionDetails, ShippingAddress
from fulfillment.service_layer.ports import UNCHANGED, IdempotencyRecord, Unchanged


@dataclass(frozen=True)
class Command:
    pass


@dataclass(frozen=True)
class CreateOrder(Command):
    order_id: str
    customer_id: str
    items: tuple[OrderLine, ...]
    prescription: PrescriptionDetails
    shipping_address: ShippingAddress
    # Stored in the same transaction as the order; a key already stored means a replay.
    idempotency: IdempotencyRecord | None = None
    #: The client's key as it was stored before keys were scoped to the API key
    #: (migration 0009): a retry across that upgrade still finds its first order, until
    #: the old row expires.
    legacy_key: str | None = None


@dataclass(frozen=True)
class StartOrderFulfillmentSaga(Command):
    order_id: str


@dataclass(frozen=True)
class SagaCommand(Command):
    """A command that advances one saga; the job queue carries these."""

    saga_id: str


@dataclass(frozen=True)
class RunSagaJob(SagaCommand):
    """Run the saga's job of kind `kind` (a step, a wait's timer, or a compensation):
    the job queue carries these."""

    kind: str


@dataclass(frozen=True)
class RecordJobFailure(SagaCommand):
    """A step or compensation raised: retry it with backoff, or fail it for good (and
    compensate), or park the saga."""

    kind: str
    error: str
    reason: str | None  # a business reason: fail for good; None: transient
    #: A transient failure's least wait before the retry (`TransientFailure.retry_after_seconds`).
    retry_after_seconds: float | None = None


@dataclass(frozen=True)
class SignalSaga(SagaCommand):
    """Deliver the signal `signal` with its JSON `payload` to the saga's wait."""

    signal: str
    payload: dict[str, Any]
    sender: str
    idempotency: IdempotencyRecord | None = None
    #: The sender's API role; a signal may be restricted to some (SignalSpec.roles).
    role: str = "admin"


@dataclass(frozen=True)
class CancelSaga(SagaCommand):
    """Ask a saga to stop (POST /orders/{id}/cancel): it compensates after the step in
    progress, at once when it waits; refused after its pivot."""

    reason: str
    note: str | None
    sender: str
    # Stored with the request; a key already stored means a replay (its first answer).
    idempotency: IdempotencyRecord | None = None


@dataclass(frozen=True)
class RecordTrackingUpdate(Command):
    """A carrier's tracking update (POST /webhooks/carrier, signature checked)."""

    carrier_event_id: str
    tracking_number: str
    status: str  # a TrackingStatus
    reported_at: datetime
    location: str | None = None
    sender: str = "carrier"


@dataclass(frozen=True)
class StartSaga(SagaCommand):
    """Start a saga of the registered definition `name` (at `version`, else its newest);
    `data`: its start event's fields."""

    name: str
    data: dict[str, Any]
    version: int | None = None


@dataclass(frozen=True)
class ResumeSaga(SagaCommand):
    """Operator action on a saga that waits for an operator: its dead job goes back in
    the queue, or, parked in `compensation_failed`, it tries its compensation again."""


@dataclass(frozen=True)
class SetInventory(Command):
    """Set lot `default` (no expiry) of the SKU; its DEA schedule too unless UNCHANGED
    (None clears it)."""

    sku: str
    on_hand: int
    dea_schedule: str | Unchanged | None = UNCHANGED


@dataclass(frozen=True)
class SetLot(Command):
    """Set the units and the expiry of one lot of a SKU."""

    sku: str
    lot: str
    on_hand: int
    expires_on: date

"""Commands: imperative, frozen, one handler each. Every step takes one dataclass input."""

from __future__ import annotations

from dataclasses import dataclass

from fulfillment.domain.order_saga import COMPLETE
from fulfillment.domain.status import Compensation, Step
from fulfillment.domain.values import OrderLine, PrescriptionDetails, ShippingAddress
from fulfillment.service_layer.ports import IdempotencyRecord


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


@dataclass(frozen=True)
class StartOrderFulfillmentSaga(Command):
    order_id: str


@dataclass(frozen=True)
class SagaCommand(Command):
    """A command that advances one saga; the job queue carries these."""

    saga_id: str


@dataclass(frozen=True)
class CreatePrescription(SagaCommand):
    pass


@dataclass(frozen=True)
class ReserveInventory(SagaCommand):
    pass


@dataclass(frozen=True)
class InitiateShipment(SagaCommand):
    pass


@dataclass(frozen=True)
class CompleteOrderFulfillment(SagaCommand):
    pass


@dataclass(frozen=True)
class CancelShipment(SagaCommand):
    pass


@dataclass(frozen=True)
class ReleaseInventory(SagaCommand):
    pass


@dataclass(frozen=True)
class CancelPrescription(SagaCommand):
    pass


@dataclass(frozen=True)
class RecordStepFailure(SagaCommand):
    """A forward step raised: retry it with backoff, or fail it for good and compensate."""

    step: Step
    error: str
    reason: str | None  # a business reason: fail for good; None: transient


@dataclass(frozen=True)
class RecordCompensationFailure(SagaCommand):
    compensation: Compensation
    error: str


@dataclass(frozen=True)
class ResumeSaga(SagaCommand):
    """Operator action on a saga that waits for an operator: its dead job goes back in
    the queue, or, parked in `compensation_failed`, it tries its compensation again."""


@dataclass(frozen=True)
class SetInventory(Command):
    sku: str
    on_hand: int


#: The job kind the queue stores -> the command it runs.
JOB_COMMANDS: dict[str, type[SagaCommand]] = {
    Step.CREATE_PRESCRIPTION.value: CreatePrescription,
    Step.RESERVE_INVENTORY.value: ReserveInventory,
    Step.INITIATE_SHIPMENT.value: InitiateShipment,
    COMPLETE: CompleteOrderFulfillment,
    Compensation.CANCEL_SHIPMENT.value: CancelShipment,
    Compensation.RELEASE_INVENTORY.value: ReleaseInventory,
    Compensation.CANCEL_PRESCRIPTION.value: CancelPrescription,
}

"""The saga policy: which job follows which event (the listeners of the original system).

| event                                  | next job                                |
|----------------------------------------|-----------------------------------------|
| OrderFulfillmentSagaStarted            | create_prescription                     |
| PrescriptionCreated                    | reserve_inventory                       |
| InventoryReserved                      | initiate_shipment                       |
| ShipmentInitiated                      | complete                                |
| SagaStepAttemptFailed                  | the same step, after the backoff        |
| SagaCompensationStarted, a compensation| the compensation on top of the stack    |
| CompensationAttemptFailed              | the same compensation, after the backoff|
| SagaCompensationRetried                | the compensation on top of the stack    |

Only the last event of a transaction decides: one saga has at most one job at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

from fulfillment.domain.events import (
    CompensationAttemptFailed,
    DomainEvent,
    InventoryReleased,
    InventoryReserved,
    OrderFulfillmentSagaStarted,
    PrescriptionCancelled,
    PrescriptionCreated,
    SagaCompensationRetried,
    SagaCompensationStarted,
    SagaStepAttemptFailed,
    ShipmentCancelled,
    ShipmentInitiated,
)
from fulfillment.domain.saga import OrderFulfillmentSaga
from fulfillment.domain.status import Step
from fulfillment.service_layer.jobs import JobSpec

COMPLETE = "complete"

_COMPENSATION_PROGRESS = (
    SagaCompensationStarted,
    ShipmentCancelled,
    InventoryReleased,
    PrescriptionCancelled,
    SagaCompensationRetried,
)


def next_job(saga: OrderFulfillmentSaga, new_events: Sequence[DomainEvent]) -> JobSpec | None:
    """The job that must follow the saga's new events, or None."""
    if not new_events:
        return None
    last = new_events[-1]
    match last:
        case OrderFulfillmentSagaStarted():
            return JobSpec(saga.id, Step.CREATE_PRESCRIPTION.value)
        case PrescriptionCreated():
            return JobSpec(saga.id, Step.RESERVE_INVENTORY.value)
        case InventoryReserved():
            return JobSpec(saga.id, Step.INITIATE_SHIPMENT.value)
        case ShipmentInitiated():
            return JobSpec(saga.id, COMPLETE)
        case SagaStepAttemptFailed(step=step, retry_in_seconds=delay):
            return JobSpec(saga.id, step.value, delay)
        case CompensationAttemptFailed(compensation=compensation, retry_in_seconds=delay):
            return JobSpec(saga.id, compensation.value, delay)
        case _ if isinstance(last, _COMPENSATION_PROGRESS):
            due = saga.next_compensation
            return JobSpec(saga.id, due.value) if due else None
    return None

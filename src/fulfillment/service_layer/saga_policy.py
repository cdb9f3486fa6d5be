"""The saga policy: which job follows which event, read from the saga's definition
(`fulfillment.domain.order_saga.ORDER_SAGA`).

| the transaction's last event of the saga     | next job                                 |
|----------------------------------------------|------------------------------------------|
| OrderFulfillmentSagaStarted                  | the first step                           |
| a step's success event                       | the step after it (none after the last)  |
| SagaStepAttemptFailed                        | the same step, after the backoff         |
| SagaCompensationStarted, a compensation done | the compensation on top of the stack     |
| SagaCompensationRetried                      | the compensation on top of the stack     |
| CompensationAttemptFailed                    | the same compensation, after the backoff |

Only the last event of a transaction decides: one saga has at most one job at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

from fulfillment.domain.events import (
    CompensationAttemptFailed,
    DomainEvent,
    OrderFulfillmentSagaStarted,
    SagaCompensationRetried,
    SagaCompensationStarted,
    SagaStepAttemptFailed,
)
from fulfillment.domain.order_saga import ORDER_SAGA
from fulfillment.domain.saga import OrderFulfillmentSaga
from fulfillment.service_layer.jobs import JobSpec


def next_job(saga: OrderFulfillmentSaga, new_events: Sequence[DomainEvent]) -> JobSpec | None:
    """The job that must follow the saga's new events, or None."""
    if not new_events:
        return None
    last = new_events[-1]
    definition = ORDER_SAGA
    match last:
        case OrderFulfillmentSagaStarted():
            return JobSpec(saga.id, definition.steps[0].name)
        case SagaStepAttemptFailed(step=step, retry_in_seconds=delay):
            return JobSpec(saga.id, step.value, delay)
        case CompensationAttemptFailed(compensation=compensation, retry_in_seconds=delay):
            return JobSpec(saga.id, compensation.value, delay)
    name = type(last).__name__
    if (done := definition.succeeded_by(name)) is not None:
        after = definition.step_after(done.name)
        return JobSpec(saga.id, after.name) if after is not None else None
    if isinstance(last, SagaCompensationStarted | SagaCompensationRetried) or (
        definition.compensated_by(name) is not None
    ):
        due = saga.next_compensation
        return JobSpec(saga.id, due.value) if due else None
    return None

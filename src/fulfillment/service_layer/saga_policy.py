"""The saga policy: which job follows a transaction's new events, read from the saga's
state, which its definition shapes (`fulfillment.domain.saga.Saga.next_job`):

| the saga, after the transaction               | its next job                            |
|-----------------------------------------------|-----------------------------------------|
| running, at a step                            | the step (after the backoff of a retry) |
| running, at a wait with a timeout             | the wait's timer, due at the timeout    |
| running, at a wait without one                | none: a signal will move it             |
| compensating                                  | the compensation on top of the stack    |
| ended, or parked for an operator              | none                                    |
| only asked to stop (a step is in progress)     | none: the step's job honours it          |

Only transactions that recorded events on the saga decide: one saga has at most one job
at a time, and the job it had is the one this transaction consumed (or, for a signal,
cancelled).
"""

from __future__ import annotations

from collections.abc import Sequence

from fulfillment.domain.events import DomainEvent
from fulfillment.domain.saga import Saga
from fulfillment.service_layer.jobs import JobSpec


def next_job(saga: Saga, new_events: Sequence[DomainEvent]) -> JobSpec | None:
    """The job that must follow the saga's new events, or None."""
    if not new_events:
        return None
    cancellation = saga.spec.cancellation
    if cancellation is not None and all(isinstance(e, cancellation) for e in new_events):
        # A request to stop that waits for the step in progress: its job stays as it is.
        return None
    due = saga.next_job
    if due is None:
        return None
    kind, due_at = due
    if due_at is None:
        return JobSpec(saga.id, kind)
    # Relative to the newest event, which is "now" for the transaction that records it.
    delay = (due_at - new_events[-1].occurred_at).total_seconds()
    return JobSpec(saga.id, kind, max(0.0, delay))

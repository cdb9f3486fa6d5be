"""One order's saga as a timeline: what the dashboard and `fulfillment sagas show` display.

`order_timeline` reads the order's two streams once and returns every step (and the final
`complete`) with its status, attempts, errors, start, end and duration; the compensations
in the order they ran (last-in-first-out), then the ones still to run; the queued job;
the whole event history.

Nothing here writes. Times are ISO 8601 UTC; durations are milliseconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from fulfillment import views
from fulfillment.adapters import tables as t
from fulfillment.adapters.db import read_connection
from fulfillment.adapters.event_store import SqlAlchemyEventStore
from fulfillment.adapters.mapper import StoredEvent
from fulfillment.adapters.projections import summarize
from fulfillment.bootstrap import App
from fulfillment.domain import events as ev
from fulfillment.domain.order import Order
from fulfillment.domain.order_saga import COMPLETE, ORDER_SAGA
from fulfillment.domain.saga import DEFINITION, STEP_OF, OrderFulfillmentSaga
from fulfillment.domain.status import Compensation, SagaStatus, Step, StepStatus
from fulfillment.entrypoints.dashboard_data import duration_ms, iso

#: Statuses a step shows: the domain's, plus `running` (being worked on now) and
#: `skipped` (will never run: the saga failed before it).
RUNNING, SKIPPED = "running", "skipped"

# Event class -> the step or compensation it records (the order saga's definition).
_SUCCESS = {s.succeeded: Step(s.name) for s in ORDER_SAGA.forward}
_FAILURE = {s.failed: Step(s.name) for s in ORDER_SAGA.forward if s.failed is not None}
_COMPENSATED = {c.recorded_by: Compensation(c.name) for c in ORDER_SAGA.compensations}
_EVENT_OF_COMPENSATION = {c: e.__name__ for e, c in _COMPENSATED.items()}


def _job_view(row: Mapping[Any, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    return {
        "id": int(row["id"]),
        "kind": row["kind"],
        "status": row["status"],
        "failures": int(row["failures"] or 0),
        "claims": int(row["claims"] or 0),
        "run_at": datetime.fromtimestamp(float(row["run_at"]), UTC).isoformat(),
        "claimed_by": row["claimed_by"],
        "last_error": row["last_error"],
    }


def order_timeline(app: App, order_id: str) -> dict[str, Any] | None:
    """The saga of `order_id` as a timeline; None if there is no such order."""
    with read_connection(app.engine) as conn:
        stored = SqlAlchemyEventStore(conn, app.mapper).read_streams(
            [Order.stream_id_for(order_id), OrderFulfillmentSaga.stream_id_for(order_id)]
        )
        job_row = conn.execute(select(t.jobs).where(t.jobs.c.saga_id == order_id)).first()
    summary = summarize(order_id, stored, app.mapper)
    if summary is None:
        return None
    job = _job_view(job_row._mapping if job_row is not None else None)
    saga_stream = OrderFulfillmentSaga.stream_id_for(order_id)
    saga_events = [
        (e, app.mapper.to_event(e.type, e.event_version, e.data, e.recorded_at))
        for e in stored
        if e.stream_id == saga_stream
    ]
    saga = OrderFulfillmentSaga.replay(order_id, (event for _, event in saga_events))
    walk = _Walk()
    for stored_event, event in saga_events:
        walk.see(stored_event, event)

    started = saga.started_at
    finished = saga.finished_at
    updated_at = stored[-1].recorded_at
    saga_status = saga.status.value if saga.status else SagaStatus.RUNNING.value
    steps = [_step_view(saga, step, walk, job) for step, _ in DEFINITION]
    steps.append(_complete_view(saga, job))
    return {
        "order": {
            "order_id": order_id,
            "status": summary["status"],
            "reason": summary["reason"],
            "customer_id": summary["customer_id"],
            "items": summary["items"],
            "shipment": summary["shipment"],
            "placed_at": iso(summary["placed_at"]),
        },
        "saga": {
            "saga_id": order_id,
            "status": saga_status,
            "reason": saga.failure_reason,
            "failed_step": saga.failed_step.value if saga.failed_step else None,
            "parked_error": saga.parked_error,
            "definition_version": saga.definition_version,
            "started_at": iso(started),
            "finished_at": iso(finished),
            "deadline_at": iso(saga.deadline_at),
            "duration_ms": duration_ms(started, finished),
            "updated_at": iso(updated_at),
            "stuck": views.is_stuck(app, order_id),
        },
        "steps": steps,
        "compensation": {
            "started_at": iso(walk.compensation_started_at),
            "planned": walk.planned,
            "ran": walk.compensations,
            "pending": _pending_compensations(saga),
        },
        "job": job,
        "events": [e.as_dict() for e in stored],
    }


class _Walk:
    """What the saga's events say that its state does not keep: each attempt, in order."""

    def __init__(self) -> None:
        self.attempts: dict[Step, list[dict[str, Any]]] = {s: [] for s, _ in DEFINITION}
        self.compensation_attempts: dict[Compensation, list[dict[str, Any]]] = {
            c: [] for _, c in DEFINITION
        }
        self.compensations: list[dict[str, Any]] = []
        self.compensation_started_at: datetime | None = None
        self.planned: list[str] = []
        self._mark: datetime | None = None  # when the next compensation became due

    def see(self, stored: StoredEvent, event: ev.DomainEvent) -> None:
        at = event.occurred_at
        base = {"at": iso(at), "position": stored.position, "event": stored.type}
        kind = type(event)
        if kind in _SUCCESS:
            tried = self.attempts[_SUCCESS[kind]]
            tried.append({**base, "attempt": len(tried) + 1, "outcome": "succeeded"})
        elif isinstance(event, ev.SagaStepAttemptFailed):
            self.attempts[event.step].append(
                {
                    **base,
                    "attempt": event.attempt,
                    "outcome": "retried",
                    "error": event.error,
                    "retry_in_seconds": event.retry_in_seconds,
                }
            )
        elif kind in _FAILURE:
            tried = self.attempts[_FAILURE[kind]]
            tried.append(
                {
                    **base,
                    "attempt": len(tried) + 1,
                    "outcome": "failed",
                    "error": getattr(event, "error", None),
                    "reason": getattr(event, "reason", None),
                }
            )
        elif isinstance(event, ev.SagaCompensationStarted):
            self.compensation_started_at = at
            self.planned = [c.value for c in event.compensations]
            self._mark = at
        elif kind in _COMPENSATED:
            compensation = _COMPENSATED[kind]
            tried = self.compensation_attempts[compensation]
            tried.append({**base, "attempt": len(tried) + 1, "outcome": "succeeded"})
            self.compensations.append(
                {
                    "order": len(self.compensations) + 1,
                    "name": compensation.value,
                    "undoes": STEP_OF[compensation].value,
                    "event": stored.type,
                    "position": stored.position,
                    "status": "done",
                    "started_at": iso(self._mark),
                    "finished_at": iso(at),
                    "duration_ms": duration_ms(self._mark, at),
                    "attempts": list(tried),
                }
            )
            self._mark = at
        elif isinstance(event, ev.CompensationAttemptFailed):
            tried = self.compensation_attempts[event.compensation]
            tried.append(
                {
                    **base,
                    "attempt": event.attempt,
                    "outcome": "retried",
                    "error": event.error,
                    "retry_in_seconds": event.retry_in_seconds,
                }
            )
        elif isinstance(event, ev.SagaCompensationFailed):
            tried = self.compensation_attempts[event.compensation]
            tried.append(
                {**base, "attempt": len(tried) + 1, "outcome": "failed", "error": event.error}
            )
        elif isinstance(event, ev.SagaCompensationRetried):
            self.compensation_attempts[event.compensation].append(
                {**base, "attempt": None, "outcome": "operator_retry"}
            )
            self._mark = at


def _display_status(saga: OrderFulfillmentSaga, step: Step) -> str:
    status = saga.steps[step].status
    if status is not StepStatus.PENDING:
        return status.value
    if saga.next_step is step:
        return RUNNING
    if saga.status is not None and saga.status is not SagaStatus.RUNNING:
        return SKIPPED
    return StepStatus.PENDING.value


def _step_view(
    saga: OrderFulfillmentSaga, step: Step, walk: _Walk, job: dict[str, Any] | None
) -> dict[str, Any]:
    state = saga.steps[step]
    compensation = dict(DEFINITION)[step]
    ran = next((c for c in walk.compensations if c["name"] == compensation.value), None)
    compensating = saga.status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATION_FAILED)
    undo: dict[str, Any] | None = None
    if ran is not None or (compensating and compensation in saga.compensation_stack):
        if ran is not None:
            undo_status = "done"
        elif state.status is StepStatus.COMPENSATION_FAILED:
            undo_status = "failed"
        elif saga.next_compensation is compensation:
            undo_status = RUNNING
        else:
            undo_status = "pending"
        undo = {
            "name": compensation.value,
            "event": _EVENT_OF_COMPENSATION[compensation],
            "status": undo_status,
            "at": iso(state.compensated_at),
            "attempts": walk.compensation_attempts[compensation],
        }
    return {
        "name": step.value,
        "status": _display_status(saga, step),
        "attempts": state.attempts,
        "errors": list(state.errors),
        "attempt_log": walk.attempts[step],
        "started_at": iso(state.started_at) if state.attempts or saga.next_step is step else None,
        "finished_at": iso(state.finished_at),
        "duration_ms": duration_ms(state.started_at, state.finished_at),
        "compensation": undo,
        "job": job if job is not None and job["kind"] in (step.value, compensation.value) else None,
    }


def _complete_view(saga: OrderFulfillmentSaga, job: dict[str, Any] | None) -> dict[str, Any]:
    shipped = saga.steps[Step.INITIATE_SHIPMENT]
    if saga.status is SagaStatus.COMPLETED:
        status = StepStatus.SUCCEEDED.value
    elif saga.ready_to_complete:
        status = RUNNING
    elif saga.status in (
        SagaStatus.COMPENSATING,
        SagaStatus.COMPENSATED,
        SagaStatus.COMPENSATION_FAILED,
    ):
        status = SKIPPED
    else:
        status = StepStatus.PENDING.value
    started = shipped.finished_at if shipped.status is StepStatus.SUCCEEDED else None
    finished = saga.finished_at if saga.status is SagaStatus.COMPLETED else None
    return {
        "name": COMPLETE,
        "status": status,
        "attempts": 1 if finished else 0,
        "errors": [],
        "attempt_log": [],
        "started_at": iso(started),
        "finished_at": iso(finished),
        "duration_ms": duration_ms(started, finished),
        "compensation": None,
        "job": job if job is not None and job["kind"] == COMPLETE else None,
    }


def _pending_compensations(saga: OrderFulfillmentSaga) -> list[dict[str, Any]]:
    """Still to undo, next first (the top of the LIFO stack)."""
    if saga.status not in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATION_FAILED):
        return []
    pending = []
    for n, compensation in enumerate(reversed(saga.compensation_stack)):
        parked = n == 0 and saga.status is SagaStatus.COMPENSATION_FAILED
        status = "failed" if parked else RUNNING if n == 0 else "pending"
        pending.append(
            {
                "name": compensation.value,
                "undoes": STEP_OF[compensation].value,
                "event": _EVENT_OF_COMPENSATION[compensation],
                "status": status,
                "error": saga.parked_error if parked else None,
            }
        )
    return pending

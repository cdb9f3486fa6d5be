"""One order's saga as a timeline: what the dashboard and `fulfillment sagas show` display.

`order_timeline` reads the order's two streams once, folds each event once (the order
summary, the saga's state and each attempt come from that one pass) and returns every
step and wait of the saga's definition (the pivot, `complete`, last) with its status,
attempts, errors, start, end and duration; the compensations in the order they ran
(last in, first out), then the ones still to run; the queued job; the whole history.

A step's (or a compensation's) time is split: `queued_ms`, how long its job waited in
the queue for a worker once due (the step became due when the one before it ended, an
attempt after a retry's backoff), and `run_ms`, how long the worker's runs took, from
the start of each run (the metadata `job_started_at` of the events the run recorded) to
its outcome event; `backoff_ms`, the retries' backoffs. Both are None for the events of a
run whose start was not recorded. A step whose job died (`FULFILLMENT_MAX_JOB_FAILURES`
unexpected errors) is `dead`, with the command that puts it back (`action`).

The order's pharmacy lifecycle (`lifecycle`): its verification and each decision on it,
a cancellation requested, the carrier's pickup, every tracking update (applied or not)
and the lots its reservation took. Each event of the lifecycle has a `title` ("Verified
by ph-12", "Out for delivery"); the others' is None.

Times are ISO 8601 UTC; durations are milliseconds. With `include_phi=False` (a key whose
role may not read patient data) the events' data leave out `PHI_FIELDS`, and the
lifecycle's notes are None (`note_hidden` says one was left out).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from fulfillment.adapters.db import read_connection
from fulfillment.adapters.event_store import SqlAlchemyEventStore
from fulfillment.adapters.mapper import StoredEvent
from fulfillment.adapters.projections import replay_order, summary_of
from fulfillment.bootstrap import App
from fulfillment.domain import events as ev
from fulfillment.domain.saga import Saga
from fulfillment.domain.saga_definition import REGISTRY, SagaDefinition, StepSpec, WaitSpec
from fulfillment.domain.status import SagaStatus, StepStatus, TrackingStatus
from fulfillment.service_layer import order_saga
from fulfillment.service_layer.order_saga import Step
from fulfillment.views.common import duration_ms, iso, streams
from fulfillment.views.jobs import job_row, job_view
from fulfillment.views.sagas import is_stuck

#: Statuses a step shows: the domain's, plus `running` (being worked on now),
#: `skipped` (will never run: the saga failed before it) and `dead` (its job died: no
#: worker takes it until an operator puts it back).
RUNNING, SKIPPED, DEAD = "running", "skipped", "dead"
#: The job status of a dead job (adapters/job_queue.py).
_DEAD_JOB = "dead"
#: The fields of an event's data that hold patient data (`OrderCreated`,
#: `OrderFulfillmentSagaStarted`): the prescription (patient, prescriber) and the address;
#: and the free-text `note` of a pharmacist's decision or a cancellation, which may hold
#: clinical detail (also in the `payload` of the decision's `SagaSignalReceived`).
PHI_FIELDS = frozenset({"prescription", "shipping_address", "note"})
#: The data fields whose dict value is stripped of `PHI_FIELDS` too, one level down.
_NESTED = frozenset({"payload"})


def order_timeline(app: App, order_id: str, *, include_phi: bool = True) -> dict[str, Any] | None:
    """The saga of `order_id` as a timeline; None if there is no such order.
    `include_phi=False`: the events' data without `PHI_FIELDS`."""
    return _timeline(app, order_id, of_order=True, include_phi=include_phi)


def saga_timeline(app: App, saga_id: str, *, include_phi: bool = True) -> dict[str, Any] | None:
    """Any saga as a timeline (`order` is None for a saga that fulfils no order); None
    if there is no such saga nor order. `include_phi` as for `order_timeline`."""
    return _timeline(app, saga_id, of_order=False, include_phi=include_phi)


def _without_phi(data: dict[str, Any]) -> dict[str, Any]:
    return {
        k: _without_phi(v) if k in _NESTED and isinstance(v, dict) else v
        for k, v in data.items()
        if k not in PHI_FIELDS
    }


def _event_view(stored: StoredEvent, *, include_phi: bool) -> dict[str, Any]:
    view = stored.as_dict()
    data = view["data"]
    view["title"] = event_title(stored.type, data) if isinstance(data, dict) else None
    if not include_phi and isinstance(data, dict):
        view["data"] = _without_phi(data)
    return view


_TRACKING_TITLES = {
    TrackingStatus.IN_TRANSIT.value: "In transit",
    TrackingStatus.OUT_FOR_DELIVERY.value: "Out for delivery",
    TrackingStatus.DELIVERY_FAILED.value: "Delivery failed",
    TrackingStatus.DELIVERED.value: "Delivered",
    TrackingStatus.RETURNED_TO_SENDER.value: "Returned to sender",
}
_WAIT_TITLES = {
    Step.VERIFY_PRESCRIPTION.value: "Waiting for a pharmacist's decision",
    Step.AWAIT_PICKUP.value: "Waiting for the carrier's pickup",
}


def event_title(event_type: str, data: dict[str, Any]) -> str | None:
    """What an event of the pharmacy lifecycle (and of a saga's waits) says, in a few
    words, never with its `note`; None for the other events."""
    at = f" at {data['location']}" if data.get("location") else ""
    who = data.get("pharmacist_id") or data.get("by")
    match event_type:
        case ev.PrescriptionVerified.__name__ if data.get("by") == "policy":
            return "Verified by policy: no pharmacist review required"
        case ev.PrescriptionVerified.__name__:
            return f"Verified by {who}"
        case ev.PrescriptionRejected.__name__:
            reason = f": {data['reason']}" if data.get("reason") else ""
            return f"Rejected by {who}{reason}"
        case ev.PrescriptionClarificationRequested.__name__:
            return f"Clarification asked of the prescriber by {who}"
        case ev.OrderCancellationRequested.__name__:
            return f"Cancellation requested: {data.get('reason')}"
        case ev.ShipmentPickedUp.__name__:
            return f"Picked up by the carrier{at}"
        case ev.ShipmentTrackingUpdated.__name__:
            status = str(data.get("status"))
            late = "" if data.get("applied", True) else " (out of order: not applied)"
            return f"{_TRACKING_TITLES.get(status, status)}{at}{late}"
        case ev.ShipmentDelivered.__name__:
            return f"Delivered{at}"
        case ev.ShipmentReturned.__name__:
            return f"Returned to sender{at}"
        case ev.SagaWaitStarted.__name__:
            wait = str(data.get("wait"))
            return _WAIT_TITLES.get(wait, f"Waiting at {wait}")
        case ev.SagaSignalReceived.__name__:
            return f"Signal {data.get('signal')} received: {data.get('outcome')}"
        case ev.SagaWaitTimedOut.__name__:
            reason = f": {data['reason']}" if data.get("reason") else ""
            return f"No signal in time at {data.get('wait')}{reason}"
    return None


def _timeline(
    app: App, order_id: str, *, of_order: bool, include_phi: bool
) -> dict[str, Any] | None:
    with read_connection(app.engine) as conn:
        stored = SqlAlchemyEventStore(conn, app.mapper).read_streams(streams(order_id))
        if include_phi:  # else the views leave the patient data out, sealed or not
            stored = [app.mapper.open(conn, e) for e in stored]
        row = job_row(conn, order_id)
    walk = _Walk()
    replayed = replay_order(order_id, stored, app.mapper, watch=walk.see)
    summary: dict[str, Any] | None = None
    if replayed is not None:
        order, found, created, last = replayed
        summary = summary_of(order, found, created, last)
        # Not started yet: the order saga, every step pending.
        saga = found if found is not None else Saga(order_id)
    elif of_order or not stored:
        return None
    else:
        saga = Saga.replay(order_id, _decoded(app, stored, walk))
        last = stored[-1]
    job = job_view(row)
    started = saga.started_at
    finished = saga.finished_at
    saga_status = saga.status.value if saga.status else SagaStatus.RUNNING.value
    definition = saga.definition
    steps = (
        [_step_view(saga, step, walk, job) for step in definition.steps]
        if definition is not None
        else []
    )
    return {
        "order": {
            "order_id": order_id,
            "status": summary["status"],
            "reason": summary["reason"],
            "customer_id": summary["customer_id"],
            "items": summary["items"],
            "shipment": summary["shipment"],
            "verification": summary["verification"],
            "lots": summary["lots"],
            "placed_at": iso(summary["placed_at"]),
        }
        if summary is not None
        else None,
        "saga": {
            "saga_id": order_id,
            "status": saga_status,
            "reason": saga.failure_reason,
            "failed_step": saga.failed_step,
            "parked_error": saga.parked_error,
            "definition": definition.name if definition else None,
            "definition_version": definition.version if definition else None,
            "started_at": iso(started),
            "finished_at": iso(finished),
            "deadline_at": iso(saga.deadline_at),
            "duration_ms": duration_ms(started, finished),
            "updated_at": iso(last.recorded_at),
            "stuck": is_stuck(app, order_id),
        },
        "steps": steps,
        "compensation": {
            "started_at": iso(walk.compensation_started_at),
            "planned": walk.planned,
            "ran": walk.compensations,
            "pending": _pending_compensations(saga, job),
        },
        "job": job,
        "lifecycle": _lifecycle(app, stored, saga, include_phi=include_phi)
        if summary is not None
        else None,
        "events": [_event_view(e, include_phi=include_phi) for e in stored],
    }


_LIFECYCLE_EVENTS = frozenset(
    cls.__name__
    for cls in (
        ev.PrescriptionVerified,
        ev.PrescriptionRejected,
        ev.PrescriptionClarificationRequested,
        ev.SagaWaitTimedOut,
        ev.OrderCancellationRequested,
        ev.ShipmentPickedUp,
        ev.ShipmentTrackingUpdated,
        ev.ShipmentDelivered,
        ev.ShipmentReturned,
    )
)
_DECISIONS: dict[type[ev.DomainEvent], str] = {
    ev.PrescriptionVerified: "approve",
    ev.PrescriptionRejected: "reject",
    ev.PrescriptionClarificationRequested: "request_clarification",
}


def _lifecycle(
    app: App, stored: list[StoredEvent], saga: Saga, *, include_phi: bool
) -> dict[str, Any]:
    """The order's verification (and each decision), its cancellation requested, its
    pickup and the carrier's updates, in commit order; the lots its reservation took."""
    decisions: list[dict[str, Any]] = []
    cancellation: dict[str, Any] | None = None
    pickup: dict[str, Any] | None = None
    tracking: list[dict[str, Any]] = []

    def note_of(note: str | None) -> dict[str, Any]:
        return {
            "note": note if include_phi else None,
            "note_hidden": note is not None and not include_phi,
        }

    for e in stored:
        if e.type not in _LIFECYCLE_EVENTS:
            continue
        event = app.mapper.to_event(e.type, e.event_version, e.data, e.recorded_at)
        base = {"at": iso(e.recorded_at), "position": e.position, "event": e.type}
        if isinstance(
            event,
            ev.PrescriptionVerified
            | ev.PrescriptionRejected
            | ev.PrescriptionClarificationRequested,
        ):
            policy = isinstance(event, ev.PrescriptionVerified) and event.by == "policy"
            decisions.append(
                {
                    **base,
                    "decision": "policy" if policy else _DECISIONS[type(event)],
                    "pharmacist_id": event.pharmacist_id,
                    "by": event.by,
                    "reason": event.reason if isinstance(event, ev.PrescriptionRejected) else None,
                    **note_of(event.note),
                }
            )
        elif isinstance(event, ev.SagaWaitTimedOut) and event.wait == Step.VERIFY_PRESCRIPTION:
            decisions.append(
                {
                    **base,
                    "decision": "timeout",
                    "pharmacist_id": None,
                    "by": None,
                    "reason": event.reason,
                    **note_of(None),
                }
            )
        elif isinstance(event, ev.OrderCancellationRequested):
            cancellation = {**base, "reason": event.reason, "by": event.by, **note_of(event.note)}
        elif isinstance(event, ev.ShipmentPickedUp):
            pickup = {
                **base,
                "picked_up_at": iso(event.picked_up_at),
                "location": event.location,
                "carrier_event_id": event.carrier_event_id,
                "tracking_number": event.tracking_number,
            }
            tracking.append(
                _tracking(base, event, TrackingStatus.IN_TRANSIT.value, event.picked_up_at)
            )
        elif isinstance(event, ev.ShipmentTrackingUpdated):
            tracking.append(_tracking(base, event, event.status, event.reported_at, event.applied))
        elif isinstance(event, ev.ShipmentDelivered):
            tracking.append(
                _tracking(base, event, TrackingStatus.DELIVERED.value, event.reported_at)
            )
        elif isinstance(event, ev.ShipmentReturned):
            tracking.append(
                _tracking(base, event, TrackingStatus.RETURNED_TO_SENDER.value, event.reported_at)
            )
    verify = saga.steps.get(Step.VERIFY_PRESCRIPTION)
    waits_for_pickup = saga.waiting is not None and saga.waiting.name == Step.AWAIT_PICKUP
    pickup_state = saga.steps.get(Step.AWAIT_PICKUP)
    return {
        "verification": {
            **order_saga.verification(saga if saga.started is not None else None),
            "waiting": order_saga.awaiting_verification(saga),
            "waiting_since": iso(verify.started_at) if verify is not None else None,
            "timeout_at": iso(verify.due_at) if verify is not None else None,
            "decisions": decisions,
        },
        "cancellation": cancellation,
        "pickup": pickup,
        "awaiting_pickup": {
            "since": iso(pickup_state.started_at) if pickup_state is not None else None,
            "timeout_at": iso(pickup_state.due_at) if pickup_state is not None else None,
        }
        if waits_for_pickup
        else None,
        "tracking": tracking,
        "lots": order_saga.lots(saga),
    }


def _tracking(
    base: dict[str, Any],
    event: ev.ShipmentPickedUp
    | ev.ShipmentTrackingUpdated
    | ev.ShipmentDelivered
    | ev.ShipmentReturned,
    status: str,
    reported_at: datetime,
    applied: bool = True,
) -> dict[str, Any]:
    return {
        **base,
        "status": status,
        "location": event.location,
        "reported_at": iso(reported_at),
        "applied": applied,
        "carrier_event_id": event.carrier_event_id,
    }


def _decoded(app: App, stored: list[StoredEvent], walk: _Walk) -> Iterator[ev.DomainEvent]:
    for e in stored:
        event = app.mapper.to_event(e.type, e.event_version, e.data, e.recorded_at)
        walk.see(e, event)
        yield event


class _Walk:
    """What the saga's events say that its state does not keep: each attempt, in order.
    It sees each event as the saga's replay applies it (`replay_order(watch=...)`)."""

    def __init__(self) -> None:
        self.attempts: dict[str, list[dict[str, Any]]] = {}
        self.compensation_attempts: dict[str, list[dict[str, Any]]] = {}
        self.compensations: list[dict[str, Any]] = []
        self.compensation_started_at: datetime | None = None
        self.planned: list[str] = []
        #: When each compensation's first attempt became due.
        self.compensation_due: dict[str, datetime | None] = {}
        self._mark: datetime | None = None  # when the next compensation became due
        self._definition: SagaDefinition | None = None

    def see(self, stored: StoredEvent, event: ev.DomainEvent) -> None:
        if self._definition is None:
            self._definition = REGISTRY.for_start(event)
            return
        definition = self._definition
        at = event.occurred_at
        base = {
            "at": iso(at),
            "position": stored.position,
            "event": stored.type,
            # When the run of the job that recorded it began; None: not a job's run.
            "started_at": (stored.metadata or {}).get("job_started_at"),
        }
        name = type(event).__name__
        if (step := definition.succeeded_by(name)) is not None:
            tried = self.attempts.setdefault(step.name, [])
            tried.append({**base, "attempt": len(tried) + 1, "outcome": "succeeded"})
        elif isinstance(event, ev.SagaStepAttemptFailed):
            self.attempts.setdefault(event.step, []).append(
                {
                    **base,
                    "attempt": event.attempt,
                    "outcome": "retried",
                    "error": event.error,
                    "retry_in_seconds": event.retry_in_seconds,
                }
            )
        elif (step := definition.failed_by(name)) is not None:
            tried = self.attempts.setdefault(step.name, [])
            tried.append(
                {
                    **base,
                    "attempt": len(tried) + 1,
                    "outcome": "failed",
                    "error": getattr(event, "error", None),
                    "reason": getattr(event, "reason", None),
                }
            )
        elif isinstance(event, ev.SagaSignalReceived | ev.SagaWaitTimedOut):
            tried = self.attempts.setdefault(event.wait, [])
            signal = event.signal if isinstance(event, ev.SagaSignalReceived) else "timeout"
            tried.append(
                {
                    **base,
                    "attempt": len(tried) + 1,
                    "outcome": {"continue": "succeeded", "fail": "failed"}.get(
                        event.outcome, "waiting"
                    ),
                    "signal": signal,
                    "reason": event.reason,
                }
            )
        elif isinstance(event, ev.SagaCompensationStarted):
            self.compensation_started_at = at
            self.planned = list(event.compensations)
            self._mark = at
        elif (step := definition.compensated_by(name)) is not None and step.compensation:
            compensation = step.compensation.name
            tried = self._compensation_tried(compensation)
            tried.append({**base, "attempt": len(tried) + 1, "outcome": "succeeded"})
            self.compensations.append(
                {
                    "order": len(self.compensations) + 1,
                    "name": compensation,
                    "undoes": step.name,
                    "event": stored.type,
                    "position": stored.position,
                    "status": "done",
                    "started_at": iso(self._mark),
                    "finished_at": iso(at),
                    "duration_ms": duration_ms(self._mark, at),
                    **timed_runs(tried, self.compensation_due[compensation]),
                    "attempts": list(tried),
                }
            )
            self._mark = at
        elif isinstance(event, ev.CompensationAttemptFailed):
            self._compensation_tried(event.compensation).append(
                {
                    **base,
                    "attempt": event.attempt,
                    "outcome": "retried",
                    "error": event.error,
                    "retry_in_seconds": event.retry_in_seconds,
                }
            )
        elif isinstance(event, ev.SagaCompensationFailed):
            tried = self._compensation_tried(event.compensation)
            tried.append(
                {**base, "attempt": len(tried) + 1, "outcome": "failed", "error": event.error}
            )
        elif isinstance(event, ev.SagaCompensationRetried):
            self._compensation_tried(event.compensation).append(
                {**base, "attempt": None, "outcome": OPERATOR_RETRY}
            )
            self._mark = at

    def _compensation_tried(self, compensation: str) -> list[dict[str, Any]]:
        """The attempts of `compensation` so far (noting when it became due, at the first)."""
        self.compensation_due.setdefault(compensation, self._mark)
        return self.compensation_attempts.setdefault(compensation, [])


#: The outcome of an operator's retry of a parked compensation: not a run of its own.
OPERATOR_RETRY = "operator_retry"


def timed_runs(attempts: list[dict[str, Any]], due: datetime | None) -> dict[str, float | None]:
    """How long the runs of a step or compensation waited in the queue and ran.

    `attempts` are its runs' outcomes in order (each with `at` and the run's
    `started_at`), the first one due at `due`; a retried one makes the next due after its
    backoff, an operator's retry at once. Each attempt gets its `due_at`, `queued_ms`
    and `run_ms`. Returns their sums, `queued_ms` and `run_ms` (None when the start of a
    run is unknown), and `backoff_ms`, the backoffs between them."""
    queued: float | None = 0.0
    run: float | None = 0.0
    backoff = 0.0
    for attempt in attempts:
        end = datetime.fromisoformat(attempt["at"])
        if attempt["outcome"] == OPERATOR_RETRY:
            due = end
            continue
        start = attempt.get("started_at")
        began = datetime.fromisoformat(start) if start else None
        attempt["due_at"] = iso(due)
        attempt["queued_ms"] = _at_least_0(duration_ms(due, began))
        attempt["run_ms"] = _at_least_0(duration_ms(began, end))
        queued = _plus(queued, attempt["queued_ms"])
        run = _plus(run, attempt["run_ms"])
        retry = attempt.get("retry_in_seconds") if attempt["outcome"] == "retried" else None
        due = end + timedelta(seconds=retry) if retry is not None else None
        backoff += (retry or 0) * 1000
    return {
        "queued_ms": queued if attempts else None,
        "run_ms": run if attempts else None,
        "backoff_ms": round(backoff, 3),
    }


def _at_least_0(ms: float | None) -> float | None:
    # The run's start and its outcome are on the worker's clock, the due time on the one
    # that recorded the step before: a little skew must not show as a negative wait.
    return None if ms is None else max(ms, 0.0)


def _plus(total: float | None, ms: float | None) -> float | None:
    return None if total is None or ms is None else round(total + ms, 3)


def _display_status(saga: Saga, element: StepSpec | WaitSpec) -> str:
    status = saga.steps[element.name].status
    if status is not StepStatus.PENDING:
        return status.value
    if saga.next_step == element.name:
        return RUNNING
    if saga.status is not None and saga.status is not SagaStatus.RUNNING:
        return SKIPPED
    return StepStatus.PENDING.value


def _dead(job: dict[str, Any] | None, kind: str) -> bool:
    """Whether `job` is the saga's job of `kind`, and dead."""
    return job is not None and job["kind"] == kind and job["status"] == _DEAD_JOB


def retry_command(saga_id: str) -> str:
    """What puts a saga's dead job back in the queue."""
    return f"fulfillment jobs retry {saga_id}"


def _step_view(
    saga: Saga, element: StepSpec | WaitSpec, walk: _Walk, job: dict[str, Any] | None
) -> dict[str, Any]:
    state = saga.steps[element.name]
    compensation = element.compensation if isinstance(element, StepSpec) else None
    undo: dict[str, Any] | None = None
    kinds = {element.name}
    status = _display_status(saga, element)
    if status == RUNNING and _dead(job, element.name):
        status = DEAD
    dead = status == DEAD
    if compensation is not None:
        kinds.add(compensation.name)
        ran = next((c for c in walk.compensations if c["name"] == compensation.name), None)
        compensating = saga.status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATION_FAILED)
        if ran is not None or (compensating and compensation.name in saga.compensation_stack):
            if ran is not None:
                undo_status = "done"
            elif state.status is StepStatus.COMPENSATION_FAILED:
                undo_status = "failed"
            elif saga.next_compensation == compensation.name:
                undo_status = DEAD if _dead(job, compensation.name) else RUNNING
            else:
                undo_status = "pending"
            dead = dead or undo_status == DEAD
            attempts = walk.compensation_attempts.get(compensation.name, [])
            undo = {
                "name": compensation.name,
                "event": compensation.recorded_by.__name__,
                "status": undo_status,
                "at": iso(state.compensated_at),
                **timed_runs(attempts, walk.compensation_due.get(compensation.name)),
                "attempts": attempts,
            }
    is_current = saga.next_step == element.name or saga.waiting is element
    waiting = isinstance(element, WaitSpec)
    attempt_log = walk.attempts.get(element.name, [])
    none: dict[str, float | None] = {"queued_ms": None, "run_ms": None, "backoff_ms": None}
    return {
        "name": element.name,
        "kind": "wait" if waiting else "pivot" if getattr(element, "pivot", False) else "step",
        "title": element.title,
        "description": element.description,
        "status": status,
        "attempts": state.attempts,
        "errors": list(state.errors),
        "attempt_log": attempt_log,
        "started_at": iso(state.started_at) if state.attempts or is_current else None,
        "finished_at": iso(state.finished_at),
        "duration_ms": duration_ms(state.started_at, state.finished_at),
        # A wait waits for the world, not in the queue: its time is its duration.
        **(none if waiting else timed_runs(attempt_log, state.started_at)),
        "compensation": undo,
        "signals": [s.name for s in element.signals] if isinstance(element, WaitSpec) else [],
        "timeout_at": iso(state.due_at) if waiting else None,
        "job": job if job is not None and job["kind"] in kinds else None,
        "action": retry_command(saga.id) if dead else None,
    }


def _pending_compensations(saga: Saga, job: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Still to undo, next first (the top of the LIFO stack)."""
    if saga.status not in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATION_FAILED):
        return []
    pending = []
    for n, compensation in enumerate(reversed(saga.compensation_stack)):
        parked = n == 0 and saga.status is SagaStatus.COMPENSATION_FAILED
        status = "failed" if parked else RUNNING if n == 0 else "pending"
        dead = status == RUNNING and _dead(job, compensation)
        status = DEAD if dead else status
        error = saga.parked_error if parked else None
        if dead and job is not None:
            error = job["last_error"]
        pending.append(
            {
                "name": compensation,
                "undoes": saga.spec.undone_by(compensation).name,
                "event": saga.spec.compensation(compensation).recorded_by.__name__,
                "status": status,
                "error": error,
                "action": retry_command(saga.id) if dead else None,
            }
        )
    return pending

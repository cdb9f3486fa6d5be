"""Sagas: a page of them, one in detail, their count, and THE definition of "stuck".

A saga is stuck (`_stuck`, one SQL condition over its summary row and its job row, the
only one) when it is not finished, and parked (`compensation_failed`), or its job is
dead, or it has made no progress for a whole step timeout. `list_sagas(status=STUCK)`,
`is_stuck` and each saga's `stuck` flag all ask that condition.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, func, or_, select
from sqlalchemy.sql.elements import ColumnElement

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import read_connection
from fulfillment.adapters.job_queue import DEAD
from fulfillment.adapters.mapper import to_utc
from fulfillment.bootstrap import App
from fulfillment.domain import events as ev
from fulfillment.domain.saga import Saga
from fulfillment.domain.status import SagaStatus
from fulfillment.views.common import InvalidQuery, page, read_streams
from fulfillment.views.jobs import job_row, job_view

STUCK = "stuck"
_NOT_TERMINAL = (
    SagaStatus.RUNNING.value,
    SagaStatus.COMPENSATING.value,
    SagaStatus.COMPENSATION_FAILED.value,
)
_SAGA_STATUSES = frozenset(s.value for s in SagaStatus) | {STUCK}


# --- stuck --------------------------------------------------------------------------------


def _stuck_since(app: App) -> datetime:
    """Sagas without progress since this moment are stuck."""
    return app.clock.now() - timedelta(seconds=app.settings.step_timeout_seconds)


def _stuck(stuck_since: datetime) -> ColumnElement[bool]:
    """THE definition of a stuck saga, over its summary row and its job row: not
    finished, and parked, or its job dead, or no progress for a whole step timeout."""
    s, j = t.order_summaries, t.jobs
    return and_(
        s.c.saga_status.in_(_NOT_TERMINAL),
        or_(
            s.c.saga_status == SagaStatus.COMPENSATION_FAILED.value,
            j.c.status == DEAD,
            s.c.updated_at < stuck_since,
        ),
    )


def _with_job() -> Any:
    return t.order_summaries.outerjoin(t.jobs, t.jobs.c.saga_id == t.order_summaries.c.order_id)


def is_stuck(app: App, saga_id: str) -> bool:
    """Whether the saga is stuck (`_stuck`); a saga not projected yet is not."""
    query = (
        select(_stuck(_stuck_since(app)))
        .select_from(_with_job())
        .where(t.order_summaries.c.order_id == saga_id)
    )
    with read_connection(app.engine) as conn:
        return bool(conn.execute(query).scalar())


# --- sagas --------------------------------------------------------------------------------


def list_sagas(
    app: App, status: str | None, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Sagas newest first, with their job; `status` is a saga status or `stuck`.

    A saga is stuck when it is parked (`compensation_failed`), or not finished and its
    job is dead, or has made no progress for longer than the step timeout.
    """
    s, j = t.order_summaries, t.jobs
    stuck_since = _stuck_since(app)
    query = select(
        s.c.order_id,
        s.c.created_position,
        s.c.saga_status,
        s.c.steps,
        s.c.reason,
        s.c.updated_at,
        j.c.id,
        j.c.kind,
        j.c.status.label("job_status"),
        j.c.failures,
        j.c.claims,
        j.c.run_at,
        j.c.claimed_by,
        j.c.last_error,
        _stuck(stuck_since).label("stuck"),
    ).select_from(_with_job())
    if status == STUCK:
        query = query.where(_stuck(stuck_since))
    elif status is not None:
        if status not in _SAGA_STATUSES:
            raise InvalidQuery(f"unknown saga status {status!r}")
        query = query.where(s.c.saga_status == status)
    rows, next_cursor = page(app, query, limit, cursor)
    sagas = []
    for r in rows:
        job = {**r, "status": r["job_status"]}
        updated_at = to_utc(r["updated_at"])
        sagas.append(
            {
                "saga_id": r["order_id"],
                "order_id": r["order_id"],
                "status": r["saga_status"],
                "steps": [
                    {"name": x["name"], "status": x["status"], "attempts": int(x["attempts"])}
                    for x in r["steps"]
                ],
                "reason": r["reason"],
                "stuck": bool(r["stuck"]),
                "job": job_view(job),
                "updated_at": updated_at.isoformat(),
            }
        )
    return sagas, next_cursor


def saga_detail(app: App, saga_id: str) -> dict[str, Any] | None:
    """Everything an operator needs about one saga, read fresh from its stream.

    Steps carry their errors and compensation attempts; `pending_compensations` is what
    is still to undo, top of the stack first; `job` is its queued job, if any.
    """
    stored = [e for e in read_streams(app, saga_id) if e.stream_id.startswith("saga-")]
    if not stored:
        return None
    saga = Saga.replay(
        saga_id,
        (app.mapper.to_event(e.type, e.event_version, e.data, e.recorded_at) for e in stored),
    )
    assert saga.status is not None
    with read_connection(app.engine) as conn:
        job = job_view(job_row(conn, saga_id))
    updated_at = stored[-1].recorded_at
    definition = saga.spec
    shipment = saga.result(ev.ShipmentInitiated)
    waiting = saga.waiting
    return {
        "saga_id": saga.id,
        "order_id": getattr(saga.started, "order_id", None),
        "status": saga.status.value,
        "reason": saga.failure_reason,
        "failed_step": saga.failed_step,
        "parked_error": saga.parked_error,
        "definition": definition.name,
        "definition_version": definition.version,
        "started_at": saga.started_at.isoformat() if saga.started_at else None,
        "deadline_at": saga.deadline_at.isoformat() if saga.deadline_at else None,
        "finished_at": saga.finished_at.isoformat() if saga.finished_at else None,
        "updated_at": updated_at.isoformat(),
        "steps": [
            {
                "name": step.name,
                "kind": definition.kind_of(step.name),
                "status": saga.steps[step.name].status.value,
                "attempts": saga.steps[step.name].attempts,
                "compensation_attempts": saga.steps[step.name].compensation_attempts,
                "errors": list(saga.steps[step.name].errors),
            }
            for step in definition.steps
            if step is not definition.pivot
        ],
        "waiting": {
            "wait": waiting.name,
            "signals": [s.name for s in waiting.signals],
            "since": _iso(saga.steps[waiting.name].started_at),
            "timeout_at": _iso(saga.steps[waiting.name].due_at),
        }
        if waiting is not None
        else None,
        "pending_compensations": [
            {"name": c, "undoes": definition.undone_by(c).name}
            for c in reversed(saga.compensation_stack)
        ]
        if saga.status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATION_FAILED)
        else [],
        "tracking_number": shipment.tracking_number if shipment is not None else None,
        "stuck": is_stuck(app, saga_id),
        "job": job,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def sagas_by_status(conn: Connection) -> dict[str, int]:
    """Projected sagas by status, on `conn` (in its snapshot); statuses without sagas are
    left out."""
    s = t.order_summaries
    return {
        str(status): int(n)
        for status, n in conn.execute(
            select(s.c.saga_status, func.count()).group_by(s.c.saga_status)
        )
    }

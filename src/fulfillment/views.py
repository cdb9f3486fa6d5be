"""The query side: what the HTTP API and the operator CLI read (CQRS).

Reads go to the projections (``order_summaries``, kept by ``adapters.projections``), to
the event log, and to the state-stored tables (inventory, jobs). Nothing here writes.
A projection lags the log by a poll interval at most; ``get_order`` falls back to the
event streams when an order is not projected yet, so a client never gets a 404 for an
order it has just created.

Listings are newest first, ordered by the commit position of each order's
``OrderCreated`` event, and paginated with an opaque cursor: a page never repeats or
skips an order of the pages before it, even while new orders arrive.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import RowMapping, Select, and_, desc, or_, select
from sqlalchemy.sql.elements import ColumnElement

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import read_connection
from fulfillment.adapters.event_store import SqlAlchemyEventStore
from fulfillment.adapters.job_queue import DEAD
from fulfillment.adapters.mapper import StoredEvent, to_utc
from fulfillment.adapters.projections import Projector, row_from_db, summarize
from fulfillment.adapters.services import SqlAlchemyInventoryService
from fulfillment.bootstrap import App
from fulfillment.domain import events as ev
from fulfillment.domain.order import Order
from fulfillment.domain.saga import Saga
from fulfillment.domain.status import OrderStatus, SagaStatus

MAX_LIMIT = 1000
STUCK = "stuck"
_NOT_TERMINAL = (
    SagaStatus.RUNNING.value,
    SagaStatus.COMPENSATING.value,
    SagaStatus.COMPENSATION_FAILED.value,
)
_ORDER_STATUSES = frozenset(s.value for s in OrderStatus)
_SAGA_STATUSES = frozenset(s.value for s in SagaStatus) | {STUCK}


class InvalidQuery(ValueError):
    """A bad filter, limit or cursor: the caller's mistake (HTTP 422), never a 500."""


# --- helpers ------------------------------------------------------------------------------


def _limit(limit: int) -> int:
    if limit < 1:
        raise InvalidQuery("limit must be at least 1")
    return min(limit, MAX_LIMIT)


def _encode_cursor(position: int) -> str:
    raw = json.dumps({"p": position}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode()))
        position = value["p"]
    except (ValueError, TypeError, KeyError, binascii.Error) as exc:
        raise InvalidQuery("invalid cursor") from exc
    if not isinstance(position, int) or isinstance(position, bool) or position < 0:
        raise InvalidQuery("invalid cursor")
    return position


def _page(
    app: App, query: Select[Any], limit: int, cursor: str | None
) -> tuple[list[RowMapping], str | None]:
    """One page of `query` over order_summaries, newest first, and the next cursor."""
    s = t.order_summaries
    limit = _limit(limit)
    if cursor is not None:
        query = query.where(s.c.created_position < _decode_cursor(cursor))
    query = query.order_by(desc(s.c.created_position)).limit(limit + 1)
    with read_connection(app.engine) as conn:
        rows = [row._mapping for row in conn.execute(query)]
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = _encode_cursor(int(rows[-1]["created_position"])) if more else None
    return rows, next_cursor


def _order_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """The `GET /orders/{order_id}` shape of docs/api.md, from a summary row."""
    shipment = row["shipment"]
    return {
        "order_id": row["order_id"],
        "status": row["status"],
        "reason": row["reason"],
        "items": [{"sku": i["sku"], "quantity": int(i["quantity"])} for i in row["items"]],
        "saga": {
            "status": row["saga_status"],
            "steps": [
                {"name": s["name"], "status": s["status"], "attempts": int(s["attempts"])}
                for s in row["steps"]
            ],
        },
        "shipment": (
            {"tracking_number": shipment["tracking_number"], "status": shipment["status"]}
            if shipment
            else None
        ),
    }


def _job_view(job: Mapping[Any, Any] | None) -> dict[str, Any] | None:
    if job is None or job.get("id") is None:
        return None
    run_at = job.get("run_at")
    return {
        "id": int(job["id"]),
        "kind": job["kind"],
        "status": job["status"],
        "failures": int(job["failures"] or 0),
        "claims": int(job["claims"] or 0),
        "run_at": (
            datetime.fromtimestamp(float(run_at), UTC).isoformat() if run_at is not None else None
        ),
        "claimed_by": job.get("claimed_by"),
        "last_error": job.get("last_error"),
    }


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


def _streams(order_id: str) -> list[str]:
    return [Order.stream_id_for(order_id), Saga.stream_id_for(order_id)]


def _read_streams(app: App, order_id: str) -> list[StoredEvent]:
    with read_connection(app.engine) as conn:
        return SqlAlchemyEventStore(conn, app.mapper).read_streams(_streams(order_id))


# --- orders -------------------------------------------------------------------------------


def get_order(app: App, order_id: str) -> dict[str, Any] | None:
    """The order as `GET /orders/{order_id}` shows it; None if there is no such order."""
    s = t.order_summaries
    with read_connection(app.engine) as conn:
        row = conn.execute(select(s).where(s.c.order_id == order_id)).first()
        if row is not None:
            return _order_view(row_from_db(row._mapping))
        # Not projected yet (the projector lags by a poll at most): read the streams.
        stored = SqlAlchemyEventStore(conn, app.mapper).read_streams(_streams(order_id))
    summary = summarize(order_id, stored, app.mapper)
    return _order_view(summary) if summary is not None else None


def list_orders(
    app: App, status: str | None, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """Orders newest first, each as `get_order`, optionally of one status; and the next cursor.

    Raises InvalidQuery for an unknown status, a limit below 1 or a malformed cursor;
    limits above MAX_LIMIT are capped.
    """
    s = t.order_summaries
    query = select(s)
    if status is not None:
        if status not in _ORDER_STATUSES:
            raise InvalidQuery(f"unknown order status {status!r}")
        query = query.where(s.c.status == status)
    rows, next_cursor = _page(app, query, limit, cursor)
    return [_order_view(row_from_db(r)) for r in rows], next_cursor


def order_events(app: App, order_id: str) -> list[dict[str, Any]] | None:
    """The order's and its saga's events in commit order; None if the order is unknown."""
    stored = _read_streams(app, order_id)
    if not any(e.stream_id == Order.stream_id_for(order_id) for e in stored):
        return None
    return [e.as_dict() for e in stored]


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
    rows, next_cursor = _page(app, query, limit, cursor)
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
                "job": _job_view(job),
                "updated_at": updated_at.isoformat(),
            }
        )
    return sagas, next_cursor


def saga_detail(app: App, saga_id: str) -> dict[str, Any] | None:
    """Everything an operator needs about one saga, read fresh from its stream.

    Steps carry their errors and compensation attempts; `pending_compensations` is what
    is still to undo, top of the stack first; `job` is its queued job, if any.
    """
    stored = [e for e in _read_streams(app, saga_id) if e.stream_id.startswith("saga-")]
    if not stored:
        return None
    saga = Saga.replay(
        saga_id,
        (app.mapper.to_event(e.type, e.event_version, e.data, e.recorded_at) for e in stored),
    )
    assert saga.status is not None
    with read_connection(app.engine) as conn:
        job_row = conn.execute(select(t.jobs).where(t.jobs.c.saga_id == saga_id)).first()
    job = _job_view(job_row._mapping) if job_row is not None else None
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


# --- events -------------------------------------------------------------------------------


def events_after(app: App, after: int, limit: int) -> list[dict[str, Any]]:
    """The global feed: events with a position greater than `after`, in commit order."""
    with read_connection(app.engine) as conn:
        stored = SqlAlchemyEventStore(conn, app.mapper).read_all(max(0, after), _limit(limit))
    return [e.as_dict() for e in stored]


def latest_events(app: App, limit: int) -> list[dict[str, Any]]:
    """The last `limit` events of the log, oldest of them first (what `tail` shows)."""
    e = t.events
    with read_connection(app.engine) as conn:
        start = conn.execute(
            select(e.c.position).order_by(desc(e.c.position)).offset(_limit(limit)).limit(1)
        ).scalar_one_or_none()
    return events_after(app, int(start or 0), limit)


# --- projections and inventory ------------------------------------------------------------


def projection_status(app: App) -> dict[str, dict[str, int]]:
    """Per projection: `checkpoint`, `head`, `lag` (head minus checkpoint), `behind` (events)."""
    projector = Projector(app.engine, app.mapper)
    return {projector.name: projector.lag().as_dict()}


def get_inventory(app: App, sku: str) -> dict[str, Any] | None:
    """`{"sku", "on_hand", "reserved", "available"}`, or None for an unknown SKU."""
    with read_connection(app.engine) as conn:
        level = SqlAlchemyInventoryService(conn).get(sku)
    if level is None:
        return None
    return {
        "sku": level.sku,
        "on_hand": level.on_hand,
        "reserved": level.reserved,
        "available": level.available,
    }

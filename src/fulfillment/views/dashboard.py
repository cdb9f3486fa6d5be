"""What the dashboard's overview and orders list display (``entrypoints/dashboard.py``
serves them).

* `overview`: counts by outcome, throughput per minute, the queue (its depth: the jobs
  still to run, `ready`, `scheduled` and `running`; the `dead` ones apart), stuck sagas
  and projection lag.
* `dashboard_orders`: a page of `list_orders`, with the times the list shows.
* `verification_queue`: the pharmacist's queue, the orders `awaiting_verification`,
  the longest waiting first.

One saga's timeline (the dashboard's order page and `fulfillment sagas show`) is in
`views.timeline`. Times are ISO 8601 UTC; durations are milliseconds.
"""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise
from typing import Any

from sqlalchemy import and_, case, func, select

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import read_connection
from fulfillment.adapters.mapper import to_utc
from fulfillment.bootstrap import App
from fulfillment.domain import events as ev
from fulfillment.domain.saga import Saga
from fulfillment.domain.status import OrderStatus, SagaStatus
from fulfillment.views.common import duration_ms, iso
from fulfillment.views.health import projection_status
from fulfillment.views.jobs import count_jobs
from fulfillment.views.orders import list_orders, orders_by_status
from fulfillment.views.sagas import STUCK, list_sagas, sagas_by_status

OVERVIEW_MINUTES = 30
STUCK_SHOWN = 20
QUEUE_SHOWN = 50
#: The throughput chart's series: the statuses a finished order has, each counted in
#: one series. A fulfilled order's parcel may since have been delivered or returned: it
#: was fulfilled all the same (its saga completed).
SERIES_OF_STATUS = {
    OrderStatus.FULFILLED.value: "fulfilled",
    OrderStatus.DELIVERED.value: "fulfilled",
    OrderStatus.RETURNED.value: "fulfilled",
    OrderStatus.CANCELLED.value: "cancelled",
    OrderStatus.NEEDS_ATTENTION.value: "needs_attention",
}
#: The wait a verification is (`order_saga.Step.VERIFY_PRESCRIPTION`).
VERIFY_WAIT = "verify_prescription"


# --- the overview ---------------------------------------------------------------------------


def overview(app: App, minutes: int = OVERVIEW_MINUTES) -> dict[str, Any]:
    """Outcome counts, throughput per minute, queue depth, stuck sagas, projection lag."""
    s = t.order_summaries
    now = app.clock.now()
    # Whole minutes, so a bucket's count only grows while it is the newest one.
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    edges = [end - timedelta(minutes=minutes - i) for i in range(minutes + 1)]

    def per_minute(column: Any) -> list[Any]:
        return [
            func.sum(case((and_(column >= lo, column < hi), 1), else_=0))
            for lo, hi in pairwise(edges)
        ]

    with read_connection(app.engine) as conn:
        orders = orders_by_status(conn)
        sagas = sagas_by_status(conn)
        finished_rows = conn.execute(
            select(s.c.status, *per_minute(s.c.finished_at))
            .where(s.c.finished_at >= edges[0])
            .group_by(s.c.status)
        ).all()
        placed_row = conn.execute(
            select(*per_minute(s.c.placed_at)).where(s.c.placed_at >= edges[0])
        ).one()
        depth = count_jobs(conn)
    series: dict[str, list[int]] = {
        st: [0] * minutes for st in dict.fromkeys(SERIES_OF_STATUS.values())
    }
    for st, *ns in finished_rows:
        counts = series.get(SERIES_OF_STATUS.get(str(st), ""))
        if counts is not None:
            for i, n in enumerate(ns):
                counts[i] += int(n or 0)
    placed = [int(n or 0) for n in placed_row]
    buckets = [
        {"minute": iso(lo), "placed": placed[i], **{st: n[i] for st, n in series.items()}}
        for i, lo in enumerate(edges[:-1])
    ]
    finished_last5 = sum(sum(n[-5:]) for n in series.values())
    queue = {status: depth.get(status, 0) for status in ("ready", "scheduled", "running", "dead")}
    stuck, more = list_sagas(app, STUCK, STUCK_SHOWN, None)
    return {
        "now": iso(now),
        "orders": {
            "total": sum(orders.values()),
            **{st.value: orders.get(st.value, 0) for st in OrderStatus},
        },
        "sagas": {st.value: sagas.get(st.value, 0) for st in SagaStatus},
        "throughput": {
            "minutes": minutes,
            "finished_per_minute_5m": round(finished_last5 / 5, 2),
            "placed_per_minute_5m": round(sum(placed[-5:]) / 5, 2),
            "buckets": buckets,
        },
        # Depth: the jobs still to run. A dead one waits for an operator, not a worker.
        "queue": {**queue, "depth": sum(n for st, n in queue.items() if st != "dead")},
        "stuck": {
            "count": len(stuck),
            "more": more is not None,
            "sagas": [
                {
                    "saga_id": x["saga_id"],
                    "status": x["status"],
                    "reason": x["reason"],
                    "steps": x["steps"],
                    "job": x["job"],
                    "updated_at": x["updated_at"],
                }
                for x in stuck
            ],
        },
        "projections": projection_status(app),
    }


# --- the orders list ------------------------------------------------------------------------


def dashboard_orders(
    app: App, status: str | None, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """`list_orders`, each order with `customer_id`, `placed_at`, `updated_at`,
    `finished_at` and `duration_ms`. Raises `InvalidQuery` as it does."""
    items, next_cursor = list_orders(app, status, limit, cursor)
    if not items:
        return items, next_cursor
    s = t.order_summaries
    with read_connection(app.engine) as conn:
        rows = {
            r.order_id: r
            for r in conn.execute(
                select(
                    s.c.order_id, s.c.customer_id, s.c.placed_at, s.c.updated_at, s.c.finished_at
                ).where(s.c.order_id.in_([o["order_id"] for o in items]))
            )
        }
    enriched = []
    for order in items:
        row = rows.get(order["order_id"])
        placed = to_utc(row.placed_at) if row is not None else None
        done = to_utc(row.finished_at) if row is not None and row.finished_at else None
        enriched.append(
            {
                **order,
                "customer_id": row.customer_id if row is not None else None,
                "placed_at": iso(placed),
                "updated_at": iso(row.updated_at) if row is not None else None,
                "finished_at": iso(done),
                "duration_ms": duration_ms(placed, done),
            }
        )
    return enriched, next_cursor


# --- the pharmacist's queue -----------------------------------------------------------------


def verification_queue(app: App, limit: int = QUEUE_SHOWN) -> dict[str, Any]:
    """The orders `awaiting_verification`, the longest waiting first (at most `limit`):
    each with its items, `customer_id`, `placed_at`, `verification` (`pending` or
    `clarification_requested`, `by`), since when it waits (`waiting_since`,
    `waiting_ms`) and when the wait times out and cancels the order (`timeout_at`; None
    for a wait without timeout). `count` is all of them; `more`: some are left out."""
    s = t.order_summaries
    e = t.events
    waiting = s.c.status == OrderStatus.AWAITING_VERIFICATION.value
    with read_connection(app.engine) as conn:
        rows = conn.execute(
            select(
                s.c.order_id,
                s.c.customer_id,
                s.c["items"],
                s.c.verification,
                s.c.placed_at,
                s.c.updated_at,
            )
            .where(waiting)
            .order_by(s.c.created_position)
            .limit(limit + 1)
        ).all()
        count = int(conn.execute(select(func.count()).where(waiting)).scalar_one())
        shown = rows[:limit]
        # The wait's start (and its timeout) is on the saga's stream, not in the summary.
        started = (
            conn.execute(
                select(e.c.stream_id, e.c.event_version, e.c.data, e.c.recorded_at)
                .where(
                    e.c.stream_id.in_([Saga.stream_id_for(r.order_id) for r in shown]),
                    e.c.type == ev.SagaWaitStarted.__name__,
                )
                .order_by(e.c.position)
            ).all()
            if shown
            else []
        )
    waits: dict[str, ev.SagaWaitStarted] = {}
    for stream_id, version, data, recorded_at in started:
        event = app.mapper.to_event(ev.SagaWaitStarted.__name__, version, data, to_utc(recorded_at))
        if isinstance(event, ev.SagaWaitStarted) and event.wait == VERIFY_WAIT:
            waits[stream_id] = event
    now = app.clock.now()
    items = []
    for row in shown:
        wait = waits.get(Saga.stream_id_for(row.order_id))
        since = to_utc(wait.occurred_at) if wait is not None else None
        verification = row.verification or {"status": "pending", "by": None}
        items.append(
            {
                "order_id": row.order_id,
                "customer_id": row.customer_id,
                "items": [
                    {"sku": i["sku"], "quantity": int(i["quantity"])} for i in row._mapping["items"]
                ],
                "placed_at": iso(row.placed_at),
                "updated_at": iso(row.updated_at),
                "verification": {"status": verification["status"], "by": verification["by"]},
                "waiting_since": iso(since),
                "waiting_ms": duration_ms(since, now) if since is not None else None,
                "timeout_at": iso(wait.timeout_at) if wait is not None else None,
            }
        )
    return {"count": count, "more": len(rows) > limit, "items": items}

"""Orders: one (`GET /orders/{order_id}`), a page of them, their events, their count.

Reads the ``order_summaries`` projection; `get_order` falls back to the event streams
when an order is not projected yet, so a client never gets a 404 for an order it has
just created.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, func, select

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import read_connection
from fulfillment.adapters.event_store import SqlAlchemyEventStore
from fulfillment.adapters.projections import (
    ORDER_SUMMARIES,
    replay_order,
    row_from_db,
    summarize,
    summary_of,
)
from fulfillment.bootstrap import App
from fulfillment.domain.events import OrderCreated
from fulfillment.domain.order import Order
from fulfillment.domain.status import OrderStatus
from fulfillment.views.common import InvalidQuery, iso, page, read_streams, streams
from fulfillment.views.fhir import fhir_bundle

_ORDER_STATUSES = frozenset(s.value for s in OrderStatus)


def order_view(row: Mapping[str, Any]) -> dict[str, Any]:
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
        "verification": row.get("verification") or {"status": "pending", "by": None},
        "lots": row.get("lots") or [],
    }


def get_order(app: App, order_id: str) -> dict[str, Any] | None:
    """The order as `GET /orders/{order_id}` shows it; None if there is no such order."""
    s = t.order_summaries
    with read_connection(app.engine) as conn:
        row = conn.execute(select(s).where(s.c.order_id == order_id)).first()
        if row is not None:
            return order_view(row_from_db(row._mapping))
        # Not projected yet (the projector lags by a poll at most): read the streams.
        stored = SqlAlchemyEventStore(conn, app.mapper).read_streams(streams(order_id))
    summary = summarize(order_id, stored, app.mapper)
    return order_view(summary) if summary is not None else None


def current_order(app: App, order_id: str) -> dict[str, Any] | None:
    """The order as `get_order` shows it, from its streams as they are now (what a
    request that just changed it answers, without waiting for the projector)."""
    summary = summarize(order_id, read_streams(app, order_id), app.mapper)
    return order_view(summary) if summary is not None else None


def order_fhir(app: App, order_id: str) -> dict[str, Any] | None:
    """The order as a FHIR R5 Bundle (`GET /orders/{id}/fhir`); None if unknown."""
    replayed = replay_order(order_id, read_streams(app, order_id, open_phi=True), app.mapper)
    if replayed is None:
        return None
    order = replayed[0]
    assert order.prescription is not None
    placed = {
        "customer_id": order.customer_id,
        "placed_at": iso(order.placed_at),
        "prescription": order.prescription.to_dict(),
    }
    return fhir_bundle(order_view(summary_of(*replayed)), placed)


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
    rows, next_cursor = page(app, query, limit, cursor)
    return [order_view(row_from_db(r)) for r in rows], next_cursor


def order_events(app: App, order_id: str) -> list[dict[str, Any]] | None:
    """The order's and its saga's events in commit order, patient data opened (a role
    that may read it asks); None if the order is unknown."""
    stored = read_streams(app, order_id, open_phi=True)
    if not any(e.stream_id == Order.stream_id_for(order_id) for e in stored):
        return None
    return [e.as_dict() for e in stored]


def orders_by_status(conn: Connection) -> dict[str, int]:
    """Projected orders by status, on `conn` (in its snapshot); statuses without orders
    are left out."""
    s = t.order_summaries
    return {
        str(status): int(n)
        for status, n in conn.execute(select(s.c.status, func.count()).group_by(s.c.status))
    }


#: Events read per query when looking for orders the projection has not reached yet.
_TAIL_BATCH = 1000


def orders_of_customer(app: App, customer_id: str) -> list[str]:
    """The customer's orders: the projected ones, and those placed since the projection's
    checkpoint (read from the log, so an order placed a moment ago is not missed)."""
    s, cp = t.order_summaries, t.projection_checkpoints
    with read_connection(app.engine) as conn:
        found = list(
            conn.execute(
                select(s.c.order_id)
                .where(s.c.customer_id == customer_id)
                .order_by(s.c.created_position)
            ).scalars()
        )
        after = conn.execute(
            select(cp.c.position).where(cp.c.name == ORDER_SUMMARIES)
        ).scalar_one_or_none()
        store = SqlAlchemyEventStore(conn, app.mapper)
        position = int(after or 0)
        while True:
            batch = store.read_all(position, _TAIL_BATCH)
            for e in batch:
                if e.type == OrderCreated.__name__ and e.data.get("customer_id") == customer_id:
                    found.append(str(e.data["order_id"]))
            if len(batch) < _TAIL_BATCH:
                break
            position = batch[-1].position
    return list(dict.fromkeys(found))

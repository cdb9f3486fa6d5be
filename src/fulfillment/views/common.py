"""What the views share: limits and opaque cursors of the listings, the two streams of
an order, and times as they are shown (ISO 8601 UTC; durations in milliseconds).

Listings are newest first, ordered by the commit position of each order's
``OrderCreated`` event, and paginated with an opaque, signed cursor (``cursors``): a page
never repeats or skips an order of the pages before it, even while new orders arrive.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import RowMapping, Select, desc

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import read_connection
from fulfillment.adapters.event_store import SqlAlchemyEventStore
from fulfillment.adapters.mapper import StoredEvent, to_utc
from fulfillment.bootstrap import App
from fulfillment.domain.order import Order
from fulfillment.domain.saga import Saga
from fulfillment.views.cursors import InvalidCursor, cursor_keys, decode_cursor, encode_cursor

MAX_LIMIT = 1000


class InvalidQuery(ValueError):
    """A bad filter, limit or cursor: the caller's mistake (HTTP 422), never a 500."""


def checked_limit(limit: int) -> int:
    """`limit`, capped at MAX_LIMIT; InvalidQuery below 1."""
    if limit < 1:
        raise InvalidQuery("limit must be at least 1")
    return min(limit, MAX_LIMIT)


def page(
    app: App, query: Select[Any], limit: int, cursor: str | None
) -> tuple[list[RowMapping], str | None]:
    """One page of `query` over order_summaries, newest first, and the next cursor
    (signed: views/cursors.py)."""
    s = t.order_summaries
    limit = checked_limit(limit)
    patient_data = app.mapper.patient_data
    keys = cursor_keys(patient_data.masters if patient_data is not None else None)
    if cursor is not None:
        try:
            position = decode_cursor(cursor, keys)
        except InvalidCursor as exc:
            raise InvalidQuery(str(exc)) from exc
        query = query.where(s.c.created_position < position)
    query = query.order_by(desc(s.c.created_position)).limit(limit + 1)
    with read_connection(app.engine) as conn:
        rows = [row._mapping for row in conn.execute(query)]
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(int(rows[-1]["created_position"]), keys) if more else None
    return rows, next_cursor


def streams(order_id: str) -> list[str]:
    """The order's stream and its saga's."""
    return [Order.stream_id_for(order_id), Saga.stream_id_for(order_id)]


def read_streams(app: App, order_id: str, *, open_phi: bool = False) -> list[StoredEvent]:
    """The events of the order's and its saga's streams, in commit order. `open_phi`:
    with their patient data opened (for a role that may read it), else still sealed."""
    with read_connection(app.engine) as conn:
        stored = SqlAlchemyEventStore(conn, app.mapper).read_streams(streams(order_id))
        return [app.mapper.open(conn, e) for e in stored] if open_phi else stored


def iso(at: datetime | None) -> str | None:
    """`at` in UTC, ISO 8601; None stays None."""
    return to_utc(at).isoformat() if at is not None else None


def duration_ms(start: datetime | None, end: datetime | None) -> float | None:
    """Milliseconds from `start` to `end`; None unless both are known."""
    if start is None or end is None:
        return None
    return round((to_utc(end) - to_utc(start)).total_seconds() * 1000, 3)

"""What the views share: limits and opaque cursors of the listings, the two streams of
an order, and times as they are shown (ISO 8601 UTC; durations in milliseconds).

Listings are newest first, ordered by the commit position of each order's
``OrderCreated`` event, and paginated with an opaque cursor: a page never repeats or
skips an order of the pages before it, even while new orders arrive.
"""

from __future__ import annotations

import base64
import binascii
import json
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

MAX_LIMIT = 1000


class InvalidQuery(ValueError):
    """A bad filter, limit or cursor: the caller's mistake (HTTP 422), never a 500."""


def checked_limit(limit: int) -> int:
    """`limit`, capped at MAX_LIMIT; InvalidQuery below 1."""
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


def page(
    app: App, query: Select[Any], limit: int, cursor: str | None
) -> tuple[list[RowMapping], str | None]:
    """One page of `query` over order_summaries, newest first, and the next cursor."""
    s = t.order_summaries
    limit = checked_limit(limit)
    if cursor is not None:
        query = query.where(s.c.created_position < _decode_cursor(cursor))
    query = query.order_by(desc(s.c.created_position)).limit(limit + 1)
    with read_connection(app.engine) as conn:
        rows = [row._mapping for row in conn.execute(query)]
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = _encode_cursor(int(rows[-1]["created_position"])) if more else None
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

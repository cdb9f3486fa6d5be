"""The event log: the global feed after a position, and its last events (`tail`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import desc, select

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import read_connection
from fulfillment.adapters.event_store import SqlAlchemyEventStore
from fulfillment.bootstrap import App
from fulfillment.views.common import checked_limit


def events_after(app: App, after: int, limit: int) -> list[dict[str, Any]]:
    """The global feed: events with a position greater than `after`, in commit order,
    patient data opened (only roles that may read it are served the feed)."""
    with read_connection(app.engine) as conn:
        stored = SqlAlchemyEventStore(conn, app.mapper).read_all(
            max(0, after), checked_limit(limit)
        )
        return [app.mapper.open(conn, e).as_dict() for e in stored]


def latest_events(app: App, limit: int) -> list[dict[str, Any]]:
    """The last `limit` events of the log, oldest of them first (what `tail` shows)."""
    e = t.events
    with read_connection(app.engine) as conn:
        start = conn.execute(
            select(e.c.position).order_by(desc(e.c.position)).offset(checked_limit(limit)).limit(1)
        ).scalar_one_or_none()
    return events_after(app, int(start or 0), limit)

"""The event store: one append-only table, optimistic concurrency per stream, a global order."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, insert, select
from sqlalchemy.exc import IntegrityError

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import lock_event_append
from fulfillment.adapters.mapper import EventMapper, StoredEvent, to_utc
from fulfillment.domain.events import DomainEvent
from fulfillment.service_layer.messagebus import ConcurrencyError
from fulfillment.service_layer.unit_of_work import StreamAppend

_COLUMNS = (
    t.events.c.position,
    t.events.c.stream_id,
    t.events.c.version,
    t.events.c.type,
    t.events.c.event_version,
    t.events.c.data,
    t.events.c.metadata,
    t.events.c.recorded_at,
)


def _stored(row: Sequence[object]) -> StoredEvent:
    position, stream_id, version, type_, event_version, data, metadata, recorded_at = row
    return StoredEvent(
        position=int(position),  # type: ignore[call-overload]
        stream_id=str(stream_id),
        version=int(version),  # type: ignore[call-overload]
        type=str(type_),
        event_version=int(event_version),  # type: ignore[call-overload]
        data=data,  # type: ignore[arg-type]
        metadata=metadata,  # type: ignore[arg-type]
        recorded_at=to_utc(recorded_at),  # type: ignore[arg-type]
    )


class SqlAlchemyEventStore:
    """Works inside the caller's transaction (the unit of work's connection)."""

    def __init__(self, conn: Connection, mapper: EventMapper) -> None:
        self.conn = conn
        self.mapper = mapper

    def append(self, appends: Sequence[StreamAppend], causation_id: str | None = None) -> None:
        """Append to several streams at once; ConcurrencyError if any expected version is stale."""
        rows = []
        for append in appends:
            for offset, event in enumerate(append.events, start=1):
                rows.append(
                    {
                        "stream_id": append.stream_id,
                        "version": append.expected_version + offset,
                        "type": type(event).__name__,
                        "event_version": type(event).event_version,
                        "data": self.mapper.to_data(event),
                        "metadata": {
                            "correlation_id": append.correlation_id,
                            "causation_id": causation_id,
                        },
                        "recorded_at": to_utc(event.occurred_at),
                    }
                )
        if not rows:
            return
        # Taken last, right before the insert, so the lock is held only until commit.
        lock_event_append(self.conn)
        try:
            self.conn.execute(insert(t.events), rows)
        except IntegrityError as exc:
            raise ConcurrencyError(str(exc.orig)) from exc

    def load(self, stream_id: str) -> list[DomainEvent]:
        return [
            self.mapper.to_event(e.type, e.event_version, e.data, e.recorded_at)
            for e in self.read_stream(stream_id)
        ]

    def read_stream(self, stream_id: str) -> list[StoredEvent]:
        rows = self.conn.execute(
            select(*_COLUMNS).where(t.events.c.stream_id == stream_id).order_by(t.events.c.version)
        )
        return [_stored(r) for r in rows]

    def read_streams(self, stream_ids: Sequence[str]) -> list[StoredEvent]:
        """Events of several streams, in commit (position) order."""
        rows = self.conn.execute(
            select(*_COLUMNS)
            .where(t.events.c.stream_id.in_(list(stream_ids)))
            .order_by(t.events.c.position)
        )
        return [_stored(r) for r in rows]

    def read_all(self, after: int = 0, limit: int = 100) -> list[StoredEvent]:
        """Every event with a position greater than `after`, in position (= commit) order."""
        rows = self.conn.execute(
            select(*_COLUMNS)
            .where(t.events.c.position > after)
            .order_by(t.events.c.position)
            .limit(limit)
        )
        return [_stored(r) for r in rows]

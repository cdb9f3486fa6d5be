"""The event store: one append-only table, optimistic concurrency per stream, a global order."""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Text,
    bindparam,
    cast,
    func,
    insert,
    select,
    true,
    type_coerce,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import BindParameter

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import backend_of
from fulfillment.adapters.mapper import EventMapper, EventText, StoredEvent, to_utc
from fulfillment.adapters.prepared import Prepared, execute_columns, execute_many, fetch_all
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


# Built once: hot statements skip SQLAlchemy's construction and cache-key work per call.
_READ_STREAM = (
    select(*_COLUMNS)
    .where(t.events.c.stream_id == bindparam("stream_id"))
    .order_by(t.events.c.version)
)


def visible(backend: str) -> ColumnElement[bool]:
    """The events a follower of the global feed may read now (docs/architecture.md, rule 3).

    PostgreSQL: positions come from the writing transaction's id (migration 0013), and a
    transaction may commit after one with a larger id; only the positions below the
    statement snapshot's xmin are final (no transaction still running can insert one
    there), so a follower reads only those. SQLite and MariaDB hand positions out in
    commit order: everything committed is final.
    """
    if backend == "postgresql":
        return t.events.c.position < func.fulfillment_visible_position()
    return true()


def _read_all(backend: str, as_text: bool = False) -> Select[Any]:
    """The feed's page after `after`; `as_text`: the payloads as their stored JSON text
    (PostgreSQL's driver would parse a json column, so it is cast to text there; the
    others return the text as it is, so only SQLAlchemy's parsing is turned off)."""

    def text_of(column: Any) -> Any:
        return cast(column, Text) if backend == "postgresql" else type_coerce(column, Text)

    columns = [text_of(c) if as_text and c.name in ("data", "metadata") else c for c in _COLUMNS]
    return (
        select(*columns)
        .where(t.events.c.position > bindparam("after"), visible(backend))
        .order_by(t.events.c.position)
        .limit(bindparam("limit"))
    )


_BACKENDS = ("sqlite", "postgresql", "mysql")
_READ_ALL = {backend: _read_all(backend) for backend in _BACKENDS}
_READ_ALL_TEXT = {backend: _read_all(backend, as_text=True) for backend in _BACKENDS}
_READ_TAIL = (
    select(*_COLUMNS)
    .where(t.events.c.stream_id == bindparam("stream_id"), t.events.c.version > bindparam("v"))
    .order_by(t.events.c.version)
)


@functools.cache
def _read_streams(count: int) -> Prepared:
    """The events of `count` streams (bound as s0, s1, ...), in position order."""
    wanted: list[BindParameter[str]] = [bindparam(f"s{n}") for n in range(count)]
    return Prepared(
        select(*_COLUMNS).where(t.events.c.stream_id.in_(wanted)).order_by(t.events.c.position)
    )


_EVENT_FIELDS = ("stream_id", "version", "type", "event_version", "data", "metadata", "recorded_at")
#: The step path's statements, run on the raw cursor (adapters/prepared.py).
INSERT_EVENTS = Prepared(insert(t.events), column_keys=_EVENT_FIELDS)
_TAIL = Prepared(_READ_TAIL)


# On PostgreSQL one statement inserts all rows, from arrays. psycopg's executemany sends
# its rows in pipeline mode, and a process paused between two of those messages leaves
# its session waiting for the rest: not "idle in transaction" in the server's sense, so
# `idle_in_transaction_session_timeout` never ends it, and the append lock its first
# row took stayed held for as long as the pause (seen: an API process frozen there
# stopped every writer). One statement goes out in one message with its Sync.
_PG_INSERT_EVENTS = (
    "INSERT INTO events (stream_id, version, type, event_version, data, metadata, recorded_at)"
    " SELECT stream_id, version, type, event_version, data, metadata, recorded_at FROM unnest("
    "%(stream_id)s::varchar[], %(version)s::integer[], %(type)s::varchar[],"
    " %(event_version)s::smallint[], %(data)s::json[], %(metadata)s::json[],"
    " %(recorded_at)s::timestamptz[]) WITH ORDINALITY"
    " AS e(stream_id, version, type, event_version, data, metadata, recorded_at, n)"
    " ORDER BY n"
)


def insert_events(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Insert `events` rows built by `SqlAlchemyEventStore.rows`, in their order, with one
    statement (PostgreSQL) or one executemany (a multi-row INSERT on MariaDB)."""
    if conn.dialect.name == "postgresql":
        execute_columns(conn, _PG_INSERT_EVENTS, INSERT_EVENTS, rows)
    else:
        execute_many(conn, INSERT_EVENTS, rows)


class StreamCache:
    """Decoded events of recently used streams, shared by the threads of one process.

    Readers outside the worker never trust it blindly: their load still reads the
    stream's tail after the cached version (usually no rows), so a stream changed by
    another process is always seen; the cache only saves decoding. A job's unit of work
    trusts it (`trust_cache`): the job's lease makes this thread the saga's only writer,
    the worker refreshes the cache when it claims (`prefetch`), and should another
    writer have appended anyway, the append's expected version fails the commit, the
    unit of work drops the stream from the cache and the command runs again on fresh
    events (docs/architecture.md, rule 2). Bounded (LRU), so memory stays flat.
    """

    def __init__(self, max_streams: int = 10_000) -> None:
        self.max_streams = max_streams
        self._streams: OrderedDict[str, tuple[DomainEvent, ...]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, stream_id: str) -> tuple[DomainEvent, ...]:
        with self._lock:
            events = self._streams.get(stream_id)
            if events is not None:
                self._streams.move_to_end(stream_id)
            return events or ()

    def put(self, stream_id: str, events: tuple[DomainEvent, ...]) -> None:
        with self._lock:
            current = self._streams.get(stream_id, ())
            if len(events) < len(current):
                return  # never go back to an older version of the stream
            self._streams[stream_id] = events
            self._streams.move_to_end(stream_id)
            while len(self._streams) > self.max_streams:
                self._streams.popitem(last=False)

    def discard(self, stream_id: str) -> None:
        with self._lock:
            self._streams.pop(stream_id, None)


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

    def __init__(
        self,
        conn: Connection,
        mapper: EventMapper,
        cache: StreamCache | None = None,
        *,
        trust_cache: bool = False,
    ) -> None:
        self.conn = conn
        self.mapper = mapper
        self.cache = cache
        self.trust_cache = trust_cache and cache is not None
        #: Streams as loaded in this transaction, to refresh the cache after commit.
        self.loaded: dict[str, tuple[DomainEvent, ...]] = {}
        #: Loaded from the cache alone, unchecked against the table (see `verify`).
        self.trusted: set[str] = set()

    def append(
        self,
        appends: Sequence[StreamAppend],
        causation_id: str | None = None,
        job_started_at: datetime | None = None,
    ) -> None:
        """Append to several streams at once; ConcurrencyError if any expected version is stale."""
        rows = self.rows(appends, causation_id, job_started_at)
        if not rows:
            return
        # The insert takes the append lock itself (a trigger, see adapters/db.py), as the
        # last statement before commit, so the lock is held as briefly as possible.
        try:
            insert_events(self.conn, rows)
        except IntegrityError as exc:
            raise ConcurrencyError(str(exc.orig)) from exc

    def rows(
        self,
        appends: Sequence[StreamAppend],
        causation_id: str | None = None,
        job_started_at: datetime | None = None,
    ) -> list[dict[str, Any]]:
        """The `events` rows of `appends`, for `INSERT_EVENTS` (here or by a group commit).
        `job_started_at`: when the run of the job that records them began (metadata
        `job_started_at`, ISO 8601 UTC)."""
        rows = []
        for append in appends:
            metadata: dict[str, str | None] = {
                "correlation_id": append.correlation_id,
                "causation_id": causation_id,
            }
            if append.sender is not None:
                metadata["sender"] = append.sender
            if job_started_at is not None:
                metadata["job_started_at"] = to_utc(job_started_at).isoformat()
            for offset, event in enumerate(append.events, start=1):
                rows.append(
                    {
                        "stream_id": append.stream_id,
                        "version": append.expected_version + offset,
                        "type": type(event).__name__,
                        "event_version": type(event).event_version,
                        "data": self.mapper.to_row_data(
                            self.conn, event, append.stream_id, append.expected_version + offset
                        ),
                        "metadata": metadata,
                        "recorded_at": to_utc(event.occurred_at),
                    }
                )
        return rows

    def load(self, stream_id: str) -> list[DomainEvent]:
        """The stream's events: cached ones plus whatever was committed after them."""
        known = self.cache.get(stream_id) if self.cache is not None else ()
        if known and self.trust_cache:
            self.loaded[stream_id] = known
            self.trusted.add(stream_id)
            return list(known)
        rows = fetch_all(self.conn, _TAIL, {"stream_id": stream_id, "v": len(known)})
        tail = tuple(self.mapper.decode(self.conn, e) for e in map(_stored, rows))
        events = known + tail
        self.loaded[stream_id] = events
        return list(events)

    def after_commit(self, appends: Sequence[StreamAppend]) -> None:
        """Remember the streams this transaction wrote, as they now stand."""
        if self.cache is None:
            return
        for append in appends:
            before = self.loaded.get(append.stream_id, ())
            if len(before) == append.expected_version:
                self.cache.put(append.stream_id, before + tuple(append.events))

    def read_stream(self, stream_id: str) -> list[StoredEvent]:
        rows = self.conn.execute(_READ_STREAM, {"stream_id": stream_id})
        return [_stored(r) for r in rows]

    def verify(self, appended: set[str]) -> None:
        """Check the streams taken from the cache alone and not appended to (an append
        checks its stream by its expected version): ConcurrencyError if one has grown.

        So a command that decided, on a stale cache, that it had nothing to do cannot
        consume its job: it runs again on fresh events.
        """
        for stream_id in self.trusted - appended:
            known = self.loaded[stream_id]
            if fetch_all(self.conn, _TAIL, {"stream_id": stream_id, "v": len(known)}):
                raise ConcurrencyError(f"stream {stream_id} changed since it was cached")

    def forget(self) -> None:
        """Drop the streams this transaction loaded from the cache (after a conflict)."""
        if self.cache is not None:
            for stream_id in self.loaded:
                self.cache.discard(stream_id)

    def prefetch(self, stream_ids: Sequence[str]) -> None:
        """Load several streams into the cache with one query (the worker, on claiming)."""
        if self.cache is None or not stream_ids:
            return
        streams: dict[str, list[DomainEvent]] = {s: [] for s in stream_ids}
        # The events already cached are not decoded again (nor their patient data opened):
        # a stream's events never change, it only grows.
        known = {s: self.cache.get(s) for s in stream_ids}
        for e in self.read_streams(stream_ids):
            cached = known[e.stream_id]
            streams[e.stream_id].append(
                cached[e.version - 1]
                if e.version <= len(cached)
                else self.mapper.decode(self.conn, e)
            )
        for stream_id, events in streams.items():
            if events:
                self.cache.put(stream_id, tuple(events))

    def read_streams(self, stream_ids: Sequence[str]) -> list[StoredEvent]:
        """Events of several streams, in position order (on the raw cursor: a worker
        runs it for every claim)."""
        ids = list(dict.fromkeys(stream_ids))
        if not ids:
            return []
        # A statement per power of two of streams, the list padded with its last id:
        # a handful of compiled statements serve every claim size.
        size = 1 << (len(ids) - 1).bit_length()
        ids += [ids[-1]] * (size - len(ids))
        rows = fetch_all(self.conn, _read_streams(size), {f"s{n}": s for n, s in enumerate(ids)})
        return [_stored(r) for r in rows]

    def read_all(self, after: int = 0, limit: int = 100) -> list[StoredEvent]:
        """Every event with a position greater than `after` that a follower may read now
        (`visible`), in position order: a later call never returns one below them."""
        rows = self.conn.execute(_READ_ALL[backend_of(self.conn)], {"after": after, "limit": limit})
        return [_stored(r) for r in rows]

    def read_all_text(self, after: int = 0, limit: int = 100) -> list[EventText]:
        """`read_all`, the payloads left as the JSON text stored (the relay's read)."""
        query = _READ_ALL_TEXT[backend_of(self.conn)]
        return [
            EventText(int(p), str(s), int(v), str(ty), int(ev), d, m, to_utc(at))
            for p, s, v, ty, ev, d, m, at in self.conn.execute(
                query, {"after": after, "limit": limit}
            )
        ]

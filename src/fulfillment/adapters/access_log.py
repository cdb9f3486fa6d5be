"""The access audit of patient data: who read which patient's data, where and when.

Every answer that carries patient data (a prescription, an address: the routes of
`api_roles.PHI_READERS` in src/fulfillment/entrypoints/api_roles.py, the dashboard's
timeline for those roles, and the CLI commands that print events) records one row per
order, or customer, it showed in `access_log` (adapters/tables.py): the API key's name
(`cli:<user>` from the CLI), the route template or command, the order id, the customer
id and the time.

Recording must never slow down or fail the answer it records, so `AccessLog.record` only
appends to a bounded queue in memory; a daemon thread writes the queue every
`FLUSH_INTERVAL_SECONDS`, or as soon as `FLUSH_BATCH` rows wait, in multi-row INSERTs of
their own short transactions (never the request's). While the database does not take
them the rows stay queued and the thread tries again, backing off; past `MAX_PENDING`
new rows are dropped and counted, and the count is logged as an error: a lost audit row
must be visible, a stalled API would be worse. `close` writes what is left.

The workers delete rows older than FULFILLMENT_AUDIT_RETENTION_DAYS in batches
(`prune_expired`, as they prune idempotency keys); `list_accesses` is what
`fulfillment audit list` shows.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, desc, insert, select

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import delete_batch, read_connection
from fulfillment.adapters.mapper import to_utc
from fulfillment.domain import events as ev

log = logging.getLogger("fulfillment.audit")

Now = Callable[[], datetime]
#: Seconds between two writes of the queue by the writer thread.
FLUSH_INTERVAL_SECONDS = 0.5
#: Rows per INSERT; this many waiting wake the writer thread before its interval.
FLUSH_BATCH = 500
#: Rows kept in memory while the database does not take them; more are dropped.
MAX_PENDING = 50_000
#: The longest pause between two tries of a database that does not take the rows.
MAX_RETRY_SECONDS = 5.0
#: How long `close` keeps trying to write what is left.
CLOSE_TIMEOUT_SECONDS = 5.0
#: Old rows deleted per statement by `prune_expired`.
PRUNE_BATCH = 1000
#: The events whose data holds an order's patient data, with its order and customer ids.
PHI_EVENT_TYPES = frozenset({ev.OrderCreated.__name__, ev.OrderFulfillmentSagaStarted.__name__})

#: The lengths of the columns `key_name` and `route` (adapters/tables.py).
_KEY_NAME_LENGTH, _ROUTE_LENGTH = 100, 200


def _utcnow() -> datetime:
    return datetime.now(UTC)


def subjects_of(events: Iterable[Mapping[str, Any]]) -> dict[str, str | None]:
    """Order id -> customer id of every order whose patient data is in `events` (event
    views, `StoredEvent.as_dict()`): those with an `OrderCreated` or an
    `OrderFulfillmentSagaStarted`, in the order they first appear."""
    subjects: dict[str, str | None] = {}
    for event in events:
        data = event.get("data")
        if event.get("type") not in PHI_EVENT_TYPES or not isinstance(data, Mapping):
            continue
        order_id = data.get("order_id")
        if order_id is None:
            continue
        customer_id = data.get("customer_id")
        if subjects.get(str(order_id)) is None:
            subjects[str(order_id)] = None if customer_id is None else str(customer_id)
    return subjects


class AccessLog:
    """The batched writer of `access_log` rows (see the module's docstring).

    `record` never blocks on the database and never raises for it; `flush` writes what
    waits now, in the caller's thread (tests, and `close`); `start` runs the writer
    thread, `close` stops it and writes what is left. Without `start` (a CLI command),
    rows wait until `flush` or `close`.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        interval: float = FLUSH_INTERVAL_SECONDS,
        batch: int = FLUSH_BATCH,
        max_pending: int = MAX_PENDING,
        now: Now = _utcnow,
    ) -> None:
        self.engine = engine
        self.interval = interval
        self.batch = max(1, batch)
        self.max_pending = max(1, max_pending)
        self.now = now
        self._pending: deque[dict[str, Any]] = deque()
        self._lock = threading.Lock()  # guards _pending and _dropped
        self._flushing = threading.Lock()  # one writer at a time: rows leave in order
        self._dropped = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Rows recorded and not written yet."""
        return len(self._pending)

    def record(
        self,
        key_name: str,
        route: str,
        *,
        order_id: str | None = None,
        customer_id: str | None = None,
    ) -> None:
        """Queue one row, stamped now; dropped (and counted) when the queue is full."""
        row = {
            "at": self.now(),
            "key_name": key_name[:_KEY_NAME_LENGTH],
            "route": route[:_ROUTE_LENGTH],
            "order_id": order_id,
            "customer_id": customer_id,
        }
        with self._lock:
            if len(self._pending) >= self.max_pending:
                self._dropped += 1
                return
            self._pending.append(row)
            full = len(self._pending) >= self.batch
        if full:
            self._wake.set()

    def record_all(self, key_name: str, route: str, subjects: Mapping[str, str | None]) -> None:
        """One row per order of `subjects` (order id -> customer id, `subjects_of`)."""
        for order_id, customer_id in subjects.items():
            self.record(key_name, route, order_id=order_id, customer_id=customer_id)

    def flush(self) -> int:
        """Write every row queued so far, `batch` rows per INSERT and transaction;
        returns how many. A database error propagates, and the rows not written stay
        queued, in order, for the next flush."""
        written = 0
        with self._flushing:
            while True:
                with self._lock:
                    # Only a flush removes rows, and one runs at a time: these are still
                    # the oldest when it pops them.
                    rows = list(itertools.islice(self._pending, self.batch))
                if not rows:
                    return written
                with self.engine.begin() as conn:
                    conn.execute(insert(t.access_log).values(rows))
                with self._lock:
                    for _ in rows:
                        self._pending.popleft()
                written += len(rows)

    def start(self) -> None:
        """Run the writer thread (a daemon: a stuck database never keeps a process up)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Stop the writer thread and write what is left, trying for up to `timeout`
        seconds; what still cannot be written is logged as an error, never raised (a
        server stopping, a CLI command ending)."""
        deadline = time.monotonic() + timeout
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            self._wake.set()
            thread.join(timeout)
        pause = 0.1
        while True:
            try:
                self.flush()
                break
            except Exception as exc:
                if time.monotonic() + pause > deadline:
                    log.error(
                        "access log: %d records of patient-data access could not be "
                        "written and are lost: %s",
                        self.pending,
                        type(exc).__name__,
                    )
                    break
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
        self._report_dropped()

    def _run(self) -> None:
        delay = self.interval
        while not self._stop.is_set():
            if delay > self.interval:
                self._stop.wait(delay)  # backing off: records do not hurry a failing write
            else:
                self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.flush()
                delay = self.interval
            except Exception as exc:
                delay = min(MAX_RETRY_SECONDS, max(self.interval, delay) * 2)
                log.warning(
                    "access log: the database did not take %d records (%s); retrying in %.1f s",
                    self.pending,
                    type(exc).__name__,
                    delay,
                )
            self._report_dropped()

    def _report_dropped(self) -> None:
        with self._lock:
            dropped, self._dropped = self._dropped, 0
        if dropped:
            log.error(
                "access log: %d records of patient-data access dropped: %d were already "
                "waiting for the database",
                dropped,
                self.max_pending,
            )


def prune_expired(
    engine: Engine,
    retention_days: float,
    *,
    batch: int = PRUNE_BATCH,
    now: Now = _utcnow,
) -> int:
    """Delete at most `batch` rows older than `retention_days` in one short transaction
    (periodic maintenance of the workers); returns how many (`batch`: there may be more)."""
    log_ = t.access_log
    cutoff = now() - timedelta(days=retention_days)
    return delete_batch(engine, log_, log_.c.id, log_.c.at < cutoff, batch)


@dataclass(frozen=True)
class Access:
    """One row of `access_log`."""

    id: int
    at: datetime
    key_name: str
    route: str
    order_id: str | None
    customer_id: str | None


def list_accesses(
    engine: Engine,
    *,
    customer_id: str | None = None,
    key_name: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> list[Access]:
    """The rows of one customer and/or one key, recorded at or after `since`, newest
    first (by time, then by id), at most `limit` (each filter is served by an index of
    the table)."""
    a = t.access_log
    query = select(a).order_by(desc(a.c.at), desc(a.c.id)).limit(max(1, limit))
    if customer_id is not None:
        query = query.where(a.c.customer_id == customer_id)
    if key_name is not None:
        query = query.where(a.c.key_name == key_name)
    if since is not None:
        # In UTC: SQLite and MariaDB keep the time without its offset (adapters/mapper.py).
        query = query.where(a.c.at >= to_utc(since))
    with read_connection(engine) as conn:
        rows = conn.execute(query).all()
    return [
        Access(
            id=int(row.id),
            at=to_utc(row.at),
            key_name=row.key_name,
            route=row.route,
            order_id=row.order_id,
            customer_id=row.customer_id,
        )
        for row in rows
    ]

"""The physical limit: our saga's transactions, issued by plain drivers, with no framework.

Per order it performs the transactions our design performs, on the product's schema. It
mirrors `fulfillment.adapters` (`group_commit`, `unit_of_work`, `event_store`, `job_queue`,
`services`, `db.append_lock_sql`), `App.prefetch_sagas` and `entrypoints/worker.py` as of
the "group commit, trusted stream cache, append lock first" design; when the product's
transactions change, change this script with them.

* place: read the order stream, insert the saga's job row, insert `OrderCreated` +
  `OrderFulfillmentSagaStarted` (the insert trigger takes the append lock on PostgreSQL
  and MariaDB); one commit per order.
* claim: `SELECT ... FOR UPDATE SKIP LOCKED` + `UPDATE jobs ... WHERE id IN (...)` over up
  to `--group` sagas (SQLite: a deferred peek, then `BEGIN IMMEDIATE`); once per saga,
  as the claiming client runs the saga's next jobs itself (the continuation: the job row
  stays claimed). Then one read-only transaction reads all the claimed sagas' streams
  with one query (`... WHERE stream_id IN (...) ORDER BY position`): the cache prefetch.
  From then on the client keeps each saga's started payload and stream version in
  memory, bumping the version after each commit, as the product's `StreamCache`.
* steps, `--group N` (default 64, the product's `FULFILLMENT_GROUP_COMMIT_MAX_STEPS`): the
  batch runs in rounds, each ONE transaction (the group commit) holding the current step
  of every saga of the batch that still has a job. `BEGIN` (SQLite `BEGIN IMMEDIATE`;
  PostgreSQL and MariaDB implicit, then the event-append lock as the first statement);
  per saga `SAVEPOINT step` (never released; no step of this workload fails, so no
  `ROLLBACK TO SAVEPOINT`) and the step's statements: no saga stream read; the service
  tables as `adapters/services.py` (an order's prescription, reservation and shipment
  row by `INSERT ... ON CONFLICT (order_id) DO NOTHING` on PostgreSQL and SQLite, by an
  existence SELECT then INSERT on MariaDB; the reservation row before the conditional
  inventory UPDATE; the settle as `UPDATE ... RETURNING lines`, on MariaDB an UPDATE
  then a SELECT of the lines; the inventory UPDATEs);
  for `complete` and the last compensation a read of the (uncached) order stream; the
  job row turned into the next job (`UPDATE jobs ... WHERE id AND claim_token`), or
  `DELETE`d after the last step. Then ONE executemany inserts every step's events, and
  COMMIT. initiate_shipment's look before the (instant) carrier call reads the memory:
  no SQL. Per round of G sagas: BEGIN (+ lock), G x (SAVEPOINT + step), INSERT, COMMIT.
* `--group 1`, the previous design ("7 commits per order", the group commit's reference):
  every step is its own transaction that reads the saga stream, changes the service
  tables, advances the job row and inserts its events (the trigger takes the lock);
  initiate_shipment first reads the saga stream in a short read-only transaction. Such
  a client claims 8 sagas at a time and runs them one after another.

Steps: create_prescription, reserve_inventory, initiate_shipment, complete; on the
`compensate10` mix a shipment to an unsupported country fails in the look, and the saga
runs record_step_failure (`ShipmentInitiationFailed` + `SagaCompensationStarted`),
release_inventory and cancel_prescription (which cancels the order). A deadlock or lock
error rolls back and reruns the step, or with groups the whole round (the product reruns
every step of a failed group); versions move only after a COMMIT.

Durability is the product's: SQLite in WAL with `synchronous` from
`FULFILLMENT_SQLITE_SYNCHRONOUS` (default FULL), `BEGIN IMMEDIATE` writers and the same
busy timeout; MariaDB at READ COMMITTED (at REPEATABLE READ the `SKIP LOCKED` claims take
gap locks and deadlock); PostgreSQL with the server's defaults (READ COMMITTED,
synchronous_commit on). K client processes share the work; the best of a few K is
reported. Each run ends checking that no job is left and the inventory adds up.

    .venv/bin/python -m benchmarks.plain_sql --backend sqlite --orders 2000 --clients 1,2,4
    .venv/bin/python -m benchmarks.plain_sql --backend postgresql --group 1  # per step
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import multiprocessing
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.engine import make_url

from benchmarks.common import (
    SKUS,
    STOCK_ON_HAND,
    Database,
    OrderSpec,
    RunMetrics,
    fresh_database,
    latency_summary,
    self_peak_rss_mib,
    workload,
)

NOW = {
    "postgresql": "extract(epoch from clock_timestamp())::float8",
    "mysql": "unix_timestamp(now(6))",
    "sqlite": "((julianday('now') - 2440587.5) * 86400.0)",
}
#: The event-append lock a group takes first (`fulfillment.adapters.db.append_lock_sql`).
APPEND_LOCK = {
    "postgresql": "SELECT pg_advisory_xact_lock(7304118001)",
    "mysql": "SELECT id FROM event_append_lock WHERE id = 1 FOR UPDATE",
}
EVENT_COLUMNS = "position, stream_id, version, type, event_version, data, metadata, recorded_at"
Row = tuple[str, int, str, dict[str, Any], str | None]  # stream, version, type, data, cause
T = TypeVar("T")
COUNTRIES = frozenset({"US", "CA", "GB", "DE", "FR", "NL"})


class Client:
    """One connection speaking the backend's dialect, with the product's session settings."""

    def __init__(self, db_url: str, backend: str) -> None:
        self.backend = backend
        self.now = NOW[backend]
        self.json = "%s::json" if backend == "postgresql" else "%s"
        self.lines = "`lines`" if backend == "mysql" else "lines"  # LINES is reserved in MySQL
        url = make_url(db_url)
        if backend == "sqlite":
            conn = sqlite3.connect(url.database or "", isolation_level=None, timeout=60)
            conn.execute("PRAGMA journal_mode=WAL")
            sync = os.environ.get("FULFILLMENT_SQLITE_SYNCHRONOUS", "FULL").upper()
            conn.execute(f"PRAGMA synchronous={sync}")
            conn.execute("PRAGMA busy_timeout=60000")
            conn.execute("PRAGMA foreign_keys=ON")
            self.conn: Any = conn
        elif backend == "postgresql":
            import psycopg

            self.conn = psycopg.connect(
                host=url.host, port=url.port or 5432, user=url.username, dbname=url.database
            )
        else:
            import pymysql

            self.conn = pymysql.connect(
                host=url.host,
                port=url.port or 3306,
                user=url.username,
                password=url.password or "",
                database=url.database,
                charset="utf8mb4",
                autocommit=False,
                init_command="SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            )
        self.cur = self.conn.cursor()

    # --- transactions --------------------------------------------------------------

    def begin(self, mode: str = "IMMEDIATE") -> None:
        if self.backend == "sqlite":
            self.cur.execute(f"BEGIN {mode}")
        # psycopg and pymysql open a transaction implicitly on the first statement.

    def commit(self) -> None:
        self.conn.commit() if self.backend != "sqlite" else self.cur.execute("COMMIT")

    def rollback(self) -> None:
        self.conn.rollback() if self.backend != "sqlite" else self.cur.execute("ROLLBACK")

    def run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.backend == "sqlite":
            sql = sql.replace("%s", "?")
        self.cur.execute(sql, tuple(params))
        return self.cur

    def close(self) -> None:
        self.conn.close()

    def begin_group(self) -> None:
        """A group's transaction: BEGIN, then the append lock first (not on SQLite)."""
        self.begin()
        lock = APPEND_LOCK.get(self.backend)
        if lock is not None:
            self.run(lock).fetchall()

    # --- the product's statements ---------------------------------------------------

    def stamp(self, at: datetime) -> Any:
        if self.backend == "sqlite":
            return at.replace(tzinfo=None).isoformat(sep=" ")
        if self.backend == "mysql":
            return at.replace(tzinfo=None)
        return at

    def read_stream(self, stream_id: str) -> list[Any]:
        return list(
            self.run(
                f"SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = %s ORDER BY version",
                (stream_id,),
            ).fetchall()
        )

    def enqueue(self, saga_id: str, kind: str) -> None:
        self.run(
            "INSERT INTO jobs (saga_id, kind, status, run_at, claims, failures, created_at) "
            f"VALUES (%s, %s, 'ready', {self.now} + 0.0, 0, 0, {self.now})",
            (saga_id, kind),
        )

    def advance(self, job_id: int, token: str, next_kind: str) -> None:
        """The saga's one job row becomes its next job, still held by this client (chained)."""
        changed = self.run(
            "UPDATE jobs SET kind = %s, claims = 1, failures = 0, last_error = NULL"
            " WHERE id = %s AND claim_token = %s",
            (next_kind, job_id, token),
        ).rowcount
        if changed != 1:
            raise RuntimeError(f"job {job_id} lost")

    def finish(self, job_id: int, token: str) -> None:
        if (
            self.run(
                "DELETE FROM jobs WHERE id = %s AND claim_token = %s", (job_id, token)
            ).rowcount
            != 1
        ):
            raise RuntimeError(f"job {job_id} lost")

    def append(self, rows: list[Row]) -> None:
        """Insert the events, one executemany; the schema's trigger takes the append lock
        (migration 0004), which a group already holds."""
        now = datetime.now(UTC)
        values = [
            (
                stream,
                version,
                type_,
                1,
                json.dumps(data),
                json.dumps(
                    {
                        "correlation_id": data.get("order_id") or data.get("saga_id"),
                        "causation_id": cause,
                    }
                ),
                self.stamp(now),
            )
            for stream, version, type_, data, cause in rows
        ]
        sql = (
            "INSERT INTO events"
            " (stream_id, version, type, event_version, data, metadata, recorded_at) "
            f"VALUES (%s, %s, %s, %s, {self.json}, {self.json}, %s)"
        )
        if self.backend == "sqlite":
            self.cur.executemany(sql.replace("%s", "?"), values)
        else:
            self.cur.executemany(sql, values)

    def claim(self, limit: int, worker: str) -> list[tuple[int, str, str, str]]:
        select = (
            "SELECT id, saga_id, kind, claims, failures FROM jobs "
            f"WHERE status = 'ready' AND run_at <= {self.now} ORDER BY run_at LIMIT %s"
        )
        if self.backend == "sqlite":
            self.begin("DEFERRED")
            peek = self.run(
                select.replace("SELECT id, saga_id, kind, claims, failures", "SELECT id"), (limit,)
            ).fetchone()
            self.rollback()
            if peek is None:
                return []
        else:
            select += " FOR UPDATE SKIP LOCKED"
        token = str(uuid.uuid4())
        self.begin()
        rows = self.run(select, (limit,)).fetchall()
        if not rows:
            self.commit()
            return []
        ids = [r[0] for r in rows]
        marks = ", ".join(["%s"] * len(ids))
        self.run(
            f"UPDATE jobs SET status = 'running', claim_token = %s, claimed_by = %s, "
            f"lease_expires_at = {self.now} + 30.0, claims = claims + 1 WHERE id IN ({marks})",
            (token, worker, *ids),
        )
        self.commit()
        return [(r[0], r[1], r[2], token) for r in rows]


# --- the saga, step by step ----------------------------------------------------------


def place(c: Client, spec: OrderSpec) -> None:
    order = {"order_id": spec.order_id, **spec.request_body()}
    saga = {
        "saga_id": spec.order_id,
        "definition_version": 1,
        **order,
        "deadline_at": datetime.now(UTC).isoformat(),
    }
    c.begin()
    c.read_stream(f"order-{spec.order_id}")
    c.enqueue(spec.order_id, "create_prescription")
    c.append(
        [
            (f"order-{spec.order_id}", 1, "OrderCreated", order, None),
            (f"saga-{spec.order_id}", 1, "OrderFulfillmentSagaStarted", saga, None),
        ]
    )
    c.commit()


@dataclass
class Saga:
    """A claimed saga as its client knows it: its job row, next kind and stream (cache)."""

    job_id: int
    saga_id: str
    token: str
    kind: str | None
    version: int = 0  # of the saga stream
    started: dict[str, Any] | None = None  # the OrderFulfillmentSagaStarted payload

    @property
    def stream(self) -> str:
        return f"saga-{self.saga_id}"


def _decode(data: Any) -> dict[str, Any]:
    return json.loads(data) if isinstance(data, str) else dict(data)


def _shipment_kind(started: dict[str, Any]) -> str:
    """The look before the carrier call: an unsupported country fails the step."""
    supported = started["shipping_address"]["country"] in COUNTRIES
    return "initiate_shipment" if supported else "record_step_failure"


def _insert_once(c: Client, table: str, insert: str, params: tuple[Any, ...]) -> bool:
    """The product's insert of an order's one row: ON CONFLICT DO NOTHING where the
    backend has it (PostgreSQL, SQLite); MariaDB looks first. Whether it inserted."""
    if c.backend == "mysql":
        if c.run(f"SELECT id FROM {table} WHERE order_id = %s", (params[1],)).fetchall():
            return False
        c.run(insert, params)
        return True
    return c.run(insert + " ON CONFLICT (order_id) DO NOTHING", params).rowcount == 1


def step(c: Client, s: Saga, kind: str) -> tuple[list[Row], str | None]:
    """Run the statements of one step in the current transaction, events aside: the
    event rows to insert, and the kind of the saga's next job (None after the last)."""
    assert s.started is not None
    saga_id, started, cause = s.saga_id, s.started, f"job:{s.job_id}"
    now = c.stamp(datetime.now(UTC))
    line = started["items"][0]
    events: list[tuple[str, dict[str, Any]]] = []  # on the saga stream
    order_event: tuple[str, dict[str, Any]] | None = None
    following: str | None = None
    if kind == "create_prescription":
        pid = str(uuid.uuid4())
        _insert_once(
            c,
            "prescriptions",
            "INSERT INTO prescriptions (id, order_id, prescriber_id, patient_name, expires_on,"
            " status, created_at, updated_at) "
            "VALUES (%s, %s, 'dr-bench', 'Ada Lovelace', %s, 'active', %s, %s)",
            (pid, saga_id, started["prescription"]["expires_on"], now, now),
        )
        following = "reserve_inventory"
        events = [("PrescriptionCreated", {"saga_id": saga_id, "prescription_id": pid})]
    elif kind == "reserve_inventory":
        rid = str(uuid.uuid4())
        _insert_once(  # the reservation row first, as the product does, then the stock
            c,
            "inventory_reservations",
            f"INSERT INTO inventory_reservations (id, order_id, status, {c.lines}, created_at,"
            f" updated_at) VALUES (%s, %s, 'reserved', {c.json}, %s, %s)",
            (rid, saga_id, json.dumps([line]), now, now),
        )
        moved = c.run(
            "UPDATE inventory SET reserved = reserved + %s, updated_at = %s"
            " WHERE sku = %s AND on_hand - reserved >= %s",
            (line["quantity"], now, line["sku"], line["quantity"]),
        ).rowcount
        if moved != 1:
            raise RuntimeError("out of stock: the benchmark seeds enough")
        following = "initiate_shipment"
        reserved = {"saga_id": saga_id, "reservation_id": rid, "lines": [line]}
        events = [("InventoryReserved", reserved)]
    elif kind == "initiate_shipment":
        sid = str(uuid.uuid4())
        _insert_once(
            c,
            "shipments",
            "INSERT INTO shipments (id, order_id, carrier, tracking_number, country, status,"
            " created_at, updated_at) "
            "VALUES (%s, %s, 'simulated-post', %s, %s, 'initiated', %s, %s)",
            (sid, saga_id, "SP" + sid[:12], started["shipping_address"]["country"], now, now),
        )
        following = "complete"
        shipped = {
            "saga_id": saga_id,
            "shipment_id": sid,
            "carrier": "simulated-post",
            "tracking_number": "SP" + sid[:12],
        }
        events = [("ShipmentInitiated", shipped)]
    elif kind == "complete":
        _settle(c, saga_id, "consumed", now)
        _move_prescription(c, saga_id, "dispensed", now)
        events = [("OrderFulfillmentSagaCompleted", {"saga_id": saga_id, "tracking_number": "SP"})]
        order_event = ("OrderFulfilled", {"order_id": saga_id, "tracking_number": "SP"})
    elif kind == "record_step_failure":
        following = "release_inventory"
        failed = {
            "saga_id": saga_id,
            "reason": "unsupported_destination",
            "error": "carrier does not ship there",
        }
        compensating = {
            "saga_id": saga_id,
            "failed_step": "initiate_shipment",
            "reason": "unsupported_destination",
            "compensations": ["release_inventory", "cancel_prescription"],
        }
        events = [("ShipmentInitiationFailed", failed), ("SagaCompensationStarted", compensating)]
    elif kind == "release_inventory":
        _settle(c, saga_id, "released", now)
        following = "cancel_prescription"
        events = [("InventoryReleased", {"saga_id": saga_id})]
    elif kind == "cancel_prescription":
        _move_prescription(c, saga_id, "cancelled", now)
        events = [("PrescriptionCancelled", {"saga_id": saga_id})]
        order_event = ("OrderCancelled", {"order_id": saga_id, "reason": "unsupported_destination"})
    else:
        raise ValueError(kind)
    rows: list[Row] = [
        (s.stream, s.version + i, type_, data, cause)
        for i, (type_, data) in enumerate(events, start=1)
    ]
    if order_event is not None:  # the saga ended: settle its order (stream read, not cached)
        order_version = len(c.read_stream(f"order-{saga_id}"))
        rows.append((f"order-{saga_id}", order_version + 1, *order_event, cause))
    if following is None:
        c.finish(s.job_id, s.token)
    else:
        c.advance(s.job_id, s.token, following)
    return rows, following


def _move_prescription(c: Client, saga_id: str, to: str, now: Any) -> None:
    c.run(
        "UPDATE prescriptions SET status = %s, updated_at = %s"
        " WHERE order_id = %s AND status = 'active'",
        (to, now, saga_id),
    )


def _settle(c: Client, saga_id: str, to: str, now: Any) -> None:
    settle = (
        "UPDATE inventory_reservations SET status = %s, updated_at = %s"
        " WHERE order_id = %s AND status = 'reserved'"
    )
    if c.backend == "mysql":  # no UPDATE ... RETURNING: the product reads the lines after
        if c.run(settle, (to, now, saga_id)).rowcount != 1:
            return
        raw = c.run(
            f"SELECT {c.lines} FROM inventory_reservations WHERE order_id = %s", (saga_id,)
        ).fetchone()[0]
    else:
        row = c.run(settle + f" RETURNING {c.lines}", (to, now, saga_id)).fetchone()
        if row is None:
            return
        raw = row[0]
    for line in json.loads(raw) if isinstance(raw, str) else raw:
        if to == "consumed":
            c.run(
                "UPDATE inventory SET on_hand = on_hand - %s, reserved = reserved - %s,"
                " updated_at = %s WHERE sku = %s",
                (line["quantity"], line["quantity"], now, line["sku"]),
            )
        else:
            c.run(
                "UPDATE inventory SET reserved = reserved - %s, updated_at = %s WHERE sku = %s",
                (line["quantity"], now, line["sku"]),
            )


# --- per step (--group 1): the previous design -----------------------------------------


def _read_saga(c: Client, s: Saga) -> None:
    """Replay the saga stream: its version, and the started payload with the order's lines."""
    rows = c.read_stream(s.stream)
    s.version, s.started = len(rows), _decode(rows[0][5])


def run_job(c: Client, s: Saga) -> str | None:
    """Run the saga's current job in its own transaction; the kind of its next job, or None."""
    assert s.kind is not None
    kind = s.kind
    if kind == "initiate_shipment":
        c.begin("DEFERRED")
        _read_saga(c, s)  # the short read-only look before the carrier
        c.rollback()
        assert s.started is not None
        kind = _shipment_kind(s.started)
    c.begin()
    _read_saga(c, s)
    rows, following = step(c, s, kind)
    c.append(rows)
    c.commit()
    return following


# --- group commit (the default): the product's design ----------------------------------


def prefetch(c: Client, sagas: Sequence[Saga]) -> None:
    """Read the claimed sagas' streams with one query (`App.prefetch_sagas`), read-only."""
    by_stream = {s.stream: s for s in sagas}
    marks = ", ".join(["%s"] * len(by_stream))
    c.begin("DEFERRED")
    rows = c.run(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE stream_id IN ({marks}) ORDER BY position",
        list(by_stream),
    ).fetchall()
    c.rollback()
    for s in sagas:
        s.version, s.started = 0, None
    for row in rows:
        s = by_stream[row[1]]
        s.version = max(s.version, int(row[2]))
        if row[3] == "OrderFulfillmentSagaStarted":
            s.started = _decode(row[5])


def run_round(c: Client, sagas: Sequence[Saga]) -> list[tuple[list[Row], str | None]]:
    """One group commit: the current step of each saga, each in a savepoint of one
    transaction; all their events in one insert before the COMMIT. Per saga: its event
    rows and its next kind (applied by the caller once committed)."""
    outcomes: list[tuple[list[Row], str | None]] = []
    c.begin_group()
    for s in sagas:
        assert s.kind is not None and s.started is not None
        # initiate_shipment's look reads the cached saga: no SQL.
        kind = _shipment_kind(s.started) if s.kind == "initiate_shipment" else s.kind
        c.run("SAVEPOINT step")
        outcomes.append(step(c, s, kind))
    c.append([row for rows, _ in outcomes for row in rows])
    c.commit()
    return outcomes


def run_batch(c: Client, sagas: list[Saga]) -> int:
    """Run claimed sagas to their end in rounds of group commits; the steps run."""
    _with_retries(c, functools.partial(prefetch, c, sagas))
    done = 0
    active = [s for s in sagas if s.kind is not None]
    while active:
        outcomes = _with_retries(c, functools.partial(run_round, c, active))
        for s, (rows, following) in zip(active, outcomes, strict=True):
            s.version += sum(1 for row in rows if row[0] == s.stream)  # the cache, after commit
            s.kind = following
        done += len(active)
        active = [s for s in active if s.kind is not None]
    return done


# --- clients -------------------------------------------------------------------------


def _with_retries(c: Client, fn: Callable[[], T]) -> T:
    """Deadlocks / busy: roll back and run again (the product does the same)."""
    for attempt in range(20):
        try:
            return fn()
        except Exception as exc:
            with contextlib.suppress(Exception):
                c.rollback()
            text = str(exc).lower()
            if attempt < 19 and (
                "deadlock" in text or "locked" in text or "lock wait" in text or "serializ" in text
            ):
                time.sleep(0.001 * (attempt + 1))
                continue
            raise
    raise AssertionError("unreachable")


def _place_worker(url: str, backend: str, specs: list[OrderSpec]) -> None:
    c = Client(url, backend)
    for spec in specs:
        _with_retries(c, functools.partial(place, c, spec))
    c.close()


def _drain_worker(url: str, backend: str, group: int, start_at: float, out: Any) -> None:
    c = Client(url, backend)
    worker = f"plain-{os.getpid()}"
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    done = 0
    while True:
        jobs = _with_retries(c, lambda: c.claim(claim_batch(group), worker))
        if not jobs:
            c.begin("DEFERRED")
            left = c.run("SELECT 1 FROM jobs LIMIT 1").fetchone()
            c.rollback()
            if left is None:
                break
            time.sleep(0.002)
            continue
        sagas = [Saga(job_id, saga_id, token, kind) for job_id, saga_id, kind, token in jobs]
        if group > 1:
            done += run_batch(c, sagas)
            continue
        for s in sagas:
            while s.kind is not None:  # the product's continuation: the same thread goes on
                s.kind = _with_retries(c, functools.partial(run_job, c, s))
                done += 1
    c.close()
    out.put({"jobs": done, "peak_rss_mib": self_peak_rss_mib()})


def claim_batch(group: int) -> int:
    """Sagas claimed at once: a group's worth; 8 for the per-step client (as before)."""
    return group if group > 1 else 8


def _collect(queue: Any, procs: list[Any], timeout: float = 3600.0) -> list[dict[str, Any]]:
    """Every process's report; fail fast if one of them died."""
    import queue as queue_module

    reports: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(reports) < len(procs):
        try:
            reports.append(queue.get(timeout=0.5))
        except queue_module.Empty:
            if any(p.exitcode not in (None, 0) for p in procs) or time.monotonic() > deadline:
                for p in procs:
                    p.kill()
                raise RuntimeError("a plain-SQL client failed (see its traceback above)") from None
    return reports


def run_plain(
    db: Database, specs: Sequence[OrderSpec], mix: str, clients: int, group: int = 64
) -> RunMetrics:
    """Place the backlog with `clients` processes, then drain it with `clients` processes,
    each committing up to `group` steps per transaction (1: a transaction per step)."""
    from sqlalchemy import text

    from benchmarks.ours import metrics_from_engine
    from fulfillment.adapters.db import create_nullpool_engine
    from fulfillment.adapters.migrate import migrate

    engine = create_nullpool_engine(db.url)
    migrate(engine)
    with engine.begin() as conn:
        for sku in SKUS:
            conn.execute(
                text(
                    "INSERT INTO inventory (sku, on_hand, reserved, updated_at)"
                    " VALUES (:s, :n, 0, :t)"
                ),
                {"s": sku, "n": STOCK_ON_HAND, "t": datetime.now(UTC).replace(tzinfo=None)},
            )
    ctx = multiprocessing.get_context("spawn")
    chunks = [list(specs[i::clients]) for i in range(clients)]
    started = time.perf_counter()
    placers = [
        ctx.Process(target=_place_worker, args=(db.url, db.backend, chunk)) for chunk in chunks
    ]
    for p in placers:
        p.start()
    for p in placers:
        p.join()
        if p.exitcode:
            raise RuntimeError("a plain-SQL placer failed")
    placed_rate = len(specs) / (time.perf_counter() - started)
    queue = ctx.Queue()
    start_at = time.time() + 1.0  # every process connected before the first claim
    drainers = [
        ctx.Process(target=_drain_worker, args=(db.url, db.backend, group, start_at, queue))
        for _ in range(clients)
    ]
    for p in drainers:
        p.start()
    reports = _collect(queue, drainers)
    for p in drainers:
        p.join()
    figures = metrics_from_engine(engine, window_from="first_step")
    check_consistent(engine, specs)
    engine.dispose()
    seconds = figures["seconds"]
    terminal = figures["fulfilled"] + figures["cancelled"]
    return RunMetrics(
        system="plain_sql",
        backend=db.backend,
        mix=mix,
        carrier_latency_ms=0.0,
        orders=len(specs),
        terminal=terminal,
        fulfilled=figures["fulfilled"],
        cancelled=figures["cancelled"],
        seconds=seconds,
        orders_per_second=terminal / seconds if seconds else 0.0,
        events=figures["events"],
        events_per_second=figures["events"] / seconds if seconds else 0.0,
        latency_ms=latency_summary(figures["latencies"]),
        peak_rss_mib={f"client-{i}": r["peak_rss_mib"] for i, r in enumerate(reports)},
        config={
            "clients": clients,
            "group": group,
            "batch": claim_batch(group),
            "placed_per_second": round(placed_rate, 1),
            "durability": durability(db.backend),
        },
    )


def check_consistent(engine: Any, specs: Sequence[OrderSpec]) -> None:
    """Every saga ended (no job left) and the inventory adds up: nothing reserved, and
    on hand is the seeded stock less what the fulfilled orders took."""
    from sqlalchemy import text

    taken = dict.fromkeys(SKUS, 0)
    for spec in specs:
        if not spec.fails_shipment:
            taken[spec.sku] += spec.quantity
    with engine.connect() as conn:
        jobs = conn.execute(text("SELECT count(*) FROM jobs")).scalar_one()
        stock = {
            sku: (int(on_hand), int(reserved))
            for sku, on_hand, reserved in conn.execute(
                text("SELECT sku, on_hand, reserved FROM inventory")
            )
        }
        conn.rollback()
    expected = {sku: (STOCK_ON_HAND - n, 0) for sku, n in taken.items()}
    if jobs or stock != expected:
        raise RuntimeError(f"inconsistent end: {jobs} jobs left, stock {stock} != {expected}")


def durability(backend: str) -> str:
    if backend == "sqlite":
        return (
            f"WAL, synchronous={os.environ.get('FULFILLMENT_SQLITE_SYNCHRONOUS', 'FULL').upper()}"
        )
    if backend == "mysql":
        return "READ COMMITTED, server's innodb_flush_log_at_trx_commit"
    return "READ COMMITTED, server's synchronous_commit"


def best_of(
    backend: str, n: int, mix: str, client_counts: Sequence[int], group: int = 64
) -> tuple[RunMetrics, list[dict[str, Any]]]:
    """Run with each K on a fresh database; the best throughput, and every run's summary."""
    runs: list[RunMetrics] = []
    for k in client_counts:
        with fresh_database(backend) as db:
            runs.append(run_plain(db, workload(n, mix), mix, k, group))
    best = max(runs, key=lambda r: r.orders_per_second)
    return best, [
        {"clients": r.config["clients"], "orders_per_second": round(r.orders_per_second, 1)}
        for r in runs
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default="sqlite", choices=("sqlite", "postgresql", "mysql"))
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--mix", default="success", choices=("success", "compensate10"))
    parser.add_argument("--clients", default="1,2,4")
    parser.add_argument(
        "--group",
        type=int,
        default=64,  # the product's FULFILLMENT_GROUP_COMMIT_MAX_STEPS default
        help="steps per transaction (the product's group commit); 1: one per step",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.group < 1:
        parser.error("--group must be at least 1")
    best, runs = best_of(
        args.backend, args.orders, args.mix, [int(k) for k in args.clients.split(",")], args.group
    )
    result = best.as_dict() | {"runs": runs}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

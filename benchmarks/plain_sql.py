"""The physical limit: our saga's transactions, issued by plain drivers, with no framework.

Per order it performs the transactions our design performs (it mirrors
`fulfillment.adapters` and `entrypoints/worker.py` as of the "job row advance,
continuation, append trigger" design; when the product's transactions change, change this
script with them), on the product's own schema:

* place: read the order stream, insert the saga's job row, insert `OrderCreated` +
  `OrderFulfillmentSagaStarted` (the schema's trigger takes the append lock on PostgreSQL
  and MariaDB); one commit;
* claim: `SELECT ... FOR UPDATE SKIP LOCKED` + `UPDATE jobs`, batched over up to `--batch`
  sagas (a deferred peek first on SQLite); once per saga, since the claiming client then
  runs the saga's next jobs itself (the product's continuation);
* per step (create_prescription, reserve_inventory, initiate_shipment, complete; on the
  compensation path the step failure, release_inventory, cancel_prescription): one
  transaction that reads the saga stream, changes the service tables, turns the job row
  into the next job (`UPDATE jobs`, token-checked; `DELETE` after the last) and inserts the
  events; initiate_shipment first reads the saga stream in a short read-only transaction
  before the (here instantaneous) carrier call.

Durability is the product's: SQLite in WAL with `synchronous` from
`FULFILLMENT_SQLITE_SYNCHRONOUS` (default FULL, as the product), `BEGIN IMMEDIATE` writers
and the same busy timeout; MariaDB at READ COMMITTED (the product's isolation level: at
REPEATABLE READ the `SKIP LOCKED` claims take gap locks and deadlock); PostgreSQL with the
server's defaults (READ COMMITTED, synchronous_commit on).

K client processes share the work; the best of a few K is reported.

    .venv/bin/python -m benchmarks.plain_sql --backend sqlite --orders 2000 --clients 1,2,4
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
EVENT_COLUMNS = "position, stream_id, version, type, event_version, data, metadata, recorded_at"
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

    def append(self, rows: list[tuple[str, int, str, dict[str, Any], str | None]]) -> None:
        """Insert the events; the schema's trigger takes the append lock (migration 0004)."""
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
    order = {
        "order_id": spec.order_id,
        "customer_id": "bench-customer",
        "items": [{"sku": spec.sku, "quantity": spec.quantity}],
        "prescription": {
            "prescriber_id": "dr-bench",
            "patient_name": "Ada Lovelace",
            "expires_on": spec.expires_on.isoformat(),
        },
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": "1 Analytical Way",
            "city": "London",
            "postal_code": "N1 1AA",
            "country": spec.country,
        },
    }
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


def _saga_state(c: Client, saga_id: str) -> tuple[int, dict[str, Any]]:
    """Replay the saga stream (version, and the started payload with the order's lines)."""
    rows = c.read_stream(f"saga-{saga_id}")
    data = rows[0][5]
    return len(rows), (json.loads(data) if isinstance(data, str) else data)


def run_job(c: Client, job_id: int, saga_id: str, kind: str, token: str) -> str | None:
    """Run one job in its transaction; the kind of the saga's next job (chained), or None."""
    following: str | None = None
    cause = f"job:{job_id}"
    stream = f"saga-{saga_id}"
    now = c.stamp(datetime.now(UTC))
    if kind == "initiate_shipment":
        c.begin("DEFERRED")
        _, started = _saga_state(c, saga_id)  # the short read-only look before the carrier
        c.rollback()
        if started["shipping_address"]["country"] not in COUNTRIES:
            kind = "record_step_failure"
    c.begin()
    version, started = _saga_state(c, saga_id)
    line = started["items"][0]
    if kind == "create_prescription":
        c.run("SELECT id FROM prescriptions WHERE order_id = %s", (saga_id,)).fetchall()
        pid = str(uuid.uuid4())
        c.run(
            "INSERT INTO prescriptions (id, order_id, prescriber_id, patient_name, expires_on,"
            " status, created_at, updated_at) "
            "VALUES (%s, %s, 'dr-bench', 'Ada Lovelace', %s, 'active', %s, %s)",
            (pid, saga_id, started["prescription"]["expires_on"], now, now),
        )
        following = "reserve_inventory"
        c.advance(job_id, token, following)
        c.append(
            [
                (
                    stream,
                    version + 1,
                    "PrescriptionCreated",
                    {"saga_id": saga_id, "prescription_id": pid},
                    cause,
                )
            ]
        )
    elif kind == "reserve_inventory":
        c.run("SELECT id FROM inventory_reservations WHERE order_id = %s", (saga_id,)).fetchall()
        moved = c.run(
            "UPDATE inventory SET reserved = reserved + %s, updated_at = %s"
            " WHERE sku = %s AND on_hand - reserved >= %s",
            (line["quantity"], now, line["sku"], line["quantity"]),
        ).rowcount
        if moved != 1:
            raise RuntimeError("out of stock: the benchmark seeds enough")
        rid = str(uuid.uuid4())
        c.run(
            f"INSERT INTO inventory_reservations (id, order_id, status, {c.lines}, created_at,"
            f" updated_at) VALUES (%s, %s, 'reserved', {c.json}, %s, %s)",
            (rid, saga_id, json.dumps([line]), now, now),
        )
        following = "initiate_shipment"
        c.advance(job_id, token, following)
        c.append(
            [
                (
                    stream,
                    version + 1,
                    "InventoryReserved",
                    {"saga_id": saga_id, "reservation_id": rid, "lines": [line]},
                    cause,
                )
            ]
        )
    elif kind == "initiate_shipment":
        c.run("SELECT id FROM shipments WHERE order_id = %s", (saga_id,)).fetchall()
        sid = str(uuid.uuid4())
        c.run(
            "INSERT INTO shipments (id, order_id, carrier, tracking_number, country, status,"
            " created_at, updated_at) "
            "VALUES (%s, %s, 'simulated-post', %s, %s, 'initiated', %s, %s)",
            (sid, saga_id, "SP" + sid[:12], started["shipping_address"]["country"], now, now),
        )
        following = "complete"
        c.advance(job_id, token, following)
        c.append(
            [
                (
                    stream,
                    version + 1,
                    "ShipmentInitiated",
                    {
                        "saga_id": saga_id,
                        "shipment_id": sid,
                        "carrier": "simulated-post",
                        "tracking_number": "SP" + sid[:12],
                    },
                    cause,
                )
            ]
        )
    elif kind == "complete":
        _settle(c, saga_id, "consumed", now)
        c.run(
            "UPDATE prescriptions SET status = 'dispensed', updated_at = %s"
            " WHERE order_id = %s AND status = 'active'",
            (now, saga_id),
        )
        order_version = len(c.read_stream(f"order-{saga_id}"))
        c.finish(job_id, token)
        c.append(
            [
                (
                    stream,
                    version + 1,
                    "OrderFulfillmentSagaCompleted",
                    {"saga_id": saga_id, "tracking_number": "SP"},
                    cause,
                ),
                (
                    f"order-{saga_id}",
                    order_version + 1,
                    "OrderFulfilled",
                    {"order_id": saga_id, "tracking_number": "SP"},
                    cause,
                ),
            ]
        )
    elif kind == "record_step_failure":
        following = "release_inventory"
        c.advance(job_id, token, following)
        c.append(
            [
                (
                    stream,
                    version + 1,
                    "ShipmentInitiationFailed",
                    {
                        "saga_id": saga_id,
                        "reason": "unsupported_destination",
                        "error": "carrier does not ship there",
                    },
                    cause,
                ),
                (
                    stream,
                    version + 2,
                    "SagaCompensationStarted",
                    {
                        "saga_id": saga_id,
                        "failed_step": "initiate_shipment",
                        "reason": "unsupported_destination",
                        "compensations": ["release_inventory", "cancel_prescription"],
                    },
                    cause,
                ),
            ]
        )
    elif kind == "release_inventory":
        _settle(c, saga_id, "released", now)
        following = "cancel_prescription"
        c.advance(job_id, token, following)
        c.append([(stream, version + 1, "InventoryReleased", {"saga_id": saga_id}, cause)])
    elif kind == "cancel_prescription":
        c.run(
            "UPDATE prescriptions SET status = 'cancelled', updated_at = %s"
            " WHERE order_id = %s AND status = 'active'",
            (now, saga_id),
        )
        order_version = len(c.read_stream(f"order-{saga_id}"))
        c.finish(job_id, token)
        c.append(
            [
                (stream, version + 1, "PrescriptionCancelled", {"saga_id": saga_id}, cause),
                (
                    f"order-{saga_id}",
                    order_version + 1,
                    "OrderCancelled",
                    {"order_id": saga_id, "reason": "unsupported_destination"},
                    cause,
                ),
            ]
        )
    else:
        raise ValueError(kind)
    c.commit()
    return following


def _settle(c: Client, saga_id: str, to: str, now: Any) -> None:
    moved = c.run(
        "UPDATE inventory_reservations SET status = %s, updated_at = %s"
        " WHERE order_id = %s AND status = 'reserved'",
        (to, now, saga_id),
    ).rowcount
    if moved != 1:
        return
    raw = c.run(
        f"SELECT {c.lines} FROM inventory_reservations WHERE order_id = %s", (saga_id,)
    ).fetchone()[0]
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


def _drain_worker(url: str, backend: str, batch: int, start_at: float, out: Any) -> None:
    c = Client(url, backend)
    worker = f"plain-{os.getpid()}"
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    done = 0
    while True:
        jobs = _with_retries(c, lambda: c.claim(batch, worker))
        if not jobs:
            c.begin("DEFERRED")
            left = c.run("SELECT 1 FROM jobs LIMIT 1").fetchone()
            c.rollback()
            if left is None:
                break
            time.sleep(0.002)
            continue
        for job_id, saga_id, first_kind, token in jobs:
            kind: str | None = first_kind
            while kind is not None:  # the product's continuation: the same thread goes on
                step = functools.partial(run_job, c, job_id, saga_id, kind, token)
                kind = _with_retries(c, step)
                done += 1
    c.close()
    out.put({"jobs": done, "peak_rss_mib": self_peak_rss_mib()})


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
    db: Database, specs: Sequence[OrderSpec], mix: str, clients: int, batch: int = 8
) -> RunMetrics:
    """Place the backlog with `clients` processes, then drain it with `clients` processes."""
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
        ctx.Process(target=_drain_worker, args=(db.url, db.backend, batch, start_at, queue))
        for _ in range(clients)
    ]
    for p in drainers:
        p.start()
    reports = _collect(queue, drainers)
    for p in drainers:
        p.join()
    figures = metrics_from_engine(engine, window_from="first_step")
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
            "batch": batch,
            "placed_per_second": round(placed_rate, 1),
            "durability": durability(db.backend),
        },
    )


def durability(backend: str) -> str:
    if backend == "sqlite":
        return (
            f"WAL, synchronous={os.environ.get('FULFILLMENT_SQLITE_SYNCHRONOUS', 'FULL').upper()}"
        )
    if backend == "mysql":
        return "READ COMMITTED, server's innodb_flush_log_at_trx_commit"
    return "READ COMMITTED, server's synchronous_commit"


def best_of(
    backend: str, n: int, mix: str, client_counts: Sequence[int]
) -> tuple[RunMetrics, list[dict[str, Any]]]:
    """Run with each K on a fresh database; the best throughput, and every run's summary."""
    runs: list[RunMetrics] = []
    for k in client_counts:
        with fresh_database(backend) as db:
            runs.append(run_plain(db, workload(n, mix), mix, k))
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
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    best, runs = best_of(
        args.backend, args.orders, args.mix, [int(k) for k in args.clients.split(",")]
    )
    result = best.as_dict() | {"runs": runs}
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Peer (a): the same saga as a DBOS Transact workflow (`dbos` from PyPI, 3.x).

Three steps (create prescription, reserve inventory, initiate shipment) and the completion,
each a `@DBOS.step()` that changes the product's service tables in its own transaction
through the product's own service adapters; DBOS checkpoints each step's output in its
system database (a second transaction per step: DBOS 3 steps are not in-checkpoint
transactions). A business failure is returned as a value (so DBOS does not retry it) and
the workflow runs the compensations of the succeeded steps in reverse.

The system database is the SAME database as the service tables: the same SQLite file
(WAL, set on the file; DBOS's connections keep SQLite's default synchronous=FULL, the
product's default), or the same PostgreSQL database (schema `dbos`). DBOS supports only
PostgreSQL and SQLite as system database: on MariaDB this peer reports "unsupported".

Modes (run one per process; the harness tries several and keeps the best):
* queue: orders are enqueued durably on a DBOS queue (`worker_concurrency` = concurrency);
* thread: `concurrency` threads call the workflow function directly (no durable queue).

    .venv/bin/python -m benchmarks.peers.dbos_saga --url sqlite:////tmp/x.db --orders 500
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from typing import Any

from dbos import DBOS, DBOSConfig, SetWorkflowID
from sqlalchemy import Engine, text

from benchmarks.common import OrderSpec, RunMetrics, latency_summary, pace, self_peak_rss_mib
from benchmarks.peers.common import (
    UnsupportedDestination,
    backend_of_url,
    carrier_book,
    create_service_tables,
    emit,
    parser,
    service_engine,
    specs_for,
)
from fulfillment.adapters.services import (
    SqlAlchemyInventoryService,
    SqlAlchemyPrescriptionService,
    SqlAlchemyShipmentService,
)
from fulfillment.domain.errors import InsufficientStock
from fulfillment.domain.values import OrderLine, PrescriptionDetails
from fulfillment.service_layer.ports import Booking

QUEUE = "orders"
SUPPORTED_BACKENDS = ("sqlite", "postgresql")


@dataclass
class _State:
    engine: Engine | None = None
    carrier_latency_ms: float = 0.0


STATE = _State()
#: In-process stamps (DBOS's own status timestamps have 1 s resolution on SQLite):
#: when each order was durably placed, and when its workflow returned, with the outcome.
PLACED: dict[str, float] = {}
ENDED: dict[str, tuple[float, str]] = {}


def _engine() -> Engine:
    assert STATE.engine is not None
    return STATE.engine


# --- steps ---------------------------------------------------------------------------


@DBOS.step()
def create_prescription(order: dict[str, Any]) -> str:
    details = PrescriptionDetails(
        "dr-bench", "Ada Lovelace", date.fromisoformat(order["expires_on"])
    )
    with _engine().begin() as conn:
        # Stored as the peer stores it: no patient-data codec (our encryption is ours).
        return SqlAlchemyPrescriptionService(conn).create(
            order["order_id"], details, date.today(), customer_id="bench-customer"
        )


@DBOS.step()
def reserve_inventory(order: dict[str, Any]) -> str | None:
    try:
        with _engine().begin() as conn:
            reservation = SqlAlchemyInventoryService(conn).reserve(
                order["order_id"],
                (OrderLine(order["sku"], order["quantity"]),),
                today=date.today(),
            )
            return reservation.reservation_id
    except InsufficientStock:
        return None


@DBOS.step(retries_allowed=True, max_attempts=3)
def initiate_shipment(order: dict[str, Any]) -> dict[str, str]:
    try:
        tracking = carrier_book(order["country"], STATE.carrier_latency_ms)
    except UnsupportedDestination as exc:
        return {"failed": str(exc)}
    with _engine().begin() as conn:
        shipment_id = SqlAlchemyShipmentService(conn).record_initiated(
            order["order_id"], Booking("simulated-post", tracking), order["country"]
        )
    return {"shipment_id": shipment_id, "tracking_number": tracking}


@DBOS.step()
def complete_order(order: dict[str, Any]) -> None:
    with _engine().begin() as conn:
        SqlAlchemyInventoryService(conn).consume(order["order_id"])
        SqlAlchemyPrescriptionService(conn).mark_dispensed(order["order_id"])


@DBOS.step()
def release_inventory(order: dict[str, Any]) -> None:
    with _engine().begin() as conn:
        SqlAlchemyInventoryService(conn).release(order["order_id"])


@DBOS.step()
def cancel_prescription(order: dict[str, Any]) -> None:
    with _engine().begin() as conn:
        SqlAlchemyPrescriptionService(conn).cancel(order["order_id"])


# --- the workflow --------------------------------------------------------------------


@DBOS.workflow()
def fulfil_order(order: dict[str, Any]) -> str:
    """Forward steps; on a business failure, the compensations in reverse order."""
    undo = [cancel_prescription]
    create_prescription(order)
    if reserve_inventory(order) is None:
        return _compensate(order, undo)
    undo.append(release_inventory)
    shipped = initiate_shipment(order)
    if "failed" in shipped:
        return _compensate(order, undo)
    complete_order(order)
    return _ended(order, "fulfilled")


def _compensate(order: dict[str, Any], undo: list[Any]) -> str:
    for compensation in reversed(undo):
        compensation(order)
    return _ended(order, "cancelled")


def _ended(order: dict[str, Any], outcome: str) -> str:
    ENDED[order["order_id"]] = (time.time(), outcome)
    return outcome


# --- running -------------------------------------------------------------------------


def _launch(url: str, concurrency: int) -> None:
    config: DBOSConfig = {
        "name": "bench-dbos-saga",
        "system_database_url": url,
        "sys_db_pool_size": concurrency + 10,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()


def _enqueue(spec: OrderSpec) -> None:
    with SetWorkflowID(spec.order_id):
        DBOS.enqueue_workflow(QUEUE, fulfil_order, spec.as_dict())
    PLACED[spec.order_id] = time.time()


def _run_direct(spec: OrderSpec) -> None:
    PLACED[spec.order_id] = time.time()
    with SetWorkflowID(spec.order_id):
        fulfil_order(spec.as_dict())


def _done(sys_engine: Engine, schema: str) -> int:
    with sys_engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    f"SELECT COUNT(*) FROM {schema}workflow_status "
                    "WHERE status IN ('SUCCESS', 'ERROR') AND name LIKE '%fulfil_order%'"
                )
            ).scalar_one()
        )


def run(args: argparse.Namespace) -> RunMetrics:
    backend = backend_of_url(args.url)
    if backend not in SUPPORTED_BACKENDS:
        raise SystemExit(
            f"DBOS supports only PostgreSQL and SQLite system databases, not {backend}"
        )
    specs = specs_for(args)
    STATE.carrier_latency_ms = args.carrier_latency_ms
    # pool + overflow = concurrency + 2 connections for the service tables at most.
    STATE.engine = service_engine(args.url, args.concurrency // 2 + 1)
    create_service_tables(STATE.engine)
    _launch(args.url, args.concurrency)
    schema = "dbos." if backend == "postgresql" else ""
    notes: list[str] = []
    if args.rate:
        DBOS.register_queue(
            QUEUE, worker_concurrency=args.concurrency, polling_interval_sec=args.poll
        )
        time.sleep(1.0)
        pace(_enqueue, specs, args.rate)
        mode = "queue"
    elif args.mode == "queue":
        placed = time.perf_counter()
        for spec in specs:
            _enqueue(spec)
        notes.append(f"placed {len(specs) / (time.perf_counter() - placed):.0f} orders/s")
        DBOS.register_queue(
            QUEUE, worker_concurrency=args.concurrency, polling_interval_sec=args.poll
        )
        mode = "queue"
    else:
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(_run_direct, specs))
        mode = "thread"
        notes.append("thread mode: orders are not durably placed before they start")
    deadline = time.monotonic() + args.timeout
    while _done(STATE.engine, schema) < len(specs) and time.monotonic() < deadline:
        time.sleep(0.2)
    result = _metrics(STATE.engine, schema, specs, args, mode)
    result.notes.extend(notes)
    DBOS.destroy()
    STATE.engine.dispose()
    return result


def _metrics(
    engine: Engine, schema: str, specs: list[OrderSpec], args: argparse.Namespace, mode: str
) -> RunMetrics:
    with engine.connect() as conn:
        first_step, checkpoints = conn.execute(
            text(f"SELECT MIN(started_at_epoch_ms), COUNT(*) FROM {schema}operation_outputs")
        ).one()
    ended = {oid: v for oid, v in ENDED.items() if oid in PLACED}
    fulfilled = sum(1 for _, outcome in ended.values() if outcome == "fulfilled")
    cancelled = sum(1 for _, outcome in ended.values() if outcome == "cancelled")
    latencies = [(at - PLACED[oid]) * 1000.0 for oid, (at, _) in ended.items()]
    start = min(PLACED.values()) if args.rate else float(first_step or 0) / 1000.0
    end = max((at for at, _ in ended.values()), default=start)
    seconds = max(1e-9, end - start)
    terminal = fulfilled + cancelled
    return RunMetrics(
        system="dbos",
        backend=backend_of_url(args.url),
        mix=args.mix,
        carrier_latency_ms=args.carrier_latency_ms,
        orders=len(specs),
        terminal=terminal,
        fulfilled=fulfilled,
        cancelled=cancelled,
        seconds=seconds,
        orders_per_second=terminal / seconds,
        events=int(checkpoints),
        events_per_second=int(checkpoints) / seconds,
        latency_ms=latency_summary(latencies),
        peak_rss_mib={"dbos": self_peak_rss_mib()},
        config={
            "mode": mode,
            "concurrency": args.concurrency,
            "queue_polling_interval_sec": args.poll if mode == "queue" else None,
            "offered_per_second": args.rate or None,
            "events_are": "DBOS step checkpoints (operation_outputs rows)",
            "dbos_version": _version(),
            "sqlite_synchronous": "FULL (SQLite default; DBOS sets none)"
            if "sqlite" in args.url
            else None,
        },
    )


def _version() -> str:
    from importlib.metadata import version

    return version("dbos")


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--mode", choices=("queue", "thread"), default="queue")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--poll", type=float, default=0.05, help="queue polling interval (s)")
    p.add_argument("--timeout", type=float, default=float(os.environ.get("BENCH_TIMEOUT", 900)))
    args = p.parse_args()
    emit(run(args), args.json)


if __name__ == "__main__":
    main()

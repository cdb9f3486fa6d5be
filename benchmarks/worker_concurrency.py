"""Saga throughput of one worker at concurrency 1 and at concurrency N, with a slow carrier.

Each saga makes one carrier call (FULFILLMENT_CARRIER_LATENCY_MS, 200 ms by default), so one
worker running one saga at a time is bound by that latency; a worker with N sagas in flight
overlaps the waits and should be close to N times faster, until the database becomes the
limit. The orders are placed first; the measured span runs from the worker's start on
that backlog to the last saga ended.

Each run gets a fresh database on the same backend: a temporary SQLite file by default, or
a scratch database created (and dropped afterwards) on the server of `--database-url`.

    .venv/bin/python -m benchmarks.worker_concurrency
    .venv/bin/python -m benchmarks.worker_concurrency --database-url postgresql://postgres@127.0.0.1/postgres
    .venv/bin/python -m benchmarks.worker_concurrency --json result.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from fulfillment.adapters.db import normalize_url
from fulfillment.bootstrap import App, bootstrap
from fulfillment.config import Settings
from fulfillment.domain.values import OrderLine, PrescriptionDetails, ShippingAddress
from fulfillment.entrypoints.worker import Worker
from fulfillment.service_layer.commands import CreateOrder, SetInventory
from fulfillment.service_layer.job_runner import JobOutcome
from fulfillment.service_layer.jobs import ClaimedJob

TARGET_RATIO = 20.0
SKUS = tuple(f"BENCH-{n:02d}" for n in range(20))


@dataclass(frozen=True)
class RunResult:
    concurrency: int
    orders: int
    fulfilled: int
    placing_seconds: float  # placing the orders, before the worker starts (not timed)
    seconds: float  # worker start -> last saga ended
    orders_per_second: float
    cpu_ms_per_order: float  # this process's CPU time (all threads) per saga, worker span


@contextmanager
def scratch_database(database_url: str | None) -> Iterator[str]:
    """A fresh, empty database on the chosen backend, removed afterwards."""
    if database_url is None:
        with tempfile.TemporaryDirectory(prefix="fs-bench-") as tmp:
            yield f"sqlite:///{Path(tmp) / 'bench.db'}"
        return
    url = make_url(normalize_url(database_url))
    if url.get_backend_name() == "sqlite":
        for suffix in ("", "-wal", "-shm"):
            Path(f"{url.database}{suffix}").unlink(missing_ok=True)
        yield database_url
        return
    name = f"fs_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        force = " WITH (FORCE)" if url.get_backend_name() == "postgresql" else ""
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS {name}{force}"))
        admin.dispose()


def _order(n: int) -> CreateOrder:
    return CreateOrder(
        order_id=f"bench-{n:05d}",
        customer_id=f"cust-{n % 97}",
        items=(OrderLine(SKUS[n % len(SKUS)], 1),),
        prescription=PrescriptionDetails(
            "GMC-1234567", "Ada Lovelace", datetime.now(UTC).date() + timedelta(days=90)
        ),
        shipping_address=ShippingAddress("Ada Lovelace", "1 High Street", "Leeds", "LS1 1AA", "GB"),
    )


def run_once(
    base: Settings, database_url: str | None, concurrency: int, orders: int, timeout: float
) -> RunResult:
    """Place `orders` orders with one worker running; time until every saga has ended."""
    with scratch_database(database_url) as url:
        app = bootstrap(
            replace(base, database_url=url), run_migrations=True, pool_size=concurrency + 4
        )
        try:
            for sku in SKUS:
                app.bus.handle(SetInventory(sku, orders))
            ended = threading.Event()
            finished = [0, 0.0]  # sagas completed, monotonic time of the last one
            lock = threading.Lock()

            def on_outcome(job: ClaimedJob, outcome: JobOutcome) -> None:
                if job.kind == "complete" and outcome is JobOutcome.DONE:
                    with lock:
                        finished[0] += 1
                        finished[1] = time.monotonic()
                        if finished[0] >= orders:
                            ended.set()

            # Orders first, then the worker on the backlog: the placing thread would
            # otherwise compete with the worker's threads and be what is measured.
            placing = time.monotonic()
            for n in range(orders):
                app.bus.handle(_order(n))
            placing = time.monotonic() - placing
            worker = Worker(app, concurrency, on_outcome=on_outcome)
            thread = threading.Thread(target=worker.run, name="bench-worker", daemon=True)
            start, cpu = time.monotonic(), time.process_time()
            thread.start()
            deadline = start + timeout
            while not ended.wait(0.5) and time.monotonic() < deadline:
                counts = app.queue.counts()
                if not counts.get("ready") and not counts.get("running") and not worker.in_flight:
                    break  # nothing left to run: some sagas did not complete
            cpu = time.process_time() - cpu
            worker.stop()
            thread.join()
            seconds = (finished[1] or time.monotonic()) - start
            fulfilled = _fulfilled(app)
        finally:
            app.close()
    return RunResult(
        concurrency=concurrency,
        orders=orders,
        fulfilled=fulfilled,
        placing_seconds=round(placing, 3),
        seconds=round(seconds, 3),
        orders_per_second=round(fulfilled / seconds, 2) if seconds > 0 else 0.0,
        cpu_ms_per_order=round(cpu * 1000 / max(1, fulfilled), 1),
    )


def _fulfilled(app: App) -> int:
    """Orders that reached OrderFulfilled, counted from the event store."""
    fulfilled, after = 0, 0
    while True:
        with app.uow() as uow:
            batch = uow.events.read_all(after=after, limit=1000)
        fulfilled += sum(1 for stored in batch if stored.type == "OrderFulfilled")
        if len(batch) < 1000:
            return fulfilled
        after = batch[-1].position


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    env_latency = os.environ.get("FULFILLMENT_CARRIER_LATENCY_MS", "").strip()
    parser.add_argument("--latency-ms", type=float, default=float(env_latency or 200))
    parser.add_argument("--concurrency", type=int, default=50, help="N of the second run")
    parser.add_argument("--orders-c1", type=int, default=20, help="orders of the run at c=1")
    parser.add_argument("--orders-cN", type=int, default=400, help="orders of the run at c=N")
    parser.add_argument("--database-url", default=None, help="server to create scratch DBs on")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per run at most")
    args = parser.parse_args(argv)

    console = Console()
    base = replace(
        Settings.from_env(), carrier_latency_ms=args.latency_ms, carrier_failure_rate=0.0
    )
    backend = make_url(normalize_url(args.database_url or "sqlite://")).get_backend_name()
    console.print(
        f"worker concurrency benchmark: backend {backend}, carrier latency "
        f"{args.latency_ms:g} ms, {os.cpu_count()} cpus",
        highlight=False,
    )
    runs = []
    for concurrency, orders in ((1, args.orders_c1), (args.concurrency, args.orders_cN)):
        with console.status(f"c={concurrency}: {orders} orders ..."):
            runs.append(run_once(base, args.database_url, concurrency, orders, args.timeout))
    one, many = runs
    ratio = many.orders_per_second / one.orders_per_second if one.orders_per_second else 0.0

    table = Table(title="Saga throughput, one worker", title_justify="left")
    columns = ("c", "orders", "done", "placing s", "worker s", "orders/s", "cpu ms/saga")
    for column in columns:
        table.add_column(column, justify="right")
    for r in runs:
        table.add_row(
            *map(str, (r.concurrency, r.orders, r.fulfilled)),
            f"{r.placing_seconds:.2f}",
            f"{r.seconds:.2f}",
            f"{r.orders_per_second:.1f}",
            f"{r.cpu_ms_per_order:.1f}",
        )
    console.print(table)
    style = "green" if ratio >= TARGET_RATIO else "red"
    console.print(
        f"ratio c={many.concurrency} / c=1: [{style}]{ratio:.1f}x[/{style}] "
        f"(target >= {TARGET_RATIO:g}x)",
        highlight=False,
    )
    if args.json:
        result = {
            "benchmark": "worker_concurrency",
            "backend": backend,
            "carrier_latency_ms": args.latency_ms,
            "sqlite_synchronous": base.sqlite_synchronous if backend == "sqlite" else None,
            "runs": [asdict(r) for r in runs],
            "ratio": round(ratio, 2),
            "target_ratio": TARGET_RATIO,
            "target_met": ratio >= TARGET_RATIO,
            "machine": {
                "cpus": os.cpu_count(),
                "load_average_1m": round(os.getloadavg()[0], 2),
                "python": platform.python_version(),
            },
            "measured_at": datetime.now(UTC).isoformat(),
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {args.json}", highlight=False)
    all_fulfilled = all(r.fulfilled == r.orders for r in runs)
    if not all_fulfilled:
        console.print("[red]some sagas did not complete[/red]")
    return 0 if all_fulfilled else 1


if __name__ == "__main__":
    raise SystemExit(main())

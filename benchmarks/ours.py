"""Our product under load: orders through the command bus, `fulfillment worker` processes.

Two modes:

* backlog: place N orders first, then start the workers and time until every order's
  stream holds `OrderFulfilled` or `OrderCancelled` (throughput);
* offered load: start the workers, then place orders at a fixed rate and measure the
  latency from `OrderCreated` to the terminal event (latency at a given load).

All figures come from the events table, so they include every commit the product makes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, select

from benchmarks.common import (
    SKUS,
    STOCK_ON_HAND,
    Database,
    OrderSpec,
    RssSampler,
    RunMetrics,
    latency_summary,
    pace,
)
from fulfillment.adapters import tables as t
from fulfillment.adapters.db import backend_of
from fulfillment.adapters.event_store import visible
from fulfillment.adapters.phi_crypto import MasterKeys
from fulfillment.adapters.projections import Projector
from fulfillment.bootstrap import App, bootstrap
from fulfillment.config import Settings
from fulfillment.domain.values import OrderLine, PrescriptionDetails, ShippingAddress
from fulfillment.service_layer.commands import CreateOrder, SetInventory

TERMINAL_TYPES = ("OrderFulfilled", "OrderCancelled")
#: Events recorded when an order is placed; the first other event starts the drain window.
PLACEMENT_TYPES = ("OrderCreated", "OrderFulfillmentSagaStarted")


@dataclass(frozen=True)
class OursConfig:
    workers: int = 1
    concurrency: int = 8
    carrier_latency_ms: float = 0.0
    timeout_seconds: float = 600.0
    placers: int = 4
    #: "process": workers run with --no-projector beside one `fulfillment projections run`
    #: process; "inline": each worker keeps the read models on a thread of its own;
    #: "none": workers run with --no-projector and nothing else is started (the caller
    #: runs the projector, e.g. the one in a `fulfillment serve` process).
    projector: str = "process"


#: Patient data is sealed, as by default (docs/security.md): one master key per run.
MASTER_KEY = MasterKeys.generate("bench")


def product_env(db: Database, carrier_latency_ms: float) -> dict[str, str]:
    """The worker processes' environment: the README's variables, product defaults
    (patient data encrypted: a master key, unless the caller's environment sets one)."""
    env = dict(os.environ)
    env.setdefault("FULFILLMENT_MASTER_KEY", MASTER_KEY)
    env.update(
        FULFILLMENT_DATABASE_URL=db.url,
        FULFILLMENT_CARRIER_LATENCY_MS=str(carrier_latency_ms),
        FULFILLMENT_CARRIER_FAILURE_RATE="0",
    )
    return env


def setup_app(db: Database, carrier_latency_ms: float = 0.0) -> App:
    """Migrate, seed the stock, and return an App for placing orders in this process."""
    settings = Settings.from_env(product_env(db, carrier_latency_ms))
    app = bootstrap(settings, run_migrations=True, pool_size=8)
    for sku in SKUS:
        app.bus.handle(SetInventory(sku=sku, on_hand=STOCK_ON_HAND))
    return app


def create_order_command(spec: OrderSpec) -> CreateOrder:
    return CreateOrder(
        order_id=spec.order_id,
        customer_id="bench-customer",
        items=(OrderLine(spec.sku, spec.quantity),),
        prescription=PrescriptionDetails("dr-bench", "Ada Lovelace", spec.expires_on),
        shipping_address=ShippingAddress(
            "Ada Lovelace", "1 Analytical Way", "London", "N1 1AA", spec.country
        ),
    )


def place_all(app: App, specs: Sequence[OrderSpec], placers: int) -> float:
    """Place every order (a few threads); returns the placement rate in orders/s."""
    started = time.perf_counter()
    with ThreadPoolExecutor(placers) as pool:
        for _ in pool.map(lambda s: app.bus.handle(create_order_command(s)), specs):
            pass
    return len(specs) / max(1e-9, time.perf_counter() - started)


class WorkerFleet:
    """`fulfillment worker` processes, with their RSS watched and their logs kept."""

    def __init__(self, db: Database, config: OursConfig, rss: RssSampler, log_dir: Path) -> None:
        self.db = db
        self.config = config
        self.rss = rss
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.names: list[str] = []

    def _spawn(self, name: str, args: list[str]) -> None:
        env = product_env(self.db, self.config.carrier_latency_ms)
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 (kept open)
        proc = subprocess.Popen(
            [sys.executable, "-m", "fulfillment.entrypoints.cli", *args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        self.names.append(name)
        self.rss.register(name, proc.pid)

    def start(self) -> None:
        separate = self.config.projector in ("process", "none")
        for n in range(self.config.workers):
            args = ["worker", "--concurrency", str(self.config.concurrency), "--no-migrate"]
            self._spawn(f"worker-{n}", [*args, "--no-projector"] if separate else args)
        if self.config.projector == "process":
            self._spawn("projector", ["projections", "run"])

    def stop(self) -> None:
        for name, proc in zip(self.names, self.procs, strict=True):
            self.rss.unregister(name)
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)


class TerminalCounter:
    """Counts terminal events incrementally by position, reading only the positions a
    follower may read (`event_store.visible`), so none that commits late is missed.

    `after`: count only events after this position (the head before the run, in a store
    that already holds events: benchmarks/large_store.py); 0 reads the whole log."""

    def __init__(self, app: App, after: int = 0) -> None:
        self.app = app
        self.after = after
        self.count = 0

    def poll(self) -> int:
        with self.app.engine.connect() as conn:
            rows = conn.execute(
                select(t.events.c.position, t.events.c.type)
                .where(t.events.c.position > self.after, visible(backend_of(conn)))
                .order_by(t.events.c.position)
            ).all()
            conn.rollback()
        for position, type_ in rows:
            self.after = max(self.after, int(position))
            if type_ in TERMINAL_TYPES:
                self.count += 1
        return self.count


def wait_terminal(app: App, n: int, fleet: WorkerFleet, timeout: float, after: int = 0) -> bool:
    """Whether `n` terminal events (after position `after`) were recorded within `timeout`."""
    counter = TerminalCounter(app, after)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if counter.poll() >= n:
            return True
        if not fleet.alive():
            raise RuntimeError(f"a worker exited early; see {fleet.log_dir}")
        time.sleep(0.2)
    return counter.poll() >= n


def wait_projected(app: App, timeout: float = 120.0) -> float | None:
    """Seconds until the read models have caught up with the log (None: not in time).

    Throughput counts orders whose events are terminal; this shows that the projector
    (a thread in each worker, or a process of its own) kept up rather than fell behind.
    """
    projector = Projector(app.engine, app.mapper)
    started = time.perf_counter()
    while projector.lag().behind > 0:
        if time.perf_counter() - started > timeout:
            return None
        time.sleep(0.05)
    return round(time.perf_counter() - started, 2)


def metrics_from_engine(engine: Engine, *, window_from: str, after: int = 0) -> dict[str, Any]:
    """Latency per order, terminal counts and the window, from the events table.

    window_from="first_step": from the first event after placement (backlog mode);
    window_from="created": from the first OrderCreated (offered-load mode).
    `after`: only the events after this position (the head before the run; 0: all), so a
    store that already holds millions of events is read by the primary key's range.
    """
    e = t.events.c
    run = e.position > after
    with engine.connect() as conn:
        rows = conn.execute(
            select(e.stream_id, e.type, e.recorded_at).where(
                run, e.type.in_(("OrderCreated", *TERMINAL_TYPES))
            )
        ).all()
        total_events = int(
            conn.execute(select(func.count()).select_from(t.events).where(run)).scalar_one()
        )
        first_step = conn.execute(
            select(func.min(e.recorded_at)).where(run, e.type.not_in(PLACEMENT_TYPES))
        ).scalar_one()
        conn.rollback()
    created: dict[str, Any] = {}
    ended: dict[str, tuple[str, Any]] = {}
    for stream_id, type_, recorded_at in rows:
        if type_ == "OrderCreated":
            created[stream_id] = recorded_at
        else:
            ended[stream_id] = (type_, recorded_at)
    latencies = [
        (at - created[s]).total_seconds() * 1000.0 for s, (_, at) in ended.items() if s in created
    ]
    start = first_step if window_from == "first_step" else min(created.values())
    end = max(at for _, at in ended.values()) if ended else start
    return {
        "latencies": latencies,
        "fulfilled": sum(1 for ty, _ in ended.values() if ty == "OrderFulfilled"),
        "cancelled": sum(1 for ty, _ in ended.values() if ty == "OrderCancelled"),
        "seconds": max(1e-9, (end - start).total_seconds()) if start is not None else 0.0,
        "events": total_events,
    }


def _result(
    db: Database,
    config: OursConfig,
    mix: str,
    specs: Sequence[OrderSpec],
    figures: dict[str, Any],
    rss: RssSampler,
    extra: dict[str, Any],
) -> RunMetrics:
    seconds = figures["seconds"]
    terminal = figures["fulfilled"] + figures["cancelled"]
    return RunMetrics(
        system="ours",
        backend=db.backend,
        mix=mix,
        carrier_latency_ms=config.carrier_latency_ms,
        orders=len(specs),
        terminal=terminal,
        fulfilled=figures["fulfilled"],
        cancelled=figures["cancelled"],
        seconds=seconds,
        orders_per_second=terminal / seconds if seconds else 0.0,
        events=figures["events"],
        events_per_second=figures["events"] / seconds if seconds else 0.0,
        latency_ms=latency_summary(figures["latencies"]),
        peak_rss_mib=rss.peaks_mib(),
        config={
            "workers": config.workers,
            "concurrency": config.concurrency,
            "sqlite_synchronous": os.environ.get("FULFILLMENT_SQLITE_SYNCHRONOUS", "FULL"),
            **extra,
        },
    )


def run_backlog(
    db: Database,
    specs: Sequence[OrderSpec],
    mix: str,
    config: OursConfig,
    log_dir: Path,
    after: int = 0,
) -> RunMetrics:
    """Place every order, then drain the backlog with the worker processes.

    `after`: the head position before the run, in a store that already holds events
    (only the events after it are counted); 0 for an empty store."""
    app = setup_app(db, config.carrier_latency_ms)
    try:
        placement_rate = place_all(app, specs, config.placers)
        with RssSampler() as rss:
            fleet = WorkerFleet(db, config, rss, log_dir)
            fleet.start()
            try:
                done = wait_terminal(app, len(specs), fleet, config.timeout_seconds, after)
                projected = wait_projected(app) if done else None
            finally:
                fleet.stop()
        figures = metrics_from_engine(app.engine, window_from="first_step", after=after)
        result = _result(
            db,
            config,
            mix,
            specs,
            figures,
            rss,
            {
                "mode": "backlog",
                "placed_per_second": round(placement_rate, 1),
                "projector": config.projector,
                "projected_after_s": projected,
            },
        )
        if not done:
            result.notes.append(f"timed out after {config.timeout_seconds:g}s")
        return result
    finally:
        app.close()


def run_offered_load(
    db: Database,
    specs: Sequence[OrderSpec],
    mix: str,
    config: OursConfig,
    rate: float,
    log_dir: Path,
) -> RunMetrics:
    """Start the workers, place orders at `rate` per second, measure created -> terminal."""
    app = setup_app(db, config.carrier_latency_ms)
    try:
        with RssSampler() as rss:
            fleet = WorkerFleet(db, config, rss, log_dir)
            fleet.start()
            try:
                time.sleep(2.0)  # let the workers import and connect before the clock starts
                achieved = pace(lambda s: app.bus.handle(create_order_command(s)), specs, rate)
                done = wait_terminal(app, len(specs), fleet, config.timeout_seconds)
            finally:
                fleet.stop()
        figures = metrics_from_engine(app.engine, window_from="created")
        result = _result(
            db,
            config,
            mix,
            specs,
            figures,
            rss,
            {
                "mode": "offered_load",
                "offered_per_second": round(rate, 1),
                "achieved_offered_per_second": round(achieved, 1),
            },
        )
        if not done:
            result.notes.append(f"timed out after {config.timeout_seconds:g}s")
        return result
    finally:
        app.close()

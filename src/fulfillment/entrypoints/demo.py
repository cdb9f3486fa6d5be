"""`fulfillment demo`: the whole flow on an embedded SQLite database, with progress and a summary.

It seeds a small pharmacy catalogue, places a realistic mix of orders over a few seconds
while an in-process worker runs the sagas, follows the event feed to show progress, and
ends with outcomes, latencies and a check of the inventory invariant. Everything it reads
comes from the event store and the repositories, exactly as an operator would see it.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fulfillment import views
from fulfillment.adapters.carrier import SimulatedCarrier
from fulfillment.bootstrap import App, bootstrap
from fulfillment.config import Settings
from fulfillment.entrypoints.demo_mix import CATALOGUE, PlannedOrder, Scenario, plan_orders
from fulfillment.entrypoints.demo_report import (
    FULFILLED,
    EventTally,
    check_inventory,
    print_compensated_example,
    print_outcomes,
    print_timings,
)
from fulfillment.entrypoints.worker import Worker
from fulfillment.service_layer.commands import SetInventory

DEFAULT_DATABASE = Path("fulfillment-demo.db")
# Demo defaults, each overridden by the user's own FULFILLMENT_* variable when set.
DEMO_DEFAULTS = {
    "FULFILLMENT_RETRY_BACKOFF_SECONDS": ("retry_backoff_seconds", 0.05),
    "FULFILLMENT_CARRIER_LATENCY_MS": ("carrier_latency_ms", 20.0),
    "FULFILLMENT_CARRIER_FAILURE_RATE": ("carrier_failure_rate", 0.1),
}


@dataclass(frozen=True)
class DemoOptions:
    """What `fulfillment demo` was asked to do."""

    orders: int = 200
    concurrency: int = 32
    seed: int = 7
    database: Path = DEFAULT_DATABASE
    keep: bool = False
    rate: float = 40.0  # orders placed per second
    timeout: float = 60.0  # seconds to wait for the last sagas after the last order


def demo_settings(
    options: DemoOptions, base: Settings, environ: Mapping[str, str] | None = None
) -> Settings:
    """The user's settings on the demo's own database, with demo-friendly defaults."""
    env = os.environ if environ is None else environ
    overrides: dict[str, object] = {"database_url": f"sqlite:///{options.database}"}
    for variable, (attribute, value) in DEMO_DEFAULTS.items():
        if not env.get(variable, "").strip():
            overrides[attribute] = value
    return replace(base, **overrides)  # type: ignore[arg-type]


def fresh_database(path: Path) -> None:
    """Delete the demo database and its WAL side files, so each run starts empty."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def run_demo(
    options: DemoOptions,
    console: Console,
    base_settings: Settings | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run the demo; the exit status is 0 when every saga ended and the invariant holds."""
    logging.basicConfig(
        level=logging.WARNING, handlers=[RichHandler(console=console)], format="%(message)s"
    )
    settings = demo_settings(
        options,
        base_settings or Settings.from_env(dict(environ) if environ is not None else None),
        environ,
    )
    if not options.keep:
        fresh_database(options.database)
    plans = plan_orders(
        options.orders,
        options.seed,
        settings.carrier_countries,
        datetime.now(UTC).date(),
        uuid.uuid4().hex[:6],
    )
    outage = {p.command.order_id for p in plans if p.scenario is Scenario.CARRIER_OUTAGE}
    carrier = SimulatedCarrier(
        settings.carrier_countries,
        latency_ms=settings.carrier_latency_ms,
        failure_rate=settings.carrier_failure_rate,
        rng=random.Random(options.seed),
        fail_keys=lambda key: key.split(":", 1)[0] in outage,
    )
    app = bootstrap(
        settings, carrier=carrier, run_migrations=True, pool_size=options.concurrency + 4
    )
    try:
        return _run(app, options, plans, console)
    finally:
        app.close()


def _run(app: App, options: DemoOptions, plans: list[PlannedOrder], console: Console) -> int:
    s = app.settings
    console.print(
        f"[bold]Fulfillment demo[/bold] on {options.database} | {len(plans)} orders, "
        f"worker concurrency {options.concurrency}, seed {options.seed}\n"
        f"carrier: latency {s.carrier_latency_ms:g} ms, transient failure rate "
        f"{s.carrier_failure_rate:g}, ships to {','.join(s.carrier_countries)}; "
        f"retry backoff base {s.retry_backoff_seconds:g} s, {s.max_attempts} attempts",
        highlight=False,
    )
    mix = Counter(p.scenario for p in plans)
    console.print("mix: " + ", ".join(f"{n} {sc}" for sc, n in mix.most_common()), highlight=False)
    for product in CATALOGUE:
        app.bus.handle(SetInventory(product.sku, product.stock))

    worker = Worker(app, options.concurrency)
    worker_thread = threading.Thread(target=worker.run, name="demo-worker", daemon=True)
    placer = OrderPlacer(app, plans, options.rate)
    tally = EventTally(app, {p.command.order_id for p in plans})
    started = time.monotonic()
    worker_thread.start()
    placer.start()
    try:
        _follow(app, tally, placer, options, console)
    finally:
        worker.stop()
        worker_thread.join()
        placer.join()
    tally.poll()
    elapsed = time.monotonic() - started
    rejected = placer.rejected
    stuck = len(plans) - len(rejected) - tally.finished
    print_outcomes(tally, len(plans), stuck, rejected, console)
    print_timings(tally, elapsed, options.rate, console)
    invariant_ok = check_inventory(app, tally, console)
    print_compensated_example(app, tally, console)
    console.print(
        f"\nThe database stays at {options.database}: inspect it with "
        f"FULFILLMENT_DATABASE_URL=sqlite:///{options.database} fulfillment ...",
        highlight=False,
    )
    return 0 if invariant_ok and stuck == 0 and not rejected else 1


class OrderPlacer(threading.Thread):
    """Places the planned orders at a steady rate, as customers would over a few seconds."""

    def __init__(self, app: App, plans: list[PlannedOrder], rate: float) -> None:
        super().__init__(name="demo-orders", daemon=True)
        self.app = app
        self.plans = plans
        self.rate = rate
        self.placed = 0
        self.rejected: list[str] = []

    def run(self) -> None:
        start = time.monotonic()
        for i, plan in enumerate(self.plans):
            time.sleep(max(0.0, start + i / self.rate - time.monotonic()))
            try:
                self.app.bus.handle(plan.command)
            except Exception as exc:  # shown in the summary; the demo goes on
                self.rejected.append(f"{plan.command.order_id}: {exc}")
            self.placed += 1


def _follow(
    app: App, tally: EventTally, placer: OrderPlacer, options: DemoOptions, console: Console
) -> None:
    """Show progress until every saga ended, or nothing moves any more."""
    columns = (
        TextColumn("sagas"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    idle_since: float | None = None
    deadline: float | None = None
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("sagas", total=len(tally.order_ids), detail="")
        while True:
            tally.poll()
            counts = tally.counts()
            cancelled = tally.finished - counts[FULFILLED]
            in_flight = len(tally.created_at) - tally.finished
            detail = (
                f"placed {placer.placed} [green]fulfilled {counts[FULFILLED]}[/green] "
                f"[yellow]cancelled {cancelled}[/yellow] in flight {in_flight} "
                f"retried {tally.retries.total()}"
            )
            progress.update(task, completed=tally.finished, detail=detail)
            if placer.is_alive():
                time.sleep(0.2)
                continue
            if tally.finished >= placer.placed - len(placer.rejected):
                return
            now = time.monotonic()
            deadline = deadline or now + options.timeout
            jobs = views.jobs_by_status(app)
            idle_since = (
                (idle_since or now) if not jobs.get("ready") and not jobs.get("running") else None
            )
            if now > deadline or (idle_since is not None and now - idle_since > 2.0):
                return  # the rest is stuck: the summary says so
            time.sleep(0.2)

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
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from fulfillment.adapters.carrier import SimulatedCarrier
from fulfillment.bootstrap import App, bootstrap
from fulfillment.config import Settings
from fulfillment.domain.events import (
    DomainEvent,
    OrderCancelled,
    OrderCreated,
    OrderFulfilled,
    SagaStepAttemptFailed,
)
from fulfillment.domain.status import FailureReason
from fulfillment.domain.values import OrderLine, PrescriptionDetails, ShippingAddress
from fulfillment.entrypoints.worker import Worker
from fulfillment.service_layer.commands import CreateOrder, SetInventory

DEFAULT_DATABASE = Path("fulfillment-demo.db")
FULFILLED = "fulfilled"
STUCK = "stuck (not finished)"
REASONS = (
    FailureReason.PRESCRIPTION_EXPIRED.value,
    FailureReason.INSUFFICIENT_STOCK.value,
    FailureReason.UNSUPPORTED_DESTINATION.value,
    FailureReason.RETRIES_EXHAUSTED.value,
)
# Demo defaults, each overridden by the user's own FULFILLMENT_* variable when set.
DEMO_DEFAULTS = {
    "FULFILLMENT_RETRY_BACKOFF_SECONDS": ("retry_backoff_seconds", 0.05),
    "FULFILLMENT_CARRIER_LATENCY_MS": ("carrier_latency_ms", 20.0),
    "FULFILLMENT_CARRIER_FAILURE_RATE": ("carrier_failure_rate", 0.1),
}


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    stock: int
    popularity: float = 1.0


CATALOGUE: tuple[Product, ...] = (
    Product("AMOX-500-21", "Amoxicillin 500 mg capsules (21)", 400),
    Product("ATOR-20-28", "Atorvastatin 20 mg tablets (28)", 350),
    Product("METF-850-56", "Metformin 850 mg tablets (56)", 320),
    Product("LISI-10-28", "Lisinopril 10 mg tablets (28)", 300),
    Product("LEVO-50-28", "Levothyroxine 50 mcg tablets (28)", 280),
    Product("OMEP-20-28", "Omeprazole 20 mg capsules (28)", 300),
    Product("SERT-50-28", "Sertraline 50 mg tablets (28)", 260),
    Product("AMLO-5-28", "Amlodipine 5 mg tablets (28)", 240),
    Product("SALB-100-200", "Salbutamol 100 mcg inhaler (200 doses)", 180),
    Product("PRED-5-28", "Prednisolone 5 mg tablets (28)", 150),
    # Scarce: a few orders empty the shelf and the next ones run out of stock.
    Product("INSG-100-5", "Insulin glargine 100 U/ml pens (5)", 6, popularity=0.25),
    Product("ADRE-300-2", "Adrenaline 300 mcg auto-injectors (2)", 4, popularity=0.25),
)

CITIES = {
    "US": ("Springfield", "62701"),
    "CA": ("Toronto", "M5V 2T6"),
    "GB": ("Manchester", "M1 1AE"),
    "DE": ("Berlin", "10115"),
    "FR": ("Lyon", "69001"),
    "NL": ("Utrecht", "3511 AA"),
    "BR": ("Sao Paulo", "01310-100"),
    "JP": ("Osaka", "530-0001"),
    "AU": ("Perth", "6000"),
    "MX": ("Guadalajara", "44100"),
}
NAMES = (
    "Ada Lovelace", "Grace Hopper", "Alan Turing", "Katherine Johnson", "Edsger Dijkstra",
    "Barbara Liskov", "Donald Knuth", "Margaret Hamilton", "Tony Hoare", "Frances Allen",
    "John Backus", "Radia Perlman", "Ken Thompson", "Hedy Lamarr", "Niklaus Wirth",
)  # fmt: skip


class Scenario(StrEnum):
    """What a placed order is meant to exercise."""

    REGULAR = "regular"
    EXPIRED_PRESCRIPTION = "expired prescription"
    OVER_STOCK = "more than in stock"
    UNSUPPORTED_DESTINATION = "unsupported destination"
    CARRIER_OUTAGE = "carrier outage"


#: Share of each unhappy scenario in the mix; the rest are regular orders.
MIX = {
    Scenario.EXPIRED_PRESCRIPTION: 0.07,
    Scenario.OVER_STOCK: 0.06,
    Scenario.UNSUPPORTED_DESTINATION: 0.07,
    Scenario.CARRIER_OUTAGE: 0.03,
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


@dataclass(frozen=True)
class PlannedOrder:
    scenario: Scenario
    command: CreateOrder


def plan_orders(
    count: int, seed: int, supported: tuple[str, ...], today: date, run_tag: str
) -> list[PlannedOrder]:
    """A deterministic mix for `seed`: mostly regular orders, with every unhappy path."""
    rng = random.Random(seed)
    scenarios: list[Scenario] = []
    for scenario, share in MIX.items():
        scenarios += [scenario] * (max(1, round(count * share)) if count >= 10 else 0)
    scenarios = scenarios[:count] + [Scenario.REGULAR] * max(0, count - len(scenarios))
    rng.shuffle(scenarios)
    unsupported = [c for c in CITIES if c not in supported][:2] or ["AQ"]
    plentiful = [p for p in CATALOGUE if p.popularity >= 1.0]
    plans = []
    for i, scenario in enumerate(scenarios):
        # Unhappy orders stick to plentiful products, so each fails for its own reason.
        shelf = CATALOGUE if scenario is Scenario.REGULAR else plentiful
        products = rng.choices(shelf, [p.popularity for p in shelf], k=rng.randint(1, 3))
        lines = {p.sku: rng.randint(1, 3) for p in products}
        if scenario is Scenario.OVER_STOCK:
            product = rng.choice(plentiful)
            lines = {product.sku: product.stock + rng.randint(1, 200)}
        country = rng.choice(supported) if supported else unsupported[0]
        if scenario is Scenario.UNSUPPORTED_DESTINATION:
            country = rng.choice(unsupported)
        expires = today + timedelta(days=rng.randint(30, 365))
        if scenario is Scenario.EXPIRED_PRESCRIPTION:
            expires = today - timedelta(days=rng.randint(1, 90))
        name = rng.choice(NAMES)
        city, postal_code = CITIES.get(country, ("Capital City", "00000"))
        command = CreateOrder(
            order_id=f"ord-{run_tag}-{i + 1:04d}",
            customer_id=f"cust-{rng.randint(1000, 9999)}",
            items=tuple(OrderLine(sku, qty) for sku, qty in lines.items()),
            prescription=PrescriptionDetails(f"GMC-{rng.randint(1000000, 9999999)}", name, expires),
            shipping_address=ShippingAddress(
                name, f"{rng.randint(1, 250)} High Street", city, postal_code, country
            ),
        )
        plans.append(PlannedOrder(scenario, command))
    return plans


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


TALLIED = frozenset({"OrderCreated", "OrderFulfilled", "OrderCancelled", "SagaStepAttemptFailed"})


class EventTally:
    """Follows the global event feed and tallies the outcome of the demo's orders."""

    def __init__(self, app: App, order_ids: set[str]) -> None:
        self.app = app
        self.order_ids = order_ids
        self.position = 0
        self.created_at: dict[str, datetime] = {}
        self.ended_at: dict[str, datetime] = {}
        self.outcome: dict[str, str] = {}
        self.items: dict[str, tuple[OrderLine, ...]] = {}
        self.retries: Counter[str] = Counter()

    def poll(self) -> None:
        """Read every event committed since the last poll."""
        while True:
            with self.app.uow() as uow:
                batch = uow.events.read_all(after=self.position, limit=1000)
            for stored in batch:
                self.position = stored.position
                if stored.type in TALLIED:
                    event = self.app.mapper.to_event(
                        stored.type, stored.event_version, stored.data, stored.recorded_at
                    )
                    self._apply(event)
            if len(batch) < 1000:
                return

    def _apply(self, event: DomainEvent) -> None:
        if isinstance(event, SagaStepAttemptFailed) and event.saga_id in self.order_ids:
            self.retries[event.saga_id] += 1
        elif isinstance(event, OrderCreated) and event.order_id in self.order_ids:
            self.created_at[event.order_id] = event.occurred_at
            self.items[event.order_id] = event.items
        elif (
            isinstance(event, OrderFulfilled | OrderCancelled) and event.order_id in self.order_ids
        ):
            self.ended_at[event.order_id] = event.occurred_at
            self.outcome[event.order_id] = (
                FULFILLED if isinstance(event, OrderFulfilled) else event.reason
            )

    @property
    def finished(self) -> int:
        return len(self.outcome)

    def counts(self) -> Counter[str]:
        return Counter(self.outcome.values())


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


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
    _print_outcomes(tally, len(plans), stuck, rejected, console)
    _print_timings(tally, elapsed, options.rate, console)
    invariant_ok = _check_inventory(app, tally, console)
    _print_compensated_example(app, tally, console)
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
            jobs = app.queue.counts()
            idle_since = (
                (idle_since or now) if not jobs.get("ready") and not jobs.get("running") else None
            )
            if now > deadline or (idle_since is not None and now - idle_since > 2.0):
                return  # the rest is stuck: the summary says so
            time.sleep(0.2)


def _print_outcomes(
    tally: EventTally, total: int, stuck: int, rejected: list[str], console: Console
) -> None:
    counts = tally.counts()
    table = Table(title="Outcomes", title_justify="left")
    table.add_column("outcome")
    table.add_column("orders", justify="right")
    table.add_column("share", justify="right")
    rows = [(FULFILLED, counts.pop(FULFILLED, 0), "green")]
    rows += [(f"cancelled: {r}", counts.pop(r, 0), "yellow") for r in REASONS]
    rows += [(f"cancelled: {r}", n, "yellow") for r, n in sorted(counts.items())]
    rows += [(STUCK, stuck, "red" if stuck else "green")]
    if rejected:
        rows += [("rejected when placed", len(rejected), "red")]
    for label, n, style in rows:
        table.add_row(label, str(n), f"{100 * n / max(1, total):.1f}%", style=style)
    table.add_row("total", str(total), "", style="bold")
    console.print(table)
    for line in rejected[:5]:
        console.print(f"[red]rejected[/red] {line}", highlight=False)


def _print_timings(tally: EventTally, elapsed: float, rate: float, console: Console) -> None:
    latencies = [
        (tally.ended_at[o] - tally.created_at[o]).total_seconds() * 1000
        for o in tally.ended_at
        if o in tally.created_at
    ]
    span = (
        (max(tally.ended_at.values()) - min(tally.created_at.values())).total_seconds()
        if tally.ended_at and tally.created_at
        else 0.0
    )
    table = Table(title="Timings", title_justify="left", show_header=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    retried = sum(1 for n in tally.retries.values() if n)
    table.add_row(
        "transient carrier faults retried", f"{tally.retries.total()} in {retried} orders"
    )
    table.add_row(
        "throughput",
        f"{tally.finished / span:.1f} orders/s (placed at {rate:g}/s)" if span > 0 else "n/a",
    )
    for p in (50, 95, 99):
        table.add_row(f"latency p{p} (placed -> ended)", f"{percentile(latencies, p):.0f} ms")
    table.add_row("wall time", f"{elapsed:.1f} s")
    console.print(table)


def _check_inventory(app: App, tally: EventTally, console: Console) -> bool:
    """0 <= reserved <= on_hand; nothing left reserved; on_hand = seeded - fulfilled."""
    shipped: Counter[str] = Counter()
    for order_id, outcome in tally.outcome.items():
        if outcome == FULFILLED:
            for line in tally.items.get(order_id, ()):
                shipped[line.sku] += line.quantity
    table = Table(title="Inventory", title_justify="left")
    wide = console.width >= 100  # product names only where they fit
    table.add_column("sku", no_wrap=True)
    if wide:
        table.add_column("product", no_wrap=True, overflow="ellipsis", max_width=40)
    for column in ("seeded", "fulfilled", "on_hand", "reserved", "check"):
        table.add_column(column, justify="right", no_wrap=True)
    ok = True
    with app.uow() as uow:
        levels = {p.sku: uow.inventory.get(p.sku) for p in CATALOGUE}
    for product in CATALOGUE:
        level = levels[product.sku]
        on_hand, reserved = (level.on_hand, level.reserved) if level else (-1, -1)
        good = 0 <= reserved <= on_hand and reserved == 0
        good = good and on_hand == product.stock - shipped[product.sku]
        ok = ok and good
        table.add_row(
            product.sku,
            *([product.name] if wide else []),
            str(product.stock),
            str(shipped[product.sku]),
            str(on_hand),
            str(reserved),
            "[green]ok[/green]" if good else "[red]FAIL[/red]",
        )
    console.print(table)
    if ok:
        console.print(
            "[bold green]inventory invariant holds:[/bold green] for every SKU "
            "0 <= reserved <= on_hand, nothing left reserved, on_hand = seeded - fulfilled",
            highlight=False,
        )
    else:
        console.print(
            "[bold red]inventory invariant VIOLATED[/bold red]: see the FAIL rows above",
            highlight=False,
        )
    return ok


def _print_compensated_example(app: App, tally: EventTally, console: Console) -> None:
    """The history of one cancelled order that had something to undo: LIFO compensation."""
    preference = (
        FailureReason.RETRIES_EXHAUSTED.value,
        FailureReason.UNSUPPORTED_DESTINATION.value,
        FailureReason.INSUFFICIENT_STOCK.value,
    )
    for reason in preference:
        order_id = next((o for o, r in sorted(tally.outcome.items()) if r == reason), None)
        if order_id is not None:
            break
    else:
        return
    with app.uow() as uow:
        history = uow.events.read_streams([f"order-{order_id}", f"saga-{order_id}"])
    console.print(
        f"\n[bold]Example: order {order_id} was cancelled ({reason}).[/bold] "
        "Its events in commit order; the steps that had succeeded are undone last-in-first-out:",
        highlight=False,
    )
    undo = {"SagaCompensationStarted", "ShipmentCancelled", "InventoryReleased"}
    undo |= {"PrescriptionCancelled", "OrderCancelled"}
    for n, stored in enumerate(history, start=1):
        style = "yellow" if stored.type in undo else "cyan"
        note = ""
        if stored.type == "SagaStepAttemptFailed":
            note = f"  (attempt {stored.data.get('attempt')}: {stored.data.get('error')})"
        elif "reason" in stored.data:
            note = f"  (reason: {stored.data['reason']})"
        console.print(
            f"  {n:>2}. [{style}]{stored.type}[/{style}]  [dim]{stored.stream_id}[/dim]{note}",
            highlight=False,
        )

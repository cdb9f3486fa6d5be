"""`fulfillment demo`: the whole pharmacy lifecycle on an embedded SQLite database, with
progress and a summary.

It seeds a small pharmacy catalogue in lots with expiry dates, places a realistic mix of
orders over a few seconds while an in-process worker runs the sagas, and plays everyone
else an order meets: a pharmacist who verifies the orders with a controlled substance
(through the projection, as the API's `GET /orders?status=awaiting_verification`
would), customers who change their mind, and the simulated carrier, whose signed
tracking updates go through the API's own `POST /webhooks/carrier`: the pickup lets each
saga finish, the delivery follows. It follows the event feed to show progress, and ends
with outcomes, decisions, latencies and a check of the inventory invariant, by SKU and
by lot. Everything it reads comes from the event store, the projection and the
repositories, exactly as an operator would see it.
"""

from __future__ import annotations

import contextlib
import heapq
import importlib.util
import logging
import math
import os
import random
import secrets
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fulfillment import views
from fulfillment.adapters.carrier import SimulatedCarrier
from fulfillment.adapters.projections import ProjectorThread
from fulfillment.adapters.tracking_simulator import MIN_STEP_SECONDS
from fulfillment.bootstrap import App, bootstrap
from fulfillment.config import Settings
from fulfillment.domain.saga import SignalNotExpected, TooLateToCancel
from fulfillment.domain.status import CancellationReason, OrderStatus, VerificationStatus
from fulfillment.entrypoints.demo_mix import (
    CATALOGUE,
    PlannedOrder,
    Scenario,
    SeededLot,
    plan_orders,
    seed_lots,
)
from fulfillment.entrypoints.demo_report import (
    Cancellations,
    EventTally,
    check_inventory,
    fefo_check,
    print_compensated_example,
    print_decisions,
    print_fefo,
    print_outcomes,
    print_timings,
)
from fulfillment.entrypoints.worker import Worker
from fulfillment.service_layer.commands import CancelSaga, SetInventory, SetLot, SignalSaga
from fulfillment.service_layer.order_saga import Signal

log = logging.getLogger("fulfillment.demo")

DEFAULT_DATABASE = Path("fulfillment-demo.db")
# Demo defaults, each overridden by the user's own FULFILLMENT_* variable when set; a
# callable is called once per run (a fresh webhook secret each time).
DEMO_DEFAULTS: dict[str, tuple[str, object]] = {
    "FULFILLMENT_RETRY_BACKOFF_SECONDS": ("retry_backoff_seconds", 0.05),
    "FULFILLMENT_CARRIER_LATENCY_MS": ("carrier_latency_ms", 20.0),
    "FULFILLMENT_CARRIER_FAILURE_RATE": ("carrier_failure_rate", 0.1),
    "FULFILLMENT_CARRIER_PICKUP_DELAY_MS": ("carrier_pickup_delay_ms", 300.0),
    "FULFILLMENT_CARRIER_WEBHOOK_SECRET": ("carrier_webhook_secret", lambda: secrets.token_hex(16)),
}
PHARMACIST = "demo-pharmacist"
PHARMACIST_ID = "ph-demo"
CUSTOMER = "demo-customer"


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


def tracking_available() -> bool:
    """Whether the in-process webhook client can run (FastAPI's TestClient needs httpx)."""
    return importlib.util.find_spec("httpx") is not None


def demo_settings(
    options: DemoOptions,
    base: Settings,
    environ: Mapping[str, str] | None = None,
    *,
    tracking: bool = True,
) -> Settings:
    """The user's settings on the demo's own database, with demo-friendly defaults.
    Without `tracking` (no webhook client), the carrier picks parcels up as it books."""
    env = os.environ if environ is None else environ
    overrides: dict[str, object] = {"database_url": f"sqlite:///{options.database}"}
    for variable, (attribute, value) in DEMO_DEFAULTS.items():
        if not env.get(variable, "").strip():
            overrides[attribute] = value() if callable(value) else value
    if not tracking:
        overrides["carrier_pickup_delay_ms"] = 0.0
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
    """Run the demo; the exit status is 0 when every saga ended, the inventory invariant
    holds (by SKU and by lot) and every reservation took its lots first expiry first."""
    logging.basicConfig(
        level=logging.WARNING, handlers=[RichHandler(console=console)], format="%(message)s"
    )
    tracking = tracking_available()
    settings = demo_settings(
        options,
        base_settings or Settings.from_env(dict(environ) if environ is not None else None),
        environ,
        tracking=tracking,
    )
    if not options.keep:
        fresh_database(options.database)
    today = datetime.now(UTC).date()
    plans = plan_orders(
        options.orders, options.seed, settings.carrier_countries, today, uuid.uuid4().hex[:6]
    )
    outage = {p.command.order_id for p in plans if p.scenario is Scenario.CARRIER_OUTAGE}
    carrier = SimulatedCarrier(
        settings.carrier_countries,
        latency_ms=settings.carrier_latency_ms,
        failure_rate=settings.carrier_failure_rate,
        rng=random.Random(options.seed),
        fail_keys=lambda key: key.split(":", 1)[0] in outage,
        pickup_delay_ms=settings.carrier_pickup_delay_ms,
    )
    # The worker's job threads, and the projector, pharmacist, customers and carrier.
    app = bootstrap(
        settings, carrier=carrier, run_migrations=True, pool_size=options.concurrency + 8
    )
    try:
        if not tracking:
            console.print(
                "[yellow]note:[/yellow] httpx is not installed, so the carrier's tracking "
                "webhooks are off: parcels count as picked up when booked and are never "
                "delivered (pip install httpx to see the deliveries)",
                highlight=False,
            )
        return _run(app, options, plans, console, today)
    finally:
        app.close()


def seed_inventory(app: App, today: date) -> dict[str, tuple[SeededLot, ...]]:
    """Each product's DEA schedule and its lots (no units without an expiry date)."""
    seeded = {}
    for product in CATALOGUE:
        app.bus.handle(SetInventory(product.sku, 0, dea_schedule=product.dea_schedule))
        seeded[product.sku] = seed_lots(product, today)
        for lot in seeded[product.sku]:
            app.bus.handle(SetLot(lot.sku, lot.lot, lot.on_hand, lot.expires_on))
    return seeded


def _run(
    app: App, options: DemoOptions, plans: list[PlannedOrder], console: Console, today: date
) -> int:
    s = app.settings
    pickup = (
        f"picks parcels up {s.carrier_pickup_delay_ms:g} ms after booking (signed webhooks)"
        if s.carrier_pickup_delay_ms > 0
        else "picks parcels up as it books them"
    )
    console.print(
        f"[bold]Fulfillment demo[/bold] on {options.database}: {len(plans)} orders, "
        f"concurrency {options.concurrency}, seed {options.seed}\n"
        f"carrier: {s.carrier_latency_ms:g} ms latency, {s.carrier_failure_rate:.0%} "
        f"transient faults, ships to {','.join(s.carrier_countries)}\n"
        f"         {pickup}\n"
        f"retries: backoff base {s.retry_backoff_seconds:g} s, {s.max_attempts} attempts\n"
        f"pharmacist: verifies {s.verification_required_for} orders\n"
        f"lots: first expiry first out, {s.min_shelf_life_days} days of shelf life at least",
        highlight=False,
    )
    mix = Counter(p.scenario for p in plans)
    console.print("mix: " + ", ".join(f"{n} {sc}" for sc, n in mix.most_common()), highlight=False)
    seeded = seed_inventory(app, today)

    order_ids = {p.command.order_id for p in plans}
    controlled = [p.command.order_id for p in plans if p.scenario is Scenario.CONTROLLED]
    pharmacist = Pharmacist(
        app,
        order_ids,
        reject={p.command.order_id for p in plans if p.scenario is Scenario.PHARMACIST_REJECTS},
        clarify=set(controlled[:1]),
    )
    worker = Worker(app, options.concurrency)
    worker_thread = threading.Thread(target=worker.run, name="demo-worker", daemon=True)
    projector = ProjectorThread(app, poll_interval=0.1)
    placer = OrderPlacer(app, plans, options.rate)
    tally = EventTally(app, order_ids)
    started = time.monotonic()
    with ExitStack() as running:
        projector.start()
        running.callback(projector.stop)
        pharmacist.start()
        running.callback(pharmacist.stop)
        tracking = _start_tracking(app, running)
        worker_thread.start()
        running.callback(worker_thread.join)
        running.callback(worker.stop)
        placer.start()
        running.callback(placer.join)
        _follow(app, tally, placer, options, console, delivering=tracking)
    tally.poll()
    projector.projector.catch_up(timeout=30)  # `fulfillment orders list` is fresh
    elapsed = time.monotonic() - started
    rejected = placer.rejected
    stuck = len(plans) - len(rejected) - tally.finished
    print_outcomes(tally, len(plans), stuck, rejected, console)
    print_decisions(tally, placer.cancellations(), console)
    print_timings(tally, elapsed, options.rate, console)
    invariant_ok = check_inventory(app, tally, seeded, console)
    fefo = fefo_check(tally, seeded, today, s.min_shelf_life_days)
    print_fefo(fefo, s.min_shelf_life_days, console)
    print_compensated_example(app, tally, console)
    url = f"FULFILLMENT_DATABASE_URL=sqlite:///{options.database}"
    console.print(
        f"\nThe database stays at {options.database}. Look at the demo's orders and lots "
        f"with:\n  {url} fulfillment orders list\n"
        f"  {url} fulfillment inventory show {CATALOGUE[0].sku}",
        highlight=False,
        soft_wrap=True,
    )
    return 0 if invariant_ok and fefo.ok and stuck == 0 and not rejected else 1


def _start_tracking(app: App, running: ExitStack) -> bool:
    """The simulated carrier's tracking updates, posted to the API's own signed webhook
    in-process (no server, no lifespan services); stopped when `running` closes. False
    when they are off (no webhook secret, or no httpx)."""
    if app.settings.carrier_webhook_secret is None or not tracking_available():
        return False
    with warnings.catch_warnings():  # starlette prefers httpx2; httpx works as well
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient

    from fulfillment.entrypoints.api import create_api
    from fulfillment.entrypoints.simulated_tracking import WEBHOOK_PATH, simulator_for

    # A loopback Host: without API keys the API refuses any other (DNS rebinding).
    client = running.enter_context(TestClient(create_api(app), base_url="http://127.0.0.1"))

    def post(body: bytes, headers: dict[str, str]) -> int:
        status: int = client.post(WEBHOOK_PATH, content=body, headers=headers).status_code
        return status

    simulator = simulator_for(app, post)
    if simulator is None:
        return False
    simulator.start(interval=0.1)
    running.callback(simulator.stop)
    return True


class OrderPlacer(threading.Thread):
    """Places the planned orders at a steady rate, as customers would over a few seconds,
    and sends the cancellations of the customers who change their mind when they are due."""

    def __init__(self, app: App, plans: list[PlannedOrder], rate: float) -> None:
        super().__init__(name="demo-orders", daemon=True)
        self.app = app
        self.plans = plans
        self.rate = rate
        self.placed = 0
        self.rejected: list[str] = []
        self.cancel_requests = 0
        self.too_late = 0
        self.cancel_errors: list[str] = []
        self._due: list[tuple[float, str]] = []  # (when, order id): cancellations to send

    def run(self) -> None:
        start = time.monotonic()
        for i, plan in enumerate(self.plans):
            self._send_cancellations(until=start + i / self.rate)
            time.sleep(max(0.0, start + i / self.rate - time.monotonic()))
            order_id = plan.command.order_id
            try:
                self.app.bus.handle(plan.command)
            except Exception as exc:  # shown in the summary; the demo goes on
                self.rejected.append(f"{order_id}: {exc}")
            else:
                if plan.cancel_after is not None:
                    heapq.heappush(self._due, (time.monotonic() + plan.cancel_after, order_id))
            self.placed += 1
        self._send_cancellations(until=math.inf)

    def _send_cancellations(self, until: float) -> None:
        while self._due and self._due[0][0] <= until:
            when, order_id = heapq.heappop(self._due)
            time.sleep(max(0.0, when - time.monotonic()))
            self.cancel_requests += 1
            command = CancelSaga(
                order_id, CancellationReason.CUSTOMER_REQUEST.value, "changed my mind", CUSTOMER
            )
            try:
                self.app.bus.handle(command, sender=CUSTOMER)
            except TooLateToCancel:
                self.too_late += 1
            except Exception as exc:  # shown in the summary; the demo goes on
                self.cancel_errors.append(f"{order_id}: {exc}")

    def cancellations(self) -> Cancellations:
        return Cancellations(self.cancel_requests, self.too_late, tuple(self.cancel_errors))


class Pharmacist(threading.Thread):
    """Polls the orders awaiting verification (the projection, as the API lists them)
    and decides each through the bus as the `pharmacist` role: rejects the orders in
    `reject`, asks for a clarification of those in `clarify` and approves them on a
    later poll, approves the others."""

    def __init__(
        self,
        app: App,
        order_ids: set[str],
        *,
        reject: set[str],
        clarify: set[str],
        interval: float = 0.1,
    ) -> None:
        super().__init__(name="demo-pharmacist", daemon=True)
        self.app = app
        self.order_ids = order_ids
        self.reject = reject
        self.clarify = clarify
        self.interval = interval
        self.asked: set[str] = set()
        self.decided: set[str] = set()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            try:
                self.poll()
            except Exception:
                log.exception("the demo's pharmacist could not review the orders")

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(5)

    def poll(self) -> None:
        cursor = None
        while True:
            orders, cursor = views.list_orders(
                self.app, OrderStatus.AWAITING_VERIFICATION.value, 100, cursor
            )
            for order in orders:
                self._review(order)
            if cursor is None or not orders:
                return

    def _review(self, order: Mapping[str, Any]) -> None:
        order_id = order["order_id"]
        if order_id not in self.order_ids or order_id in self.decided:
            return
        payload: dict[str, Any] = {"pharmacist_id": PHARMACIST_ID}
        if order_id in self.asked:
            if order["verification"]["status"] != VerificationStatus.CLARIFICATION_REQUESTED:
                return  # the projection does not show the question yet
            signal = Signal.APPROVE
            payload["note"] = "the prescriber confirmed the dose"
        elif order_id in self.reject:
            signal = Signal.REJECT
            payload["reason"] = "dose above the maximum for this patient"
        elif order_id in self.clarify:
            signal = Signal.REQUEST_CLARIFICATION
            payload["note"] = "asked the prescriber to confirm the dose"
        else:
            signal = Signal.APPROVE
        command = SignalSaga(order_id, signal, payload, PHARMACIST, role="pharmacist")
        # SignalNotExpected: decided already (the projection lags), or cancelled.
        with contextlib.suppress(SignalNotExpected):
            self.app.bus.handle(command, sender=PHARMACIST)
        (self.asked if signal is Signal.REQUEST_CLARIFICATION else self.decided).add(order_id)


def _follow(
    app: App,
    tally: EventTally,
    placer: OrderPlacer,
    options: DemoOptions,
    console: Console,
    *,
    delivering: bool,
) -> None:
    """Show progress until every saga ended (or nothing moves any more), then, while
    the carrier delivers, until every fulfilled order's parcel is delivered (bounded)."""
    columns = (
        TextColumn("{task.description:<9}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[detail]}"),
    )
    settings = app.settings
    # Nothing new in the log for this long (longer than the longest retry backoff), and
    # no job running: the rest is stuck.
    quiet_seconds = 3.0 + settings.retry_backoff_seconds * 2**settings.max_attempts
    step = max(MIN_STEP_SECONDS, settings.carrier_pickup_delay_ms / 1000.0)
    deliver_seconds = 3.0 + 2 * step  # after the pickup: out for delivery, delivered
    position, moved_at = tally.position, time.monotonic()
    deadline: float | None = None
    delivery_deadline: float | None = None
    with Progress(*columns, console=console) as progress:
        sagas = progress.add_task("sagas", total=len(tally.order_ids), detail="")
        parcels = progress.add_task("delivered", total=0, detail="", visible=delivering)
        while True:
            tally.poll()
            now = time.monotonic()
            if tally.position != position:
                position, moved_at = tally.position, now
            fulfilled = len(tally.fulfilled())
            cancelled = tally.finished - fulfilled
            in_flight = len(tally.created_at) - tally.finished
            detail = (
                f"placed {placer.placed} [yellow]cancelled {cancelled}[/yellow] "
                f"in flight {in_flight}"
            )
            progress.update(sagas, completed=tally.finished, detail=detail)
            progress.update(parcels, total=fulfilled, completed=fulfilled - tally.undelivered)
            if placer.is_alive():
                time.sleep(0.2)
                continue
            if tally.finished >= placer.placed - len(placer.rejected):
                if not delivering or tally.undelivered == 0:
                    return
                delivery_deadline = delivery_deadline or now + deliver_seconds
                if now > delivery_deadline:
                    return  # the summary counts the parcels not delivered yet
            else:
                deadline = deadline or now + options.timeout
                if now > deadline or (now - moved_at > quiet_seconds and _idle(app)):
                    return  # the rest is stuck: the summary says so
            time.sleep(0.2)


def _idle(app: App) -> bool:
    """No job running (due ones are claimed at once; the waits' timers are due much
    later, and a retry's backoff is shorter than the quiet period)."""
    return not views.jobs_by_status(app).get("running")

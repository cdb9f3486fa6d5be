"""Peer (b): the same saga with the `eventsourcing` library's aggregates and process applications.

The saga is choreographed by four process applications in a ring, the library's own idiom
(each one follows the notification logs of the others and records its new events together
with a tracking record of the event it processed, in one transaction):

    Orders -> Prescriptions -> Inventory -> Shipping -> Inventory -> Prescriptions -> Orders

* Orders: `place_order` creates an Order; it is fulfilled when its prescription is
  dispensed, cancelled when its prescription is cancelled.
* Prescriptions: one Prescription per order (step 1); dispensed on completion, cancelled
  by compensation.
* Inventory: per-SKU Stock aggregates with a conditional reservation, and one Reservation
  per order (step 2); consumed when the shipment is initiated, released when it fails.
* Shipping: calls the simulated carrier (step 3): a Shipment, or a ShipmentFailure for an
  unsupported destination, which starts the compensations in reverse order (release the
  reservation, cancel the prescription, cancel the order).

Seven commits per order on either path. Persistence: the library's SQLite module (one file
per application in the same directory: its SQLite recorder has fixed table names; WAL,
SQLite's default synchronous=FULL, like the product's default) or its PostgreSQL module
(tables prefixed by application name in the same database). The library ships no MariaDB
module: on MariaDB this peer reports "unsupported". Each application processes its
events in order in one thread (the library's MultiThreadedRunner): that is its concurrency.

    .venv/bin/python -m benchmarks.peers.eventsourcing_saga --url sqlite:////tmp/es/x.db
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.application import ProcessingEvent
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, event
from eventsourcing.system import MultiThreadedRunner, ProcessApplication, RecordingEvent, System
from sqlalchemy.engine import make_url

from benchmarks.common import (
    SKUS,
    STOCK_ON_HAND,
    OrderSpec,
    RunMetrics,
    latency_summary,
    pace,
    self_peak_rss_mib,
)
from benchmarks.peers.common import (
    UnsupportedDestination,
    backend_of_url,
    carrier_book,
    emit,
    parser,
    specs_for,
)

CARRIER = {"latency_ms": 0.0}


def _id(kind: str, key: str) -> UUID:
    return uuid5(NAMESPACE_URL, f"/{kind}/{key}")


# --- aggregates ----------------------------------------------------------------------


class Order(Aggregate):
    @staticmethod
    def create_id(order_id: str, **_: Any) -> UUID:
        return _id("order", order_id)

    @event("Created")
    def __init__(
        self, order_id: str, sku: str, quantity: int, country: str, expires_on: str
    ) -> None:
        self.order_id = order_id
        self.sku = sku
        self.quantity = quantity
        self.country = country
        self.expires_on = expires_on
        self.status = "pending"

    @event("Fulfilled")
    def fulfil(self) -> None:
        self.status = "fulfilled"

    @event("Cancelled")
    def cancel(self) -> None:
        self.status = "cancelled"


class Prescription(Aggregate):
    @staticmethod
    def create_id(order_id: str, **_: Any) -> UUID:
        return _id("prescription", order_id)

    @event("Created")
    def __init__(self, order_id: str, sku: str, quantity: int, country: str) -> None:
        self.order_id = order_id
        self.status = "active"

    # Later events carry the order id, so followers need not look the prescription up.
    class Dispensed(Aggregate.Event):
        order_id: str

    class Cancelled(Aggregate.Event):
        order_id: str

    @event(Dispensed)
    def dispense(self, order_id: str) -> None:
        self.status = "dispensed"

    @event(Cancelled)
    def cancel(self, order_id: str) -> None:
        self.status = "cancelled"


class Stock(Aggregate):
    @staticmethod
    def create_id(sku: str, **_: Any) -> UUID:
        return _id("stock", sku)

    @event("Created")
    def __init__(self, sku: str, on_hand: int) -> None:
        self.sku = sku
        self.on_hand = on_hand
        self.reserved = 0

    def can_reserve(self, quantity: int) -> bool:
        return self.on_hand - self.reserved >= quantity

    @event("Reserved")
    def reserve(self, order_id: str, quantity: int) -> None:
        self.reserved += quantity

    @event("Consumed")
    def consume(self, order_id: str, quantity: int) -> None:
        self.reserved -= quantity
        self.on_hand -= quantity

    @event("Released")
    def release(self, order_id: str, quantity: int) -> None:
        self.reserved -= quantity


class Reservation(Aggregate):
    @staticmethod
    def create_id(order_id: str, **_: Any) -> UUID:
        return _id("reservation", order_id)

    @event("Created")
    def __init__(
        self, order_id: str, sku: str, quantity: int, country: str, reserved: bool
    ) -> None:
        self.order_id = order_id
        self.sku = sku
        self.quantity = quantity
        self.status = "reserved" if reserved else "rejected"

    class Consumed(Aggregate.Event):
        order_id: str

    class Released(Aggregate.Event):
        order_id: str

    @event(Consumed)
    def consume(self, order_id: str) -> None:
        self.status = "consumed"

    @event(Released)
    def release(self, order_id: str) -> None:
        self.status = "released"


class Shipment(Aggregate):
    @staticmethod
    def create_id(order_id: str, **_: Any) -> UUID:
        return _id("shipment", order_id)

    @event("Created")
    def __init__(self, order_id: str, tracking_number: str) -> None:
        self.order_id = order_id
        self.tracking_number = tracking_number


class ShipmentFailure(Aggregate):
    @staticmethod
    def create_id(order_id: str, **_: Any) -> UUID:
        return _id("shipment-failure", order_id)

    @event("Created")
    def __init__(self, order_id: str, reason: str) -> None:
        self.order_id = order_id
        self.reason = reason


# --- process applications ------------------------------------------------------------


class Orders(ProcessApplication[UUID]):
    def place_order(self, spec: OrderSpec) -> None:
        self.save(
            Order(spec.order_id, spec.sku, spec.quantity, spec.country, spec.expires_on.isoformat())
        )

    @singledispatchmethod
    def policy(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        """Other events: nothing to do."""

    @policy.register
    def _(
        self, domain_event: Prescription.Dispensed, processing_event: ProcessingEvent[UUID]
    ) -> None:
        order: Order = self.repository.get(Order.create_id(domain_event.order_id))
        order.fulfil()
        processing_event.collect_events(order)

    @policy.register
    def _(
        self, domain_event: Prescription.Cancelled, processing_event: ProcessingEvent[UUID]
    ) -> None:
        order: Order = self.repository.get(Order.create_id(domain_event.order_id))
        order.cancel()
        processing_event.collect_events(order)


class Prescriptions(ProcessApplication[UUID]):
    @singledispatchmethod
    def policy(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        """Other events: nothing to do."""

    @policy.register
    def _(self, domain_event: Order.Created, processing_event: ProcessingEvent[UUID]) -> None:
        e = domain_event
        prescription = Prescription(e.order_id, e.sku, e.quantity, e.country)  # type: ignore[attr-defined]
        processing_event.collect_events(prescription)

    @policy.register
    def _(self, domain_event: Reservation.Created, processing_event: ProcessingEvent[UUID]) -> None:
        if not domain_event.reserved:  # type: ignore[attr-defined]
            self._move(domain_event.order_id, "cancel", processing_event)  # type: ignore[attr-defined]

    @policy.register
    def _(
        self, domain_event: Reservation.Consumed, processing_event: ProcessingEvent[UUID]
    ) -> None:
        self._move(domain_event.order_id, "dispense", processing_event)

    @policy.register
    def _(
        self, domain_event: Reservation.Released, processing_event: ProcessingEvent[UUID]
    ) -> None:
        self._move(domain_event.order_id, "cancel", processing_event)

    def _move(self, order_id: str, action: str, processing_event: ProcessingEvent[UUID]) -> None:
        prescription: Prescription = self.repository.get(Prescription.create_id(order_id))
        if prescription.status == "active":
            getattr(prescription, action)(order_id)
            processing_event.collect_events(prescription)


class Inventory(ProcessApplication[UUID]):
    def seed(self) -> None:
        self.save(*[Stock(sku, STOCK_ON_HAND) for sku in SKUS])

    @singledispatchmethod
    def policy(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        """Other events: nothing to do."""

    @policy.register
    def _(
        self, domain_event: Prescription.Created, processing_event: ProcessingEvent[UUID]
    ) -> None:
        e: Any = domain_event
        stock: Stock = self.repository.get(Stock.create_id(e.sku))
        reserved = stock.can_reserve(e.quantity)
        if reserved:
            stock.reserve(e.order_id, e.quantity)
            processing_event.collect_events(stock)
        reservation = Reservation(e.order_id, e.sku, e.quantity, e.country, reserved)
        processing_event.collect_events(reservation)

    @policy.register
    def _(self, domain_event: Shipment.Created, processing_event: ProcessingEvent[UUID]) -> None:
        self._settle(domain_event.order_id, "consume", processing_event)  # type: ignore[attr-defined]

    @policy.register
    def _(
        self, domain_event: ShipmentFailure.Created, processing_event: ProcessingEvent[UUID]
    ) -> None:
        self._settle(domain_event.order_id, "release", processing_event)  # type: ignore[attr-defined]

    def _settle(self, order_id: str, action: str, processing_event: ProcessingEvent[UUID]) -> None:
        reservation: Reservation = self.repository.get(Reservation.create_id(order_id))
        if reservation.status != "reserved":
            return
        stock: Stock = self.repository.get(Stock.create_id(reservation.sku))
        getattr(reservation, action)(order_id)
        getattr(stock, action)(order_id, reservation.quantity)
        processing_event.collect_events(reservation, stock)


class Shipping(ProcessApplication[UUID]):
    @singledispatchmethod
    def policy(self, domain_event: Any, processing_event: ProcessingEvent[UUID]) -> None:
        """Other events: nothing to do."""

    @policy.register
    def _(self, domain_event: Reservation.Created, processing_event: ProcessingEvent[UUID]) -> None:
        e: Any = domain_event
        if not e.reserved:
            return
        try:
            tracking = carrier_book(e.country, CARRIER["latency_ms"])
        except UnsupportedDestination as exc:
            processing_event.collect_events(ShipmentFailure(e.order_id, str(exc)))
            return
        processing_event.collect_events(Shipment(e.order_id, tracking))


SYSTEM = System(
    pipes=[[Orders, Prescriptions, Inventory, Shipping, Inventory, Prescriptions, Orders]]
)
APPS = (Orders, Prescriptions, Inventory, Shipping)


# --- running -------------------------------------------------------------------------


def persistence_env(url: str) -> dict[str, str]:
    backend = backend_of_url(url)
    parsed = make_url(url)
    if backend == "sqlite":
        directory = os.path.dirname(parsed.database or "") or "."
        env = {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_LOCK_TIMEOUT": "60"}
        for app in APPS:
            env[f"{app.name.upper()}_SQLITE_DBNAME"] = os.path.join(
                directory, f"es_{app.name.lower()}.db"
            )
        return env
    if backend == "postgresql":
        return {
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": parsed.database or "",
            "POSTGRES_HOST": parsed.host or "127.0.0.1",
            "POSTGRES_PORT": str(parsed.port or 5432),
            "POSTGRES_USER": parsed.username or "postgres",
            "POSTGRES_PASSWORD": parsed.password or "",
        }
    raise SystemExit(f"the eventsourcing library has no persistence module for {backend}")


def _prompt(runner: MultiThreadedRunner[UUID], leader: str, follower: str) -> None:
    """Make a follower pull what its leader recorded before the runner started."""
    runner.threads[follower].receive_recording_event(RecordingEvent(leader, [], None))


def run(args: argparse.Namespace) -> RunMetrics:
    CARRIER["latency_ms"] = args.carrier_latency_ms
    env = persistence_env(args.url) | {"AGGREGATE_CACHE_MAXSIZE": "100000"}
    specs = specs_for(args)
    runner: MultiThreadedRunner[UUID] = MultiThreadedRunner(SYSTEM, env=env)
    orders = runner.get(Orders)
    runner.get(Inventory).seed()
    placed: dict[str, float] = {}

    def place(spec: OrderSpec) -> None:
        orders.place_order(spec)
        placed[spec.order_id] = time.time()

    if args.rate:
        runner.start()
        time.sleep(0.5)
        pace(place, specs, args.rate, threads=1)
    else:
        started = time.perf_counter()
        for spec in specs:
            place(spec)
        placed_rate = len(specs) / (time.perf_counter() - started)
        runner.start()
        for leader, follower in SYSTEM.edges:
            _prompt(runner, leader, follower)
    target = 2 * len(specs)  # every order: Created, then Fulfilled or Cancelled
    deadline = time.monotonic() + args.timeout
    while (orders.recorder.max_notification_id() or 0) < target and time.monotonic() < deadline:
        if runner.has_errored.is_set():
            runner.stop()
            raise RuntimeError("an application failed")
        time.sleep(0.1)
    result = _metrics(runner, specs, args, placed)
    if not args.rate:
        result.config["placed_per_second"] = round(placed_rate, 1)
    _wait_caught_up(runner, deadline)
    runner.stop()
    return result


def _wait_caught_up(runner: MultiThreadedRunner[UUID], deadline: float) -> None:
    """Let every follower finish what its leaders recorded (the last events are only tracked),
    so stopping the runner does not close a pool under a transaction."""
    while time.monotonic() < deadline:
        behind = [
            (leader, follower)
            for leader, follower in SYSTEM.edges
            if (runner.apps[follower].recorder.max_tracking_id(leader) or 0)  # type: ignore[attr-defined]
            < (runner.apps[leader].recorder.max_notification_id() or 0)
        ]
        if not behind:
            return
        for leader, follower in behind:
            _prompt(runner, leader, follower)
        time.sleep(0.05)


def _events(app: Any) -> list[Any]:
    out: list[Any] = []
    start = 1
    while True:
        batch = app.recorder.select_notifications(start=start, limit=1000)
        if not batch:
            return out
        out.extend(app.mapper.to_domain_event(n) for n in batch)
        start = batch[-1].id + 1


def _metrics(
    runner: MultiThreadedRunner[UUID],
    specs: list[OrderSpec],
    args: argparse.Namespace,
    placed: dict[str, float],
) -> RunMetrics:
    by_order: dict[UUID, str] = {Order.create_id(s.order_id): s.order_id for s in specs}
    ended: dict[str, tuple[float, str]] = {}
    for e in _events(runner.get(Orders)):
        kind = type(e).__name__
        if kind in ("Fulfilled", "Cancelled"):
            ended[by_order[e.originator_id]] = (e.timestamp.timestamp(), kind)
    first_step = min(
        (
            e.timestamp.timestamp()
            for e in _events(runner.get(Prescriptions))
            if type(e).__name__ == "Created"
        ),
        default=0.0,
    )
    events = sum((runner.get(a).recorder.max_notification_id() or 0) for a in APPS)
    latencies = [(at - placed[oid]) * 1000.0 for oid, (at, _) in ended.items() if oid in placed]
    start = min(placed.values()) if args.rate else first_step
    end = max((at for at, _ in ended.values()), default=start)
    seconds = max(1e-9, end - start)
    fulfilled = sum(1 for _, k in ended.values() if k == "Fulfilled")
    cancelled = len(ended) - fulfilled
    return RunMetrics(
        system="eventsourcing",
        backend=backend_of_url(args.url),
        mix=args.mix,
        carrier_latency_ms=args.carrier_latency_ms,
        orders=len(specs),
        terminal=len(ended),
        fulfilled=fulfilled,
        cancelled=cancelled,
        seconds=seconds,
        orders_per_second=len(ended) / seconds,
        events=events,
        events_per_second=events / seconds,
        latency_ms=latency_summary(latencies),
        peak_rss_mib={"eventsourcing": self_peak_rss_mib()},
        config={
            "runner": "MultiThreadedRunner (one thread per process application)",
            "offered_per_second": args.rate or None,
            "eventsourcing_version": _version(),
            "events_are": "stored events of the four applications",
        },
    )


def _version() -> str:
    from importlib.metadata import version

    return version("eventsourcing")


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--timeout", type=float, default=float(os.environ.get("BENCH_TIMEOUT", 900)))
    args = p.parse_args()
    emit(run(args), args.json)


if __name__ == "__main__":
    main()

"""In-memory fakes of the adapters (cosmicpython style): a unit of work, a job queue, services.

`FakeDatabase` is the state a real database would hold. Each `FakeUnitOfWork` sees it through
a transaction: reads see the committed state plus its own writes, and its writes land only on
commit, all at once, after the same checks the SQL adapters make (expected stream versions,
the claim token of the job being finished, one job per saga, unique keys). `db.commits`
records what each commit appended and enqueued.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from typing import Any, Generic, TypeVar

from fulfillment.adapters.clock import FixedClock
from fulfillment.adapters.mapper import EventMapper, StoredEvent, to_utc
from fulfillment.bootstrap import build_handlers
from fulfillment.domain.aggregate import Aggregate
from fulfillment.domain.errors import (
    DomainError,
    InsufficientStock,
    InvalidInventory,
    PrescriptionExpired,
    TransientFailure,
    UnsupportedDestination,
)
from fulfillment.domain.events import DomainEvent
from fulfillment.domain.order import Order
from fulfillment.domain.saga import Saga
from fulfillment.domain.status import PrescriptionStatus, ReservationStatus, ShipmentStatus
from fulfillment.domain.values import (
    LotAllocation,
    OrderLine,
    PrescriptionDetails,
    ShippingAddress,
    merge_lines,
)
from fulfillment.service_layer import ports
from fulfillment.service_layer.job_runner import AbstractJobQueue, JobOutcome, JobRunner
from fulfillment.service_layer.jobs import ClaimedJob, JobSpec, LeaseLost
from fulfillment.service_layer.messagebus import ConcurrencyError, MessageBus
from fulfillment.service_layer.retry import RetryPolicy
from fulfillment.service_layer.saga_engine import EngineDeps, Timeouts
from fulfillment.service_layer.unit_of_work import AbstractUnitOfWork, StreamAppend

from .builders import T0

K = TypeVar("K")
V = TypeVar("V")

READY, RUNNING, DEAD = "ready", "running", "dead"


class CarrierDown(TransientFailure):
    """The fake carrier (or a fake service) cannot be reached this time."""


# --- rows -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrescriptionRow:
    id: str
    order_id: str
    status: PrescriptionStatus


@dataclass(frozen=True)
class ReservationRow:
    id: str
    order_id: str
    status: ReservationStatus
    lines: tuple[OrderLine, ...]


@dataclass(frozen=True)
class ShipmentRow:
    id: str
    order_id: str
    carrier: str
    tracking_number: str
    country: str
    status: ShipmentStatus


@dataclass(frozen=True)
class JobRow:
    id: int
    saga_id: str
    kind: str
    status: str
    run_at: float
    claim_token: str | None = None
    lease_expires_at: float | None = None
    claims: int = 0
    failures: int = 0
    last_error: str | None = None


@dataclass(frozen=True)
class Commit:
    """What one committed transaction did."""

    finished_job: int | None
    appended: dict[str, list[str]]  # stream id -> event type names
    enqueued: list[JobSpec]


@dataclass
class FakeDatabase:
    """The committed state shared by every unit of work and the job queue."""

    clock: FixedClock = field(default_factory=lambda: FixedClock(T0))
    mapper: EventMapper = field(default_factory=EventMapper)
    events: list[StoredEvent] = field(default_factory=list)
    prescriptions: dict[str, PrescriptionRow] = field(default_factory=dict)
    #: Each SKU's totals over its lots, and its DEA schedule (`lots` left empty here).
    inventory: dict[str, ports.StockLevel] = field(default_factory=dict)
    #: (sku, lot) -> the lot.
    lots: dict[tuple[str, str], ports.LotLevel] = field(default_factory=dict)
    #: order id -> the lots its reservation took, in the order it took them.
    allocations: dict[str, tuple[LotAllocation, ...]] = field(default_factory=dict)
    reservations: dict[str, ReservationRow] = field(default_factory=dict)
    shipments: dict[str, ShipmentRow] = field(default_factory=dict)
    idempotency_keys: dict[str, ports.IdempotencyRecord] = field(default_factory=dict)
    jobs: dict[int, JobRow] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)
    #: The next N commits fail as if another writer had appended to the stream first.
    conflicts_to_raise: int = 0
    #: Operation name ("inventory.release", "prescriptions.cancel", ...) -> calls left to fail.
    faults: dict[str, int] = field(default_factory=dict)
    #: Run once, at the start of the next commit (a concurrent writer getting there first).
    before_next_commit: list[Callable[[], object]] = field(default_factory=list)
    _job_ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def now(self) -> float:
        return self.clock.now().timestamp()

    def stream(self, stream_id: str) -> list[StoredEvent]:
        return [e for e in self.events if e.stream_id == stream_id]

    def load(self, stream_id: str) -> list[DomainEvent]:
        return [
            self.mapper.to_event(e.type, e.event_version, e.data, e.recorded_at)
            for e in self.stream(stream_id)
        ]

    def event_types(self, stream_id: str) -> list[str]:
        return [e.type for e in self.stream(stream_id)]

    def store(self, appends: list[StreamAppend], causation_id: str | None) -> None:
        """Append the events as the SQL store writes its rows (checks done by the caller)."""
        for append in appends:
            metadata: dict[str, str | None] = {
                "correlation_id": append.correlation_id,
                "causation_id": causation_id,
            }
            if append.sender is not None:
                metadata["sender"] = append.sender
            for offset, event in enumerate(append.events, start=1):
                self.events.append(
                    StoredEvent(
                        position=len(self.events) + 1,
                        stream_id=append.stream_id,
                        version=append.expected_version + offset,
                        type=type(event).__name__,
                        event_version=type(event).event_version,
                        data=json.loads(json.dumps(self.mapper.to_data(event))),
                        metadata=dict(metadata),
                        recorded_at=to_utc(event.occurred_at),
                    )
                )

    def order(self, order_id: str) -> Order:
        return Order.replay(order_id, self.load(Order.stream_id_for(order_id)))

    def saga(self, saga_id: str) -> Saga:
        return Saga.replay(saga_id, self.load(Saga.stream_id_for(saga_id)))

    def job_of(self, saga_id: str) -> JobRow | None:
        return next((j for j in self.jobs.values() if j.saga_id == saga_id), None)

    def fail_if_faulty(self, operation: str) -> None:
        left = self.faults.get(operation, 0)
        if left > 0:
            self.faults[operation] = left - 1
            raise CarrierDown(f"{operation} unavailable")


class Pending(Generic[K, V]):
    """A table seen through one transaction: reads see its own writes; writes land on commit."""

    def __init__(self, committed: dict[K, V]) -> None:
        self.committed = committed
        self.writes: dict[K, V] = {}

    def get(self, key: K) -> V | None:
        return self.writes[key] if key in self.writes else self.committed.get(key)

    def put(self, key: K, value: V) -> None:
        self.writes[key] = value

    def rows(self) -> list[V]:
        """Every row as the transaction sees it: committed ones first, in their order."""
        return list({**self.committed, **self.writes}.values())

    def items(self) -> list[tuple[K, V]]:
        return list({**self.committed, **self.writes}.items())

    def flush(self) -> None:
        self.committed.update(self.writes)
        self.writes = {}


# --- services -------------------------------------------------------------------------------


class FakePrescriptionService(ports.PrescriptionService):
    def __init__(self, db: FakeDatabase, rows: Pending[str, PrescriptionRow]) -> None:
        self.db = db
        self.rows = rows

    def create(
        self, order_id: str, details: PrescriptionDetails, today: date, *, customer_id: str
    ) -> str:
        existing = self.rows.get(order_id)
        if existing is not None:
            return existing.id
        if details.is_expired(today):
            raise PrescriptionExpired(f"prescription expired on {details.expires_on}")
        self.db.fail_if_faulty("prescriptions.create")
        row = PrescriptionRow(f"rx-{order_id}", order_id, PrescriptionStatus.ACTIVE)
        self.rows.put(order_id, row)
        return row.id

    def _move(self, order_id: str, to: PrescriptionStatus) -> None:
        row = self.rows.get(order_id)
        if row is not None and row.status is PrescriptionStatus.ACTIVE:
            self.rows.put(order_id, replace(row, status=to))

    def cancel(self, order_id: str) -> None:
        self.db.fail_if_faulty("prescriptions.cancel")
        self._move(order_id, PrescriptionStatus.CANCELLED)

    def mark_dispensed(self, order_id: str) -> None:
        self._move(order_id, PrescriptionStatus.DISPENSED)


class FakeInventoryService(ports.InventoryReservationService):
    """As `SqlAlchemyInventoryService`: lots in `lots`, each SKU's totals (and schedule)
    in `stock`, kept as the sums over its lots; the lots each reservation took in
    `allocations`."""

    def __init__(
        self,
        db: FakeDatabase,
        stock: Pending[str, ports.StockLevel],
        reservations: Pending[str, ReservationRow],
        lots: Pending[tuple[str, str], ports.LotLevel],
        allocations: Pending[str, tuple[LotAllocation, ...]],
    ) -> None:
        self.db = db
        self.stock = stock
        self.reservations = reservations
        self.lots = lots
        self.allocations = allocations

    def _lots_of(self, sku: str) -> list[ports.LotLevel]:
        return sorted((lot for lot in self.lots.rows() if lot.sku == sku), key=ports.fefo_key)

    def _total(self, sku: str, dea_schedule: str | ports.Unchanged | None) -> None:
        current = self.stock.get(sku) or ports.StockLevel(sku, 0, 0)
        lots = self._lots_of(sku)
        self.stock.put(
            sku,
            ports.StockLevel(
                sku,
                sum(lot.on_hand for lot in lots),
                sum(lot.reserved for lot in lots),
                current.dea_schedule if dea_schedule is ports.UNCHANGED else dea_schedule,
            ),
        )

    def _put_lot(self, sku: str, lot: str, on_hand: int, expires_on: date | None) -> ports.LotLevel:
        current = self.lots.get((sku, lot))
        reserved = current.reserved if current is not None else 0
        if on_hand < reserved:
            of = "" if lot == ports.DEFAULT_LOT else f" of lot {lot}"
            raise InvalidInventory(
                f"on_hand {on_hand} is below the {reserved} units reserved{of} for {sku}"
            )
        level = ports.LotLevel(sku, lot, on_hand, reserved, expires_on)
        self.lots.put((sku, lot), level)
        return level

    def set_on_hand(
        self,
        sku: str,
        on_hand: int,
        dea_schedule: str | ports.Unchanged | None = ports.UNCHANGED,
    ) -> ports.StockLevel:
        if on_hand < 0:
            raise InvalidInventory("on_hand must be >= 0")
        if dea_schedule not in (None, ports.UNCHANGED, *ports.DEA_SCHEDULES):
            raise DomainError(f"unknown DEA schedule {dea_schedule!r}")
        if on_hand > 0 or self.lots.get((sku, ports.DEFAULT_LOT)) is not None:
            self._put_lot(sku, ports.DEFAULT_LOT, on_hand, None)
        self._total(sku, dea_schedule)
        level = self.get(sku)
        assert level is not None
        return level

    def set_lot(self, sku: str, lot: str, on_hand: int, expires_on: date) -> ports.LotLevel:
        if lot == ports.DEFAULT_LOT:
            raise DomainError(f"lot {lot!r} holds the units without an expiry date")
        if on_hand < 0:
            raise InvalidInventory("on_hand must be >= 0")
        level = self._put_lot(sku, lot, on_hand, expires_on)
        self._total(sku, ports.UNCHANGED)
        return level

    def get(self, sku: str) -> ports.StockLevel | None:
        level = self.stock.get(sku)
        return None if level is None else replace(level, lots=tuple(self._lots_of(sku)))

    def reserve(
        self,
        order_id: str,
        lines: tuple[OrderLine, ...],
        *,
        today: date,
        min_shelf_life_days: int = 30,
    ) -> ports.Reservation:
        existing = self.reservations.get(order_id)
        if existing is not None:
            return ports.Reservation(existing.id, self.allocations.get(order_id) or ())
        merged = merge_lines(lines)
        usable_from = today + timedelta(days=min_shelf_life_days)
        taken: list[LotAllocation] = []
        for line in merged:  # everything checked before anything is taken
            level = self.stock.get(line.sku)
            if level is None or level.available < line.quantity:
                raise InsufficientStock(f"not enough {line.sku} available for {line.quantity}")
            wanted = line.quantity
            for lot in self._lots_of(line.sku):
                if wanted == 0:
                    break
                if lot.available <= 0 or (
                    lot.expires_on is not None and lot.expires_on < usable_from
                ):
                    continue
                quantity = min(wanted, lot.available)
                taken.append(LotAllocation(line.sku, lot.lot, quantity))
                wanted -= quantity
            if wanted > 0:
                raise InsufficientStock(
                    f"not enough {line.sku} with {min_shelf_life_days} days of shelf life "
                    f"left for {line.quantity}"
                )
        self._apply(taken, reserved=+1, on_hand=0)
        row = ReservationRow(f"res-{order_id}", order_id, ReservationStatus.RESERVED, merged)
        self.reservations.put(order_id, row)
        self.allocations.put(order_id, tuple(taken))
        return ports.Reservation(row.id, tuple(taken))

    def _apply(self, allocations: Iterable[LotAllocation], *, reserved: int, on_hand: int) -> None:
        """Add `reserved` and `on_hand` times each allocation's units to its lot."""
        skus = set()
        for a in allocations:
            lot = self.lots.get((a.sku, a.lot))
            assert lot is not None
            self.lots.put(
                (a.sku, a.lot),
                replace(
                    lot,
                    reserved=lot.reserved + reserved * a.quantity,
                    on_hand=lot.on_hand + on_hand * a.quantity,
                ),
            )
            skus.add(a.sku)
        for sku in skus:
            self._total(sku, ports.UNCHANGED)

    def _settle(self, order_id: str, to: ReservationStatus) -> None:
        row = self.reservations.get(order_id)
        if row is None or row.status is not ReservationStatus.RESERVED:
            return
        self.reservations.put(order_id, replace(row, status=to))
        consumed = -1 if to is ReservationStatus.CONSUMED else 0
        self._apply(self.allocations.get(order_id) or (), reserved=-1, on_hand=consumed)

    def release(self, order_id: str) -> None:
        self.db.fail_if_faulty("inventory.release")
        self._settle(order_id, ReservationStatus.RELEASED)

    def consume(self, order_id: str) -> None:
        self.db.fail_if_faulty("inventory.consume")
        self._settle(order_id, ReservationStatus.CONSUMED)

    def lot_orders(self, sku: str, lot: str) -> list[tuple[str, int]] | None:
        if self.lots.get((sku, lot)) is None:
            return None
        return [
            (a_order, a.quantity)
            for a_order, taken in self.allocations.items()
            for a in taken
            if (a.sku, a.lot) == (sku, lot)
        ]

    def controlled(self, skus: Iterable[str]) -> bool:
        levels = [self.stock.get(sku) for sku in skus]
        return any(level is not None and level.dea_schedule is not None for level in levels)


class FakeShipmentService(ports.ShipmentService):
    def __init__(self, rows: Pending[str, ShipmentRow]) -> None:
        self.rows = rows

    def record_initiated(self, order_id: str, booking: ports.Booking, country: str) -> str:
        existing = self.rows.get(order_id)
        if existing is not None:
            return existing.id
        row = ShipmentRow(
            f"shp-{order_id}",
            order_id,
            booking.carrier,
            booking.tracking_number,
            country,
            ShipmentStatus.INITIATED,
        )
        self.rows.put(order_id, row)
        return row.id

    def cancel(self, order_id: str) -> None:
        row = self.rows.get(order_id)
        if row is not None and row.status is ShipmentStatus.INITIATED:
            self.rows.put(order_id, replace(row, status=ShipmentStatus.CANCELLED))

    def order_of(self, tracking_number: str) -> str | None:
        rows = {**self.rows.committed, **self.rows.writes}
        return next(
            (r.order_id for r in rows.values() if r.tracking_number == tracking_number), None
        )


class FakeIdempotencyKeys(ports.IdempotencyKeys):
    def __init__(self, rows: Pending[str, ports.IdempotencyRecord]) -> None:
        self.rows = rows

    def get(self, key: str) -> ports.IdempotencyRecord | None:
        return self.rows.get(key)

    def add(self, record: ports.IdempotencyRecord) -> None:
        # The unique key is checked at commit, like a database's unique constraint.
        self.rows.put(record.key, record)


class FakeSagaJobs(ports.SagaJobs):
    """Reads the fake queue's rows; a revival is applied at commit, with the rest."""

    def __init__(self, db: FakeDatabase) -> None:
        self.db = db
        self.revived: set[int] = set()
        self.cancelled: set[int] = set()

    def _row(self, saga_id: str) -> JobRow | None:
        return next((j for j in self.db.jobs.values() if j.saga_id == saga_id), None)

    def get(self, saga_id: str) -> ports.SagaJob | None:
        row = self._row(saga_id)
        # The transaction sees its own cancellation and revival.
        if row is not None and row.id in self.cancelled:
            return None
        if row is not None and row.id in self.revived:
            return ports.SagaJob(row.kind, READY)
        return ports.SagaJob(row.kind, row.status) if row is not None else None

    def revive(self, saga_id: str) -> bool:
        row = self._row(saga_id)
        if row is not None and (row.id in self.revived or row.id in self.cancelled):
            return False  # no longer dead, or gone, in this transaction
        if row is None or row.status != DEAD:
            return False
        self.revived.add(row.id)
        return True

    def cancel(self, saga_id: str) -> None:
        row = self._row(saga_id)
        if row is not None:
            self.revived.discard(row.id)  # a cancellation outlasts a revival before it
            self.cancelled.add(row.id)


class FakeCarrier(ports.Carrier):
    """Idempotent by key; `down_for` upcoming calls fail transiently."""

    name = "fake-post"

    def __init__(self, countries: tuple[str, ...] = ("NL", "GB", "US")) -> None:
        self.countries = countries
        #: False: pickup comes later, as a signal to the saga's `await_pickup` wait.
        self.confirms_pickup_at_booking = True
        self.down_for = 0
        self.bookings: dict[str, ports.Booking] = {}
        self.cancelled: list[str] = []
        self.calls = 0
        #: Run during the next call, while no transaction is open (a concurrent worker).
        self.during_next_call: list[Callable[[], None]] = []

    def _call(self) -> None:
        self.calls += 1
        while self.during_next_call:
            self.during_next_call.pop(0)()
        if self.down_for > 0:
            self.down_for -= 1
            raise CarrierDown("carrier unavailable")

    def book(
        self, idempotency_key: str, address: ShippingAddress, lines: tuple[OrderLine, ...]
    ) -> ports.Booking:
        if address.country not in self.countries:
            raise UnsupportedDestination(f"carrier does not ship to {address.country}")
        self._call()
        booking = ports.Booking(self.name, f"TRK-{idempotency_key}")
        return self.bookings.setdefault(idempotency_key, booking)

    def cancel(self, idempotency_key: str, tracking_number: str) -> None:
        self._call()
        self.cancelled.append(tracking_number)


# --- repositories and the unit of work ---------------------------------------------------------


class FakeOrderRepository(ports.OrderRepository):
    def __init__(self, db: FakeDatabase, track: Callable[[Aggregate], None]) -> None:
        self.db = db
        self.track = track

    def get(self, order_id: str) -> Order | None:
        events = self.db.load(Order.stream_id_for(order_id))
        if not events:
            return None
        order = Order.replay(order_id, events)
        self.track(order)
        return order

    def add(self, order: Order) -> None:
        self.track(order)


class FakeSagaRepository(ports.SagaRepository):
    def __init__(self, db: FakeDatabase, track: Callable[[Aggregate], None]) -> None:
        self.db = db
        self.track = track

    def get(self, saga_id: str) -> Saga | None:
        events = self.db.load(Saga.stream_id_for(saga_id))
        if not events:
            return None
        saga = Saga.replay(saga_id, events)
        self.track(saga)
        return saga

    def add(self, saga: Saga) -> None:
        self.track(saga)


class FakeUnitOfWork(AbstractUnitOfWork):
    def __init__(self, db: FakeDatabase, job: ClaimedJob | None = None) -> None:
        super().__init__(job)
        self.db = db
        self.committed = False
        self._tables: list[Pending[Any, Any]] = []

    def _begin(self) -> None:
        db = self.db
        self._prescriptions = Pending(db.prescriptions)
        self._stock = Pending(db.inventory)
        self._lots = Pending(db.lots)
        self._allocations = Pending(db.allocations)
        self._reservations = Pending(db.reservations)
        self._shipments = Pending(db.shipments)
        self._keys = Pending(db.idempotency_keys)
        self._tables = [
            self._prescriptions,
            self._stock,
            self._lots,
            self._allocations,
            self._reservations,
            self._shipments,
            self._keys,
        ]
        self.orders = FakeOrderRepository(db, self.track)
        self.sagas = FakeSagaRepository(db, self.track)
        self.prescriptions = FakePrescriptionService(db, self._prescriptions)
        self.inventory = FakeInventoryService(
            db, self._stock, self._reservations, self._lots, self._allocations
        )
        self.shipments = FakeShipmentService(self._shipments)
        self.idempotency = FakeIdempotencyKeys(self._keys)
        self.jobs = FakeSagaJobs(db)

    def _commit(self, appends: list[StreamAppend], jobs: list[JobSpec]) -> ClaimedJob | None:
        db = self.db
        while db.before_next_commit:
            db.before_next_commit.pop(0)()
        self._check(appends, jobs)
        # All checks passed: apply everything at once.
        finished = self.job.id if self.job is not None else None
        if finished is not None:
            del db.jobs[finished]
        for job_id in self.jobs.cancelled:
            db.jobs.pop(job_id, None)
        for spec in jobs:
            job_id = next(db._job_ids)
            db.jobs[job_id] = JobRow(
                job_id, spec.saga_id, spec.kind, READY, db.now() + spec.delay_seconds
            )
        db.store(appends, self.causation_id)
        for job_id in self.jobs.revived:
            row = db.jobs[job_id]
            db.jobs[job_id] = replace(
                row, status=READY, run_at=db.now(), failures=0, claims=0, claim_token=None
            )
        for table in self._tables:
            table.flush()
        db.commits.append(
            Commit(
                finished_job=finished,
                appended={a.stream_id: [type(e).__name__ for e in a.events] for a in appends},
                enqueued=list(jobs),
            )
        )
        self.job = None  # consumed, as in the SQL unit of work
        self.committed = True
        return None  # the fake queue never chains

    def _check(self, appends: list[StreamAppend], jobs: list[JobSpec]) -> None:
        db = self.db
        if db.conflicts_to_raise > 0:
            db.conflicts_to_raise -= 1
            raise ConcurrencyError("another writer appended first (simulated)")
        if self.job is not None:
            held = db.jobs.get(self.job.id)
            if (
                held is None
                or held.claim_token != self.job.claim_token
                or held.kind != self.job.kind
            ):
                raise LeaseLost(f"job {self.job.id} is no longer held by this worker")
        for append in appends:
            if len(db.stream(append.stream_id)) != append.expected_version:
                raise ConcurrencyError(f"{append.stream_id} moved past {append.expected_version}")
        gone = {self.job.id} if self.job is not None else set()
        gone |= self.jobs.cancelled
        busy = {j.saga_id for j in db.jobs.values() if j.id not in gone}
        for spec in jobs:
            if spec.saga_id in busy:
                raise ConcurrencyError(f"saga {spec.saga_id} already has a job")
            busy.add(spec.saga_id)
        if any(key in db.idempotency_keys for key in self._keys.writes):
            raise ConcurrencyError("idempotency key stored by another transaction")

    def rollback(self) -> None:
        for table in self._tables:
            table.writes = {}


# --- the event store ----------------------------------------------------------------------------


class FakeEventStore:
    """The event store's interface (`SqlAlchemyEventStore`) on the fake's events, each
    append one committed transaction: positions 1.. in append order, versions 1.. per
    stream, and ConcurrencyError (nothing of the call appended) when an expected version
    is not the stream's."""

    def __init__(self, db: FakeDatabase) -> None:
        self.db = db

    def append(self, appends: list[StreamAppend], causation_id: str | None = None) -> None:
        db = self.db
        for append in appends:
            if len(db.stream(append.stream_id)) != append.expected_version:
                raise ConcurrencyError(f"{append.stream_id} is not at {append.expected_version}")
        db.store(appends, causation_id)

    def load(self, stream_id: str) -> list[DomainEvent]:
        return self.db.load(stream_id)

    def read_stream(self, stream_id: str) -> list[StoredEvent]:
        return sorted(self.db.stream(stream_id), key=lambda e: e.version)

    def read_all(self, after: int = 0, limit: int = 100) -> list[StoredEvent]:
        """Every event with a position greater than `after`, in position order."""
        return [e for e in self.db.events if e.position > after][:limit]


# --- the job queue ------------------------------------------------------------------------------


class FakeJobQueue(AbstractJobQueue):
    def __init__(self, db: FakeDatabase, max_claims: int = 10) -> None:
        self.db = db
        self.max_claims = max_claims

    def _held(self, job: ClaimedJob) -> JobRow:
        row = self.db.jobs.get(job.id)
        if row is None or row.claim_token != job.claim_token:
            raise LeaseLost(f"job {job.id} is no longer held by this worker")
        return row

    def claim(
        self, limit: int, worker_id: str, lease_seconds: float, chain: bool = False
    ) -> list[ClaimedJob]:
        """As the port says; `chain` is accepted and ignored: the fake never chains."""
        now = self.db.now()
        due = sorted(
            (j for j in self.db.jobs.values() if j.status == READY and j.run_at <= now),
            key=lambda j: (j.run_at, j.id),
        )[:limit]
        token = str(uuid.uuid4())
        claimed = []
        for row in due:
            row = replace(
                row,
                status=RUNNING,
                claim_token=token,
                claims=row.claims + 1,
                lease_expires_at=now + lease_seconds,
            )
            self.db.jobs[row.id] = row
            claimed.append(
                ClaimedJob(row.id, row.saga_id, row.kind, token, row.claims, row.failures)
            )
        return claimed

    def heartbeat(self, jobs: list[ClaimedJob], lease_seconds: float) -> int:
        renewed = 0
        for job in jobs:
            row = self.db.jobs.get(job.id)
            if row is not None and row.claim_token == job.claim_token and row.status == RUNNING:
                self.db.jobs[job.id] = replace(row, lease_expires_at=self.db.now() + lease_seconds)
                renewed += 1
        return renewed

    def reap_expired(self) -> int:
        reaped = 0
        for row in list(self.db.jobs.values()):
            expires = row.lease_expires_at
            if row.status == RUNNING and expires is not None and expires < self.db.now():
                dead = row.claims >= self.max_claims
                self.db.jobs[row.id] = replace(
                    row, status=DEAD if dead else READY, claim_token=None, lease_expires_at=None
                )
                reaped += 1
        return reaped

    def fail(self, job: ClaimedJob, error: str, delay_seconds: float, dead: bool) -> None:
        row = self._held(job)
        self.db.jobs[job.id] = replace(
            row,
            status=DEAD if dead else READY,
            run_at=self.db.now() + delay_seconds,
            failures=row.failures + 1,
            last_error=error,
            claim_token=None,
            lease_expires_at=None,
        )

    def release(self, job: ClaimedJob, delay_seconds: float = 0.0) -> None:
        row = self.db.jobs.get(job.id)
        if row is None or row.claim_token != job.claim_token:
            return  # a late release by an old holder changes nothing, as in SQL
        self.db.jobs[job.id] = replace(
            row,
            status=READY,
            run_at=self.db.now() + delay_seconds,
            claim_token=None,
            lease_expires_at=None,
        )


# --- wiring ------------------------------------------------------------------------------------


@dataclass
class FakeApp:
    """The production handlers wired to the fakes: a bus, a job runner and a queue."""

    db: FakeDatabase
    carrier: FakeCarrier
    retry: RetryPolicy
    bus: MessageBus
    queue: FakeJobQueue
    runner: JobRunner

    @property
    def clock(self) -> FixedClock:
        return self.db.clock

    def uow(self, job: ClaimedJob | None = None) -> FakeUnitOfWork:
        return FakeUnitOfWork(self.db, job)

    def claim(self) -> ClaimedJob | None:
        """The next due job, if any (moving the clock forward to a job waiting on a backoff)."""
        jobs = self.queue.claim(1, "test-worker", 30.0)
        if not jobs:
            waiting = [j.run_at for j in self.db.jobs.values() if j.status == READY]
            if not waiting:
                return None
            # The clock counts whole microseconds: step one past the job's run_at.
            self.clock.advance(max(0.0, min(waiting) - self.db.now()) + 1e-6)
            jobs = self.queue.claim(1, "test-worker", 30.0)
        return jobs[0] if jobs else None

    def run_next(self) -> tuple[str, JobOutcome] | None:
        job = self.claim()
        if job is None:
            return None
        return job.kind, self.runner.run(job)

    def run_until_idle(self, limit: int = 50) -> list[tuple[str, JobOutcome]]:
        """Run jobs one at a time until none is left; (kind, outcome) of each."""
        ran: list[tuple[str, JobOutcome]] = []
        for _ in range(limit):
            step = self.run_next()
            if step is None:
                return ran
            ran.append(step)
        raise AssertionError(f"still busy after {limit} jobs: {ran}")


def make_fake_app(
    *,
    carrier: FakeCarrier | None = None,
    retry: RetryPolicy | None = None,
    timeouts: Timeouts | None = None,
    max_job_failures: int = 3,
    verification_required_for: str = "controlled",
    min_shelf_life_days: int = 30,
) -> FakeApp:
    db = FakeDatabase()
    carrier = carrier or FakeCarrier()
    retry = retry or RetryPolicy(max_attempts=3, base_seconds=1.0)
    deps = EngineDeps(
        db.clock,
        carrier,
        retry,
        timeouts or Timeouts(),
        verification_required_for=verification_required_for,
        min_shelf_life_days=min_shelf_life_days,
    )
    handlers = build_handlers(deps)
    bus = MessageBus(lambda job: FakeUnitOfWork(db, job), handlers)
    queue = FakeJobQueue(db)
    runner = JobRunner(bus, queue, retry, max_job_failures)
    return FakeApp(db, carrier, retry, bus, queue, runner)

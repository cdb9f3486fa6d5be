"""State-stored services (prescriptions, inventory, shipments), like the models of the original.

Each effect is keyed by the order: unique `order_id` columns make a second prescription,
reservation or shipment for one order impossible (docs/architecture.md, rule 5), and
every change is conditional on the current status, so running it twice changes nothing.

Inventory is kept by lot (`inventory_lots`, with expiry dates) and the SKU's totals stay
*stored* in `inventory`: every change to a lot updates its SKU's row in the same
transaction, so the totals always equal the sums over the lots, and `inventory`'s CHECK
and its readers work as before. The SKU row is also the SKU's lock: a reservation takes
it first, with the conditional update of the total (SKUs in sorted order), then reads
the usable lots `FOR UPDATE` and takes from them, first expiry first; every other writer
of a SKU's lots (restock, release, consume) takes the SKU row first too, so lots of one
SKU are never locked in two orders, and no two reservations take the same unit. Which
lots a reservation took is in `reservation_lots`, for its release or consumption and
for recalls.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import (
    Connection,
    Date,
    Integer,
    Select,
    SmallInteger,
    String,
    Table,
    bindparam,
    cast,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import backend_of
from fulfillment.adapters.patient_data import PatientData, table_place
from fulfillment.adapters.prepared import Prepared, execute_many, fetch_all, rowcount, scalar
from fulfillment.domain.errors import (
    DomainError,
    InsufficientStock,
    InvalidInventory,
    PrescriptionExpired,
)
from fulfillment.domain.status import PrescriptionStatus, ReservationStatus, ShipmentStatus
from fulfillment.domain.values import LotAllocation, OrderLine, PrescriptionDetails, merge_lines
from fulfillment.service_layer import ports

Now = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


# The step path's statements: built once, run on the raw cursor (adapters/prepared.py).
_P, _I, _R, _S = t.prescriptions, t.inventory, t.inventory_reservations, t.shipments
_L, _RL = t.inventory_lots, t.reservation_lots
_PRESCRIPTION_MOVE = Prepared(
    update(_P)
    .where(_P.c.order_id == bindparam("p_order_id"), _P.c.status == PrescriptionStatus.ACTIVE.value)
    .values(status=bindparam("p_to"), updated_at=bindparam("p_now"))
)
_RESERVE_SKU = Prepared(
    update(_I)
    .where(_I.c.sku == bindparam("p_sku"), _I.c.on_hand - _I.c.reserved >= bindparam("p_qty"))
    .values(reserved=_I.c.reserved + bindparam("p_qty"), updated_at=bindparam("p_now"))
)
#: A SKU's lots in the order reservations take them from: first expiry first, lots
#: without expiry (`default`) last, then by name.
_FEFO = (_L.c.expires_on.is_(None), _L.c.expires_on, _L.c.lot)
_LOT_COLUMNS = (_L.c.sku, _L.c.lot, _L.c.on_hand, _L.c.reserved, _L.c.expires_on)
#: The lots a reservation may take from, with what is left of each; FOR UPDATE on the
#: servers (SQLite has a single writer), though the SKU row's lock already serializes.
_USABLE_LOTS = Prepared(
    select(_L.c.lot, _L.c.on_hand - _L.c.reserved)
    .where(
        _L.c.sku == bindparam("p_sku"),
        or_(_L.c.expires_on.is_(None), _L.c.expires_on >= bindparam("p_from", type_=Date())),
        _L.c.on_hand > _L.c.reserved,
    )
    .order_by(*_FEFO)
    .with_for_update()
)
_RESERVE_LOT = Prepared(
    update(_L)
    .where(
        _L.c.sku == bindparam("p_sku"),
        _L.c.lot == bindparam("p_lot"),
        _L.c.on_hand - _L.c.reserved >= bindparam("p_qty"),
    )
    .values(reserved=_L.c.reserved + bindparam("p_qty"), updated_at=bindparam("p_now"))
)
#: PostgreSQL: the SKU's total and the read of its lots in one statement. The read has
#: the statement's snapshot, perhaps older than the commit the SKU's lock waited for, so
#: it leaves out no lot by what it holds: FOR UPDATE returns each lot as it now is, and
#: the caller skips the empty ones.
_TAKEN_SKU = (
    update(_I)
    .where(_I.c.sku == bindparam("p_sku"), _I.c.on_hand - _I.c.reserved >= bindparam("p_qty"))
    .values(reserved=_I.c.reserved + bindparam("p_qty"), updated_at=bindparam("p_now"))
    .returning(_I.c.sku)
    .cte("taken_sku")
)
_RESERVE_SKU_USABLE_LOTS = Prepared(
    select(_L.c.lot, _L.c.on_hand - _L.c.reserved)
    .join(_TAKEN_SKU, _TAKEN_SKU.c.sku == _L.c.sku)
    .where(or_(_L.c.expires_on.is_(None), _L.c.expires_on >= bindparam("p_from", type_=Date())))
    .order_by(*_FEFO)
    .with_for_update(of=_L)
)
#: PostgreSQL: a lot's units taken and recorded as the reservation's, in one statement.
_TAKEN_LOT = (
    update(_L)
    .where(
        _L.c.sku == bindparam("p_sku"),
        _L.c.lot == bindparam("p_lot"),
        _L.c.on_hand - _L.c.reserved >= bindparam("p_qty"),
    )
    .values(reserved=_L.c.reserved + bindparam("p_qty"), updated_at=bindparam("p_now"))
    .returning(_L.c.sku, _L.c.lot)
    .cte("taken_lot")
)
_RESERVE_LOT_RECORDED = Prepared(
    insert(_RL)
    .from_select(
        ["order_id", "sku", "lot", "quantity", "position"],
        select(
            cast(bindparam("p_order_id"), String),
            _TAKEN_LOT.c.sku,
            _TAKEN_LOT.c.lot,
            cast(bindparam("p_qty"), Integer),
            cast(bindparam("p_position"), SmallInteger),
        ),
    )
    .add_cte(_TAKEN_LOT)
)
_ALLOCATION_INSERT = Prepared(
    insert(_RL), column_keys=["order_id", "sku", "lot", "quantity", "position"]
)
_ALLOCATIONS = Prepared(
    select(_RL.c.sku, _RL.c.lot, _RL.c.quantity)
    .where(_RL.c.order_id == bindparam("p_order_id"))
    .order_by(_RL.c.position)
)
_RESERVATION_SETTLE = Prepared(
    update(_R)
    .where(
        _R.c.order_id == bindparam("p_order_id"), _R.c.status == ReservationStatus.RESERVED.value
    )
    .values(status=bindparam("p_to"), updated_at=bindparam("p_now"))
)
_SETTLED = (
    update(_R)
    .where(
        _R.c.order_id == bindparam("p_order_id"), _R.c.status == ReservationStatus.RESERVED.value
    )
    .values(status=bindparam("p_to"), updated_at=bindparam("p_now"))
    .returning(_R.c.order_id)
    .cte("settled")
)
#: PostgreSQL: the settle and the read of the lots it gives back, in one statement.
_SETTLE_ALLOCATIONS = Prepared(
    select(_RL.c.sku, _RL.c.lot, _RL.c.quantity)
    .join(_SETTLED, _SETTLED.c.order_id == _RL.c.order_id)
    .order_by(_RL.c.position)
)
_RELEASE_LINE = Prepared(
    update(_I)
    .where(_I.c.sku == bindparam("p_sku"))
    .values(reserved=_I.c.reserved - bindparam("p_qty"), updated_at=bindparam("p_now"))
)
_CONSUME_LINE = Prepared(
    update(_I)
    .where(_I.c.sku == bindparam("p_sku"))
    .values(
        reserved=_I.c.reserved - bindparam("p_qty"),
        on_hand=_I.c.on_hand - bindparam("p_qty"),
        updated_at=bindparam("p_now"),
    )
)
_RELEASE_LOT = Prepared(
    update(_L)
    .where(_L.c.sku == bindparam("p_sku"), _L.c.lot == bindparam("p_lot"))
    .values(reserved=_L.c.reserved - bindparam("p_qty"), updated_at=bindparam("p_now"))
)
_CONSUME_LOT = Prepared(
    update(_L)
    .where(_L.c.sku == bindparam("p_sku"), _L.c.lot == bindparam("p_lot"))
    .values(
        reserved=_L.c.reserved - bindparam("p_qty"),
        on_hand=_L.c.on_hand - bindparam("p_qty"),
        updated_at=bindparam("p_now"),
    )
)


@functools.cache
def _controlled(skus: int) -> Prepared:
    """Whether one of `skus` SKUs (bound as p_sku0, p_sku1, ...) has a DEA schedule."""
    return Prepared(
        select(_I.c.sku)
        .where(
            _I.c.sku.in_([bindparam(f"p_sku{n}") for n in range(skus)]),
            _I.c.dea_schedule.is_not(None),
        )
        .limit(1)
    )


def lot_reservations(sku: str, lot: str) -> Select[tuple[str, int]]:
    """(order id, units) of the reservations that took units of the lot, in the order
    they were made (a recall's orders; views/inventory.py adds their status)."""
    return (
        select(_RL.c.order_id, _RL.c.quantity)
        .join(_R, _R.c.order_id == _RL.c.order_id)
        .where(_RL.c.sku == sku, _RL.c.lot == lot)
        .order_by(_R.c.created_at, _RL.c.order_id)
    )


def _check_schedule(dea_schedule: str | ports.Unchanged | None) -> None:
    if dea_schedule is None or dea_schedule is ports.UNCHANGED:
        return
    if dea_schedule not in ports.DEA_SCHEDULES:
        raise DomainError(
            f"unknown DEA schedule {dea_schedule!r}: one of {', '.join(ports.DEA_SCHEDULES)}"
        )


@dataclass(frozen=True)
class _InsertOnce:
    """Insert an order's one row (prescription, reservation, shipment) unless it exists.

    Where the backend has ``INSERT ... ON CONFLICT DO NOTHING`` (PostgreSQL, SQLite) the
    insert itself tells (one round trip; the existing row is read only on a conflict);
    MariaDB, whose ``INSERT IGNORE`` would also swallow other errors, looks first.
    """

    plain: Prepared
    on_conflict: dict[str, Prepared]
    existing: Prepared

    @classmethod
    def of(cls, table: Table) -> _InsertOnce:
        keys = [c.name for c in table.columns]
        return cls(
            Prepared(insert(table), column_keys=keys),
            {
                name: Prepared(
                    dialect.insert(table).on_conflict_do_nothing(index_elements=["order_id"]),
                    column_keys=keys,
                )
                for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
            },
            Prepared(select(table.c.id).where(table.c.order_id == bindparam("p_order_id"))),
        )

    def find(self, conn: Connection, order_id: str) -> str | None:
        found = scalar(conn, self.existing, {"p_order_id": order_id})
        return None if found is None else str(found)

    def __call__(self, conn: Connection, row: dict[str, object]) -> str:
        """The id of the order's row: `row`'s, or that of the row already there."""
        order_id = str(row["order_id"])
        once = self.on_conflict.get(backend_of(conn))
        if once is None:
            found = self.find(conn, order_id)
            if found is not None:
                return found
            rowcount(conn, self.plain, row)
            return str(row["id"])
        if rowcount(conn, once, row) == 1:
            return str(row["id"])
        found = self.find(conn, order_id)
        assert found is not None, f"no row for order {order_id} after a conflict on it"
        return found


_PRESCRIPTION_ONCE = _InsertOnce.of(_P)
_RESERVATION_ONCE = _InsertOnce.of(_R)
_SHIPMENT_ONCE = _InsertOnce.of(_S)
_SHIPMENT_CANCEL = Prepared(
    update(_S)
    .where(_S.c.order_id == bindparam("p_order_id"), _S.c.status == ShipmentStatus.INITIATED.value)
    .values(status=ShipmentStatus.CANCELLED.value, updated_at=bindparam("p_now"))
)


class SqlAlchemyPrescriptionService(ports.PrescriptionService):
    """`patient_data`: seals the patient and the prescriber (None: stored as they are)."""

    def __init__(
        self, conn: Connection, now: Now = _utcnow, patient_data: PatientData | None = None
    ) -> None:
        self.conn = conn
        self.now = now
        self.patient_data = patient_data

    def _sealed(self, customer_id: str, order_id: str, column: str, value: str) -> str:
        if self.patient_data is None:
            return value
        place = table_place("prescriptions", order_id, column)
        return self.patient_data.seal_value(self.conn, customer_id, value, place)

    def create(
        self, order_id: str, details: PrescriptionDetails, today: date, *, customer_id: str
    ) -> str:
        if details.is_expired(today):
            existing = _PRESCRIPTION_ONCE.find(self.conn, order_id)
            if existing is not None:
                return existing
            raise PrescriptionExpired(f"prescription expired on {details.expires_on.isoformat()}")
        now = self.now()
        return _PRESCRIPTION_ONCE(
            self.conn,
            {
                "id": str(uuid.uuid4()),
                "order_id": order_id,
                "prescriber_id": self._sealed(
                    customer_id, order_id, "prescriber_id", details.prescriber_id
                ),
                "patient_name": self._sealed(
                    customer_id, order_id, "patient_name", details.patient_name
                ),
                "expires_on": details.expires_on,
                "status": PrescriptionStatus.ACTIVE.value,
                "created_at": now,
                "updated_at": now,
            },
        )

    def _move(self, order_id: str, to: PrescriptionStatus) -> None:
        rowcount(
            self.conn,
            _PRESCRIPTION_MOVE,
            {"p_order_id": order_id, "p_to": to.value, "p_now": self.now()},
        )

    def cancel(self, order_id: str) -> None:
        self._move(order_id, PrescriptionStatus.CANCELLED)

    def mark_dispensed(self, order_id: str) -> None:
        self._move(order_id, PrescriptionStatus.DISPENSED)


class SqlAlchemyInventoryService(ports.InventoryReservationService):
    def __init__(self, conn: Connection, now: Now = _utcnow) -> None:
        self.conn = conn
        self.now = now

    # --- stock levels (cold path: Core statements) -------------------------------------

    def _lock_sku(self, sku: str) -> bool:
        """Take the SKU row's lock (every change to the SKU's lots does, first); False
        when the SKU is unknown."""
        query = select(_I.c.sku).where(_I.c.sku == sku).with_for_update()
        return self.conn.execute(query).first() is not None

    def _create_sku(self, sku: str, dea_schedule: str | None, now: datetime) -> None:
        self.conn.execute(
            insert(_I).values(
                sku=sku, on_hand=0, reserved=0, dea_schedule=dea_schedule, updated_at=now
            )
        )

    def _lot(self, sku: str, lot: str) -> ports.LotLevel | None:
        query = select(*_LOT_COLUMNS).where(_L.c.sku == sku, _L.c.lot == lot)
        row = self.conn.execute(query).first()
        return ports.LotLevel(*row) if row else None

    def _lots(self, sku: str) -> tuple[ports.LotLevel, ...]:
        query = select(*_LOT_COLUMNS).where(_L.c.sku == sku).order_by(*_FEFO)
        return tuple(ports.LotLevel(*row) for row in self.conn.execute(query))

    def _put_lot(
        self, sku: str, lot: str, on_hand: int, expires_on: date | None, now: datetime
    ) -> ports.LotLevel:
        """Insert or update the lot (the SKU's lock held); InvalidInventory below what
        is reserved of it."""
        current = self._lot(sku, lot)
        if current is None:
            self.conn.execute(
                insert(_L).values(
                    sku=sku,
                    lot=lot,
                    on_hand=on_hand,
                    reserved=0,
                    expires_on=expires_on,
                    updated_at=now,
                )
            )
            return ports.LotLevel(sku, lot, on_hand, 0, expires_on)
        if on_hand < current.reserved:
            of = "" if lot == ports.DEFAULT_LOT else f" of lot {lot}"
            raise InvalidInventory(
                f"on_hand {on_hand} is below the {current.reserved} units reserved{of} for {sku}"
            )
        self.conn.execute(
            update(_L)
            .where(_L.c.sku == sku, _L.c.lot == lot)
            .values(on_hand=on_hand, expires_on=expires_on, updated_at=now)
        )
        return ports.LotLevel(sku, lot, on_hand, current.reserved, expires_on)

    def _total(
        self, sku: str, now: datetime, dea_schedule: str | ports.Unchanged | None
    ) -> ports.StockLevel:
        """Write the SKU's totals as the sums over its lots (and its schedule)."""
        lots = self._lots(sku)
        values: dict[str, object] = {
            "on_hand": sum(lot.on_hand for lot in lots),
            "reserved": sum(lot.reserved for lot in lots),
            "updated_at": now,
        }
        if dea_schedule is not ports.UNCHANGED:
            values["dea_schedule"] = dea_schedule
        self.conn.execute(update(_I).where(_I.c.sku == sku).values(**values))
        level = self.get(sku)
        assert level is not None
        return level

    def set_on_hand(
        self,
        sku: str,
        on_hand: int,
        dea_schedule: str | ports.Unchanged | None = ports.UNCHANGED,
    ) -> ports.StockLevel:
        if on_hand < 0:
            raise InvalidInventory("on_hand must be >= 0")
        _check_schedule(dea_schedule)
        now = self.now()
        if not self._lock_sku(sku):
            self._create_sku(sku, None if dea_schedule is ports.UNCHANGED else dea_schedule, now)
        # No `default` lot and nothing to put in it: the SKU's lots stay as they are.
        if on_hand > 0 or self._lot(sku, ports.DEFAULT_LOT) is not None:
            self._put_lot(sku, ports.DEFAULT_LOT, on_hand, None, now)
        return self._total(sku, now, dea_schedule)

    def set_lot(self, sku: str, lot: str, on_hand: int, expires_on: date) -> ports.LotLevel:
        if lot == ports.DEFAULT_LOT:
            raise DomainError(
                f"lot {ports.DEFAULT_LOT!r} holds the units without an expiry date: "
                "set them as the SKU's on_hand"
            )
        if on_hand < 0:
            raise InvalidInventory("on_hand must be >= 0")
        now = self.now()
        if not self._lock_sku(sku):
            self._create_sku(sku, None, now)
        level = self._put_lot(sku, lot, on_hand, expires_on, now)
        self._total(sku, now, ports.UNCHANGED)
        return level

    def get(self, sku: str) -> ports.StockLevel | None:
        query = select(_I.c.sku, _I.c.on_hand, _I.c.reserved, _I.c.dea_schedule).where(
            _I.c.sku == sku
        )
        row = self.conn.execute(query).first()
        if row is None:
            return None
        return ports.StockLevel(
            row.sku, row.on_hand, row.reserved, row.dea_schedule, self._lots(sku)
        )

    def lot_orders(self, sku: str, lot: str) -> list[tuple[str, int]] | None:
        if self._lot(sku, lot) is None:
            return None
        rows = self.conn.execute(lot_reservations(sku, lot))
        return [(str(order_id), int(quantity)) for order_id, quantity in rows]

    def controlled(self, skus: Iterable[str]) -> bool:
        wanted = sorted(set(skus))
        if not wanted:
            return False
        params = {f"p_sku{n}": sku for n, sku in enumerate(wanted)}
        return scalar(self.conn, _controlled(len(wanted)), params) is not None

    # --- the saga's hot path (raw cursor) -------------------------------------------------

    def reserve(
        self,
        order_id: str,
        lines: tuple[OrderLine, ...],
        *,
        today: date,
        min_shelf_life_days: int = 30,
    ) -> ports.Reservation:
        now = self.now()
        merged = merge_lines(lines)
        reservation_id = str(uuid.uuid4())
        # The order's reservation row first: if one exists, nothing is reserved again.
        stands = _RESERVATION_ONCE(
            self.conn,
            {
                "id": reservation_id,
                "order_id": order_id,
                "status": ReservationStatus.RESERVED.value,
                "lines": [line.to_dict() for line in merged],
                "created_at": now,
                "updated_at": now,
            },
        )
        if stands != reservation_id:
            return ports.Reservation(stands, self._allocations(order_id))
        usable_from = today + timedelta(days=min_shelf_life_days)
        # PostgreSQL takes and records each lot's units in one statement (CTEs that
        # change rows); the others record them all at the end, in one executemany.
        one_statement = backend_of(self.conn) == "postgresql"
        taken: list[LotAllocation] = []
        # SKUs in sorted order: concurrent reservations lock SKU rows in the same order.
        # The caller's transaction rolls back the row and whatever was taken so far.
        for line in merged:
            sku, wanted = line.sku, line.quantity
            params: dict[str, object] = {
                "p_sku": sku,
                "p_qty": wanted,
                "p_now": now,
                "p_from": usable_from,
            }
            # The SKU's total, conditionally: it locks the SKU (all of its lots' writers
            # take this lock first) and refuses an order more than the shelf holds.
            if one_statement:
                usable = fetch_all(self.conn, _RESERVE_SKU_USABLE_LOTS, params)
                if not usable:  # too little on the shelf, or none with the shelf life
                    raise InsufficientStock(
                        f"not enough {sku} available with {min_shelf_life_days} days of "
                        f"shelf life left for {wanted}"
                    )
            else:
                if rowcount(self.conn, _RESERVE_SKU, params) != 1:
                    raise InsufficientStock(f"not enough {sku} available for {wanted}")
                usable = fetch_all(self.conn, _USABLE_LOTS, params)
            for lot, free in usable:
                if int(free) <= 0:
                    continue
                quantity = min(wanted, int(free))
                params = {
                    "p_order_id": order_id,
                    "p_sku": sku,
                    "p_lot": lot,
                    "p_qty": quantity,
                    "p_now": now,
                    "p_position": len(taken),
                }
                statement = _RESERVE_LOT_RECORDED if one_statement else _RESERVE_LOT
                if rowcount(self.conn, statement, params) != 1:
                    raise InsufficientStock(f"lot {lot} of {sku} changed while reserving")
                taken.append(LotAllocation(sku, str(lot), quantity))
                wanted -= quantity
                if wanted == 0:
                    break
            if wanted > 0:
                raise InsufficientStock(
                    f"not enough {sku} with {min_shelf_life_days} days of shelf life "
                    f"left for {line.quantity}"
                )
        if not one_statement:
            execute_many(
                self.conn,
                _ALLOCATION_INSERT,
                [
                    {
                        "order_id": order_id,
                        "sku": a.sku,
                        "lot": a.lot,
                        "quantity": a.quantity,
                        "position": position,
                    }
                    for position, a in enumerate(taken)
                ],
            )
        return ports.Reservation(reservation_id, tuple(taken))

    def _allocations(self, order_id: str) -> tuple[LotAllocation, ...]:
        rows = fetch_all(self.conn, _ALLOCATIONS, {"p_order_id": order_id})
        return tuple(LotAllocation(str(sku), str(lot), int(q)) for sku, lot, q in rows)

    def _settle(self, order_id: str, to: ReservationStatus) -> None:
        now = self.now()
        params = {"p_order_id": order_id, "p_to": to.value, "p_now": now}
        if backend_of(self.conn) == "postgresql":  # the settle and the read of its lots
            rows = fetch_all(self.conn, _SETTLE_ALLOCATIONS, params)
        elif rowcount(self.conn, _RESERVATION_SETTLE, params) == 1:
            rows = fetch_all(self.conn, _ALLOCATIONS, params)
        else:
            rows = []
        if not rows:
            return  # nothing reserved, or already released/consumed: nothing to do
        consume = to is ReservationStatus.CONSUMED
        by_sku: dict[str, list[tuple[str, int]]] = {}
        for sku, lot, quantity in rows:  # SKUs in sorted order: the lock order of reserve
            by_sku.setdefault(str(sku), []).append((str(lot), int(quantity)))
        for sku, lots in by_sku.items():
            total = sum(quantity for _, quantity in lots)
            rowcount(
                self.conn,
                _CONSUME_LINE if consume else _RELEASE_LINE,
                {"p_sku": sku, "p_qty": total, "p_now": now},
            )
            for lot, quantity in lots:
                rowcount(
                    self.conn,
                    _CONSUME_LOT if consume else _RELEASE_LOT,
                    {"p_sku": sku, "p_lot": lot, "p_qty": quantity, "p_now": now},
                )

    def release(self, order_id: str) -> None:
        self._settle(order_id, ReservationStatus.RELEASED)

    def consume(self, order_id: str) -> None:
        self._settle(order_id, ReservationStatus.CONSUMED)


class SqlAlchemyShipmentService(ports.ShipmentService):
    def __init__(self, conn: Connection, now: Now = _utcnow) -> None:
        self.conn = conn
        self.now = now

    def record_initiated(self, order_id: str, booking: ports.Booking, country: str) -> str:
        now = self.now()
        return _SHIPMENT_ONCE(
            self.conn,
            {
                "id": str(uuid.uuid4()),
                "order_id": order_id,
                "carrier": booking.carrier,
                "tracking_number": booking.tracking_number,
                "country": country,
                "status": ShipmentStatus.INITIATED.value,
                "created_at": now,
                "updated_at": now,
            },
        )

    def cancel(self, order_id: str) -> None:
        rowcount(self.conn, _SHIPMENT_CANCEL, {"p_order_id": order_id, "p_now": self.now()})

    def order_of(self, tracking_number: str) -> str | None:
        found = self.conn.execute(
            select(_S.c.order_id).where(_S.c.tracking_number == tracking_number).limit(1)
        ).scalar_one_or_none()
        return None if found is None else str(found)

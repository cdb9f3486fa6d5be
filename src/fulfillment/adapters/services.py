"""State-stored services (prescriptions, inventory, shipments), like the models of the original.

Each effect is keyed by the order: unique `order_id` columns make a second prescription,
reservation or shipment for one order impossible (docs/architecture.md, rule 5), and
every change is conditional on the current status, so running it twice changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import Connection, Table, bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import backend_of
from fulfillment.adapters.prepared import Prepared, rowcount, scalar
from fulfillment.domain.errors import InsufficientStock, InvalidInventory, PrescriptionExpired
from fulfillment.domain.status import PrescriptionStatus, ReservationStatus, ShipmentStatus
from fulfillment.domain.values import OrderLine, PrescriptionDetails, merge_lines
from fulfillment.service_layer import ports

Now = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


# The step path's statements: built once, run on the raw cursor (adapters/prepared.py).
_P, _I, _R, _S = t.prescriptions, t.inventory, t.inventory_reservations, t.shipments
_PRESCRIPTION_MOVE = Prepared(
    update(_P)
    .where(_P.c.order_id == bindparam("p_order_id"), _P.c.status == PrescriptionStatus.ACTIVE.value)
    .values(status=bindparam("p_to"), updated_at=bindparam("p_now"))
)
_RESERVE_LINE = Prepared(
    update(_I)
    .where(_I.c.sku == bindparam("p_sku"), _I.c.on_hand - _I.c.reserved >= bindparam("p_qty"))
    .values(reserved=_I.c.reserved + bindparam("p_qty"), updated_at=bindparam("p_now"))
)
_RESERVATION_SETTLE = Prepared(
    update(_R)
    .where(
        _R.c.order_id == bindparam("p_order_id"), _R.c.status == ReservationStatus.RESERVED.value
    )
    .values(status=bindparam("p_to"), updated_at=bindparam("p_now"))
)
_RESERVATION_LINES = Prepared(select(_R.c.lines).where(_R.c.order_id == bindparam("p_order_id")))
#: The settle and the read of its lines in one statement where UPDATE ... RETURNING exists.
_RESERVATION_SETTLE_RETURNING = Prepared(
    update(_R)
    .where(
        _R.c.order_id == bindparam("p_order_id"), _R.c.status == ReservationStatus.RESERVED.value
    )
    .values(status=bindparam("p_to"), updated_at=bindparam("p_now"))
    .returning(_R.c.lines)
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
    def __init__(self, conn: Connection, now: Now = _utcnow) -> None:
        self.conn = conn
        self.now = now

    def create(self, order_id: str, details: PrescriptionDetails, today: date) -> str:
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
                "prescriber_id": details.prescriber_id,
                "patient_name": details.patient_name,
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

    def get(self, sku: str, *, for_update: bool = False) -> ports.StockLevel | None:
        query = select(t.inventory.c.sku, t.inventory.c.on_hand, t.inventory.c.reserved).where(
            t.inventory.c.sku == sku
        )
        if for_update:
            query = query.with_for_update()
        row = self.conn.execute(query).first()
        return ports.StockLevel(row.sku, row.on_hand, row.reserved) if row else None

    def set_on_hand(self, sku: str, on_hand: int) -> ports.StockLevel:
        if on_hand < 0:
            raise InvalidInventory("on_hand must be >= 0")
        current = self.get(sku, for_update=True)
        if current is None:
            self.conn.execute(
                insert(t.inventory).values(
                    sku=sku, on_hand=on_hand, reserved=0, updated_at=self.now()
                )
            )
            return ports.StockLevel(sku, on_hand, 0)
        if on_hand < current.reserved:
            raise InvalidInventory(
                f"on_hand {on_hand} is below the {current.reserved} units reserved for {sku}"
            )
        self.conn.execute(
            update(t.inventory)
            .where(t.inventory.c.sku == sku)
            .values(on_hand=on_hand, updated_at=self.now())
        )
        return ports.StockLevel(sku, on_hand, current.reserved)

    def reserve(self, order_id: str, lines: tuple[OrderLine, ...]) -> str:
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
            return stands
        # SKUs in sorted order: concurrent reservations lock rows in the same order.
        for line in merged:
            params = {"p_sku": line.sku, "p_qty": line.quantity, "p_now": now}
            if rowcount(self.conn, _RESERVE_LINE, params) != 1:
                # The caller's transaction rolls back the row and the lines reserved so far.
                raise InsufficientStock(f"not enough {line.sku} available for {line.quantity}")
        return reservation_id

    def _settle(self, order_id: str, to: ReservationStatus) -> None:
        now = self.now()
        params = {"p_order_id": order_id, "p_to": to.value, "p_now": now}
        if backend_of(self.conn) == "mysql":  # no UPDATE ... RETURNING
            moved = rowcount(self.conn, _RESERVATION_SETTLE, params) == 1
            lines = scalar(self.conn, _RESERVATION_LINES, params) if moved else None
        else:
            lines = scalar(self.conn, _RESERVATION_SETTLE_RETURNING, params)
        if lines is None:
            return  # nothing reserved, or already released/consumed: nothing to do
        statement = _CONSUME_LINE if to is ReservationStatus.CONSUMED else _RELEASE_LINE
        for raw in sorted(lines, key=lambda line: line["sku"]):
            rowcount(
                self.conn,
                statement,
                {"p_sku": raw["sku"], "p_qty": int(raw["quantity"]), "p_now": now},
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

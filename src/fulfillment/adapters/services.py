"""State-stored services (prescriptions, inventory, shipments), like the models of the original.

Each effect is keyed by the order: unique `order_id` columns make a second prescription,
reservation or shipment for one order impossible (DESIGN.md section 3, rule 5), and
every change is conditional on the current status, so running it twice changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime

from sqlalchemy import Connection, bindparam, insert, select, update

from fulfillment.adapters import tables as t
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
_PRESCRIPTION_OF = Prepared(select(_P.c.id).where(_P.c.order_id == bindparam("p_order_id")))
_PRESCRIPTION_MOVE = Prepared(
    update(_P)
    .where(_P.c.order_id == bindparam("p_order_id"), _P.c.status == PrescriptionStatus.ACTIVE.value)
    .values(status=bindparam("p_to"), updated_at=bindparam("p_now"))
)
_RESERVATION_OF = Prepared(select(_R.c.id).where(_R.c.order_id == bindparam("p_order_id")))
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
_SHIPMENT_OF = Prepared(select(_S.c.id).where(_S.c.order_id == bindparam("p_order_id")))
_INSERT_PRESCRIPTION = Prepared(insert(_P), column_keys=[c.name for c in _P.columns])
_INSERT_RESERVATION = Prepared(insert(_R), column_keys=[c.name for c in _R.columns])
_INSERT_SHIPMENT = Prepared(insert(_S), column_keys=[c.name for c in _S.columns])
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
        existing = scalar(self.conn, _PRESCRIPTION_OF, {"p_order_id": order_id})
        if existing is not None:
            return str(existing)
        if details.is_expired(today):
            raise PrescriptionExpired(f"prescription expired on {details.expires_on.isoformat()}")
        prescription_id = str(uuid.uuid4())
        now = self.now()
        rowcount(
            self.conn,
            _INSERT_PRESCRIPTION,
            {
                "id": prescription_id,
                "order_id": order_id,
                "prescriber_id": details.prescriber_id,
                "patient_name": details.patient_name,
                "expires_on": details.expires_on,
                "status": PrescriptionStatus.ACTIVE.value,
                "created_at": now,
                "updated_at": now,
            },
        )
        return prescription_id

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
        existing = scalar(self.conn, _RESERVATION_OF, {"p_order_id": order_id})
        if existing is not None:
            return str(existing)
        now = self.now()
        merged = merge_lines(lines)
        # SKUs in sorted order: concurrent reservations lock rows in the same order.
        for line in merged:
            params = {"p_sku": line.sku, "p_qty": line.quantity, "p_now": now}
            if rowcount(self.conn, _RESERVE_LINE, params) != 1:
                # The caller's transaction rolls back the lines reserved so far.
                raise InsufficientStock(f"not enough {line.sku} available for {line.quantity}")
        reservation_id = str(uuid.uuid4())
        rowcount(
            self.conn,
            _INSERT_RESERVATION,
            {
                "id": reservation_id,
                "order_id": order_id,
                "status": ReservationStatus.RESERVED.value,
                "lines": [line.to_dict() for line in merged],
                "created_at": now,
                "updated_at": now,
            },
        )
        return reservation_id

    def _settle(self, order_id: str, to: ReservationStatus) -> None:
        now = self.now()
        moved = rowcount(
            self.conn, _RESERVATION_SETTLE, {"p_order_id": order_id, "p_to": to.value, "p_now": now}
        )
        if moved != 1:
            return  # nothing reserved, or already released/consumed: nothing to do
        lines = scalar(self.conn, _RESERVATION_LINES, {"p_order_id": order_id})
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
        existing = scalar(self.conn, _SHIPMENT_OF, {"p_order_id": order_id})
        if existing is not None:
            return str(existing)
        shipment_id = str(uuid.uuid4())
        now = self.now()
        rowcount(
            self.conn,
            _INSERT_SHIPMENT,
            {
                "id": shipment_id,
                "order_id": order_id,
                "carrier": booking.carrier,
                "tracking_number": booking.tracking_number,
                "country": country,
                "status": ShipmentStatus.INITIATED.value,
                "created_at": now,
                "updated_at": now,
            },
        )
        return shipment_id

    def cancel(self, order_id: str) -> None:
        rowcount(self.conn, _SHIPMENT_CANCEL, {"p_order_id": order_id, "p_now": self.now()})

"""Prescriptions, inventory and shipments: idempotent per order, guarded by the schema."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

import pytest
from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from fulfillment.adapters import tables as t
from fulfillment.adapters.patient_data import table_place
from fulfillment.adapters.phi_crypto import CryptoError
from fulfillment.bootstrap import App
from fulfillment.domain.errors import InsufficientStock, InvalidInventory, PrescriptionExpired
from fulfillment.domain.values import OrderLine, PrescriptionDetails
from fulfillment.service_layer.ports import Booking, StockLevel

TODAY = date(2030, 5, 1)
VALID = PrescriptionDetails("dr-1", "Pat Doe", date(2030, 12, 31))
NOW = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)


def status_of(app: App, table: Table, order_id: str) -> str:
    with app.engine.connect() as conn:
        return str(
            conn.execute(select(table.c.status).where(table.c.order_id == order_id)).scalar_one()
        )


def rows(app: App, table: Table) -> int:
    with app.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def stock(app: App, sku: str) -> StockLevel | None:
    with app.uow() as uow:
        return uow.inventory.get(sku)


def set_stock(app: App, **levels: int) -> None:
    with app.uow() as uow:
        for sku, on_hand in levels.items():
            uow.inventory.set_on_hand(sku, on_hand)
        uow.commit()


def reserve(app: App, order_id: str, *lines: tuple[str, int]) -> str:
    with app.uow() as uow:
        reservation = uow.inventory.reserve(
            order_id, tuple(OrderLine(s, q) for s, q in lines), today=TODAY
        )
        uow.commit()
    return reservation.reservation_id


# --- prescriptions --------------------------------------------------------------------


def place(order_id: str, column: str) -> str:
    return table_place("prescriptions", order_id, column)


def test_a_prescription_is_created_once_per_order(app: App) -> None:
    with app.uow() as uow:
        first = uow.prescriptions.create("o1", VALID, TODAY, customer_id="c1")
        uow.commit()
    other = PrescriptionDetails("dr-2", "Someone Else", date(2031, 1, 1))
    with app.uow() as uow:
        again = uow.prescriptions.create("o1", other, TODAY, customer_id="c1")
        uow.commit()

    assert again == first
    assert rows(app, t.prescriptions) == 1
    assert status_of(app, t.prescriptions, "o1") == "active"
    with app.engine.connect() as conn:
        row = conn.execute(select(t.prescriptions)).one()
        # Stored sealed (adapters/patient_data.py), bound to their row and column.
        assert "Pat Doe" not in f"{row.prescriber_id}{row.patient_name}"
        opened = [
            app.patient_data.open_value(conn, row._mapping[column], place("o1", column))
            for column in ("prescriber_id", "patient_name")
        ]
        with pytest.raises(CryptoError):
            app.patient_data.open_value(conn, row.patient_name, place("o2", "patient_name"))
    assert (*opened, row.expires_on) == ("dr-1", "Pat Doe", VALID.expires_on)


def test_an_expired_prescription_is_refused_and_nothing_is_stored(app: App) -> None:
    expired = PrescriptionDetails("dr-1", "Pat Doe", date(2030, 4, 30))
    with pytest.raises(PrescriptionExpired), app.uow() as uow:
        uow.prescriptions.create("o1", expired, TODAY, customer_id="c1")
    assert rows(app, t.prescriptions) == 0
    # Expiring today is still valid.
    with app.uow() as uow:
        uow.prescriptions.create(
            "o2", PrescriptionDetails("dr", "P", TODAY), TODAY, customer_id="c1"
        )
        uow.commit()
    assert rows(app, t.prescriptions) == 1


@pytest.mark.parametrize(
    ("first", "then", "final"),
    [("cancel", "mark_dispensed", "cancelled"), ("mark_dispensed", "cancel", "dispensed")],
)
def test_a_prescription_leaves_active_only_once(
    app: App, first: str, then: str, final: str
) -> None:
    with app.uow() as uow:
        uow.prescriptions.create("o1", VALID, TODAY, customer_id="c1")
        uow.commit()
    for action in (first, first, then):
        with app.uow() as uow:
            getattr(uow.prescriptions, action)("o1")
            uow.commit()
    assert status_of(app, t.prescriptions, "o1") == final
    with app.uow() as uow:  # an order without a prescription: nothing to do, no error
        uow.prescriptions.cancel("unknown")
        uow.commit()


# --- inventory ------------------------------------------------------------------------


def test_setting_stock_creates_and_updates_the_level(app: App) -> None:
    assert stock(app, "A") is None
    set_stock(app, A=7)
    assert stock(app, "A") == StockLevel("A", 7, 0)
    set_stock(app, A=3)
    level = stock(app, "A")
    assert level == StockLevel("A", 3, 0) and level.available == 3


def test_skus_differing_in_case_or_trailing_space_are_different_products(app: App) -> None:
    with app.uow() as uow:
        for sku, on_hand in (("abc", 1), ("ABC", 2), ("abc ", 3)):
            uow.inventory.set_on_hand(sku, on_hand)
        uow.commit()
    assert [stock(app, sku) for sku in ("abc", "ABC", "abc ")] == [
        StockLevel("abc", 1, 0),
        StockLevel("ABC", 2, 0),
        StockLevel("abc ", 3, 0),
    ]


def test_stock_cannot_be_set_below_what_is_reserved(app: App) -> None:
    set_stock(app, A=10)
    reserve(app, "o1", ("A", 6))

    with pytest.raises(InvalidInventory), app.uow() as uow:
        uow.inventory.set_on_hand("A", 5)
    with pytest.raises(InvalidInventory), app.uow() as uow:
        uow.inventory.set_on_hand("A", -1)
    assert stock(app, "A") == StockLevel("A", 10, 6)

    set_stock(app, A=6)
    assert stock(app, "A") == StockLevel("A", 6, 6)


def test_a_reservation_is_all_or_nothing_across_lines(app: App) -> None:
    set_stock(app, A=10, B=1, C=10)

    with pytest.raises(InsufficientStock), app.uow() as uow:
        uow.inventory.reserve(
            "o1", (OrderLine("A", 2), OrderLine("B", 5), OrderLine("C", 1)), today=TODAY
        )
    with pytest.raises(InsufficientStock), app.uow() as uow:
        uow.inventory.reserve("o2", (OrderLine("A", 1), OrderLine("UNKNOWN", 1)), today=TODAY)

    assert [stock(app, s) for s in "ABC"] == [
        StockLevel("A", 10, 0),
        StockLevel("B", 1, 0),
        StockLevel("C", 10, 0),
    ]
    assert rows(app, t.inventory_reservations) == 0
    assert rows(app, t.reservation_lots) == 0


def test_a_reservation_is_made_once_per_order(app: App) -> None:
    set_stock(app, A=10, B=10)
    first = reserve(app, "o1", ("B", 1), ("A", 2), ("B", 3))
    again = reserve(app, "o1", ("B", 1), ("A", 2), ("B", 3))

    assert again == first
    assert stock(app, "A") == StockLevel("A", 10, 2)
    assert stock(app, "B") == StockLevel("B", 10, 4)
    with app.engine.connect() as conn:
        lines = conn.execute(select(t.inventory_reservations.c.lines)).scalar_one()
        taken = conn.execute(
            select(t.reservation_lots).order_by(t.reservation_lots.c.position)
        ).all()
    assert lines == [{"sku": "A", "quantity": 2}, {"sku": "B", "quantity": 4}]
    assert [tuple(row) for row in taken] == [
        ("o1", "A", "default", 2, 0),
        ("o1", "B", "default", 4, 1),
    ]


def test_releasing_twice_gives_the_stock_back_once(app: App) -> None:
    set_stock(app, A=10)
    reserve(app, "o1", ("A", 4))
    reserve(app, "o2", ("A", 3))
    for _ in range(2):
        with app.uow() as uow:
            uow.inventory.release("o1")
            uow.commit()

    assert stock(app, "A") == StockLevel("A", 10, 3)
    assert status_of(app, t.inventory_reservations, "o1") == "released"
    with app.uow() as uow:  # consuming a released reservation takes nothing off the shelf
        uow.inventory.consume("o1")
        uow.commit()
    assert stock(app, "A") == StockLevel("A", 10, 3)


def test_consuming_twice_takes_the_stock_off_the_shelf_once(app: App) -> None:
    set_stock(app, A=10, B=5)
    reserve(app, "o1", ("A", 4), ("B", 5))
    for _ in range(2):
        with app.uow() as uow:
            uow.inventory.consume("o1")
            uow.commit()

    assert stock(app, "A") == StockLevel("A", 6, 0)
    assert stock(app, "B") == StockLevel("B", 0, 0)
    assert status_of(app, t.inventory_reservations, "o1") == "consumed"
    with app.uow() as uow:  # releasing afterwards gives nothing back
        uow.inventory.release("o1")
        uow.inventory.release("never-reserved")
        uow.commit()
    assert stock(app, "A") == StockLevel("A", 6, 0)


def test_the_schema_refuses_more_reserved_than_on_hand(app: App) -> None:
    set_stock(app, A=5)
    for reserved in (6, -1):
        with pytest.raises(DBAPIError), app.engine.begin() as conn:
            conn.execute(
                update(t.inventory).where(t.inventory.c.sku == "A").values(reserved=reserved)
            )
    assert stock(app, "A") == StockLevel("A", 5, 0)


def test_the_schema_refuses_more_reserved_than_on_hand_in_a_lot(app: App) -> None:
    with app.uow() as uow:
        uow.inventory.set_lot("A", "L1", 5, date(2031, 1, 1))
        uow.commit()
    lots = t.inventory_lots
    for reserved in (6, -1):
        with pytest.raises(DBAPIError), app.engine.begin() as conn:
            conn.execute(update(lots).where(lots.c.lot == "L1").values(reserved=reserved))
    with app.engine.connect() as conn:
        assert conn.execute(select(lots.c.on_hand, lots.c.reserved)).one() == (5, 0)


def test_lots_differing_in_case_or_trailing_space_are_different_lots(app: App) -> None:
    with app.uow() as uow:
        for lot, on_hand in (("l1", 1), ("L1", 2), ("l1 ", 3)):
            uow.inventory.set_lot("A", lot, on_hand, date(2031, 1, 1))
        uow.commit()
    level = stock(app, "A")
    assert level is not None and level.on_hand == 6
    assert sorted((lot.lot, lot.on_hand) for lot in level.lots) == [
        ("L1", 2),
        ("l1", 1),
        ("l1 ", 3),
    ]


def test_a_stock_change_updates_the_skus_row_with_the_sums_over_its_lots(app: App) -> None:
    set_stock(app, A=4)
    with app.uow() as uow:
        uow.inventory.set_lot("A", "L1", 6, date(2031, 1, 1))
        uow.commit()
    reserve(app, "o1", ("A", 7))
    with app.engine.connect() as conn:
        row = conn.execute(select(t.inventory.c.on_hand, t.inventory.c.reserved)).one()
    assert tuple(row) == (10, 7)


# --- shipments ------------------------------------------------------------------------


def test_a_shipment_is_recorded_once_per_order_and_cancelled_once(app: App) -> None:
    with app.uow() as uow:
        first = uow.shipments.record_initiated("o1", Booking("SimCarrier", "TRK-1"), "US")
        uow.commit()
    with app.uow() as uow:
        again = uow.shipments.record_initiated("o1", Booking("SimCarrier", "TRK-2"), "GB")
        uow.commit()

    assert again == first
    assert rows(app, t.shipments) == 1
    with app.engine.connect() as conn:
        row = conn.execute(select(t.shipments)).one()
    assert (row.tracking_number, row.country, row.status) == ("TRK-1", "US", "initiated")

    for _ in range(2):
        with app.uow() as uow:
            uow.shipments.cancel("o1")
            uow.commit()
    assert status_of(app, t.shipments, "o1") == "cancelled"


# --- one effect per order, enforced by the schema -------------------------------------


def _prescription(order_id: str) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "order_id": order_id,
        "prescriber_id": "dr",
        "patient_name": "P",
        "expires_on": VALID.expires_on,
        "status": "active",
        "created_at": NOW,
        "updated_at": NOW,
    }


def _reservation(order_id: str) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "order_id": order_id,
        "status": "reserved",
        "lines": [{"sku": "A", "quantity": 1}],
        "created_at": NOW,
        "updated_at": NOW,
    }


def _shipment(order_id: str) -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "order_id": order_id,
        "carrier": "SimCarrier",
        "tracking_number": "TRK",
        "country": "US",
        "status": "initiated",
        "created_at": NOW,
        "updated_at": NOW,
    }


@pytest.mark.parametrize(
    ("table", "row"),
    [
        (t.prescriptions, _prescription),
        (t.inventory_reservations, _reservation),
        (t.shipments, _shipment),
    ],
    ids=["prescription", "reservation", "shipment"],
)
def test_the_schema_allows_one_effect_per_order(app: App, table: Table, row: Any) -> None:
    with app.engine.begin() as conn:
        conn.execute(insert(table).values(row("o1")))
        conn.execute(insert(table).values(row("o2")))
    with pytest.raises(IntegrityError), app.engine.begin() as conn:
        conn.execute(insert(table).values(row("o1")))
    assert rows(app, table) == 2

"""The inventory service's contract (stock by lot, first expiry first out, recalls, DEA
schedules), written once and run on the in-memory fake (`FakeInventoryService`, which
the unit tests rely on) and on the SQL service of every backend, each operation in a
unit of work of its own that commits (or rolls back on an error), as handlers run them.

After every test, each SKU's totals must be the sums over its lots, and every lot must
hold `0 <= reserved <= on_hand`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta

import pytest
from conftest import empty_database, settings_for
from unit.fakes import FakeDatabase, FakeUnitOfWork

from fulfillment.bootstrap import bootstrap
from fulfillment.domain.errors import DomainError, InsufficientStock, InvalidInventory
from fulfillment.domain.values import LotAllocation, OrderLine
from fulfillment.service_layer.ports import (
    DEFAULT_LOT,
    UNCHANGED,
    LotLevel,
    Reservation,
    StockLevel,
    Unchanged,
)
from fulfillment.service_layer.unit_of_work import AbstractUnitOfWork

TODAY = date(2030, 5, 1)


def day(n: int) -> date:
    """`n` days after TODAY."""
    return TODAY + timedelta(days=n)


@dataclass
class Stock:
    """One implementation under test, each call in a committed unit of work."""

    make_uow: Callable[[], AbstractUnitOfWork]
    skus: set[str] = field(default_factory=set)

    def set(
        self, sku: str, on_hand: int, dea_schedule: str | Unchanged | None = UNCHANGED
    ) -> StockLevel:
        self.skus.add(sku)
        with self.make_uow() as uow:
            level = uow.inventory.set_on_hand(sku, on_hand, dea_schedule)
            uow.commit()
        return level

    def lot(self, sku: str, lot: str, on_hand: int, expires_on: date) -> LotLevel:
        self.skus.add(sku)
        with self.make_uow() as uow:
            level = uow.inventory.set_lot(sku, lot, on_hand, expires_on)
            uow.commit()
        return level

    def reserve(self, order_id: str, *lines: tuple[str, int], days: int = 30) -> Reservation:
        with self.make_uow() as uow:
            reservation = uow.inventory.reserve(
                order_id,
                tuple(OrderLine(sku, qty) for sku, qty in lines),
                today=TODAY,
                min_shelf_life_days=days,
            )
            uow.commit()
        return reservation

    def release(self, order_id: str) -> None:
        with self.make_uow() as uow:
            uow.inventory.release(order_id)
            uow.commit()

    def consume(self, order_id: str) -> None:
        with self.make_uow() as uow:
            uow.inventory.consume(order_id)
            uow.commit()

    def get(self, sku: str) -> StockLevel | None:
        with self.make_uow() as uow:
            return uow.inventory.get(sku)

    def lots(self, sku: str) -> dict[str, tuple[int, int]]:
        """lot -> (on_hand, reserved), in the order `get` lists the lots."""
        level = self.get(sku)
        assert level is not None
        return {lot.lot: (lot.on_hand, lot.reserved) for lot in level.lots}

    def lot_orders(self, sku: str, lot: str) -> list[tuple[str, int]] | None:
        with self.make_uow() as uow:
            return uow.inventory.lot_orders(sku, lot)

    def controlled(self, *skus: str) -> bool:
        with self.make_uow() as uow:
            return uow.inventory.controlled(skus)


def lots_of(*allocations: tuple[str, str, int]) -> tuple[LotAllocation, ...]:
    return tuple(LotAllocation(*a) for a in allocations)


@pytest.fixture(params=["fake", "sqlite", "postgresql", "mysql"])
def stock(request: pytest.FixtureRequest, _migrated_urls: dict[str, str]) -> Iterator[Stock]:
    if request.param == "fake":
        db = FakeDatabase()
        implementation = Stock(lambda: FakeUnitOfWork(db))
        yield implementation
    else:
        url = _migrated_urls[str(request.param)]
        empty_database(url)
        app = bootstrap(settings_for(url))
        implementation = Stock(lambda: app.uow())
        try:
            yield implementation
        finally:
            try:
                _check_invariants(implementation)
            finally:
                app.close()
        return
    _check_invariants(implementation)


def _check_invariants(stock: Stock) -> None:
    for sku in stock.skus:
        level = stock.get(sku)
        assert level is not None
        assert level.on_hand == sum(lot.on_hand for lot in level.lots), level
        assert level.reserved == sum(lot.reserved for lot in level.lots), level
        for lot in level.lots:
            assert 0 <= lot.reserved <= lot.on_hand, lot
            assert lot.available == lot.on_hand - lot.reserved


# --- first expiry, first out --------------------------------------------------------------


def test_units_come_from_the_earliest_expiry_first_and_from_the_default_lot_last(
    stock: Stock,
) -> None:
    # Names in another order than expiry dates, so the order by name is no help.
    stock.set("A", 10)
    stock.lot("A", "x-late", 2, day(300))
    stock.lot("A", "A-LATER", 5, day(200))
    stock.lot("A", "B-EARLY", 5, day(100))

    assert stock.reserve("o1", ("A", 3)).lots == lots_of(("A", "B-EARLY", 3))
    # A line split over two lots, the earlier emptied first.
    assert stock.reserve("o2", ("A", 4)).lots == lots_of(("A", "B-EARLY", 2), ("A", "A-LATER", 2))
    assert stock.reserve("o3", ("A", 7)).lots == lots_of(
        ("A", "A-LATER", 3), ("A", "x-late", 2), ("A", DEFAULT_LOT, 2)
    )

    assert stock.lots("A") == {
        "B-EARLY": (5, 5),
        "A-LATER": (5, 5),
        "x-late": (2, 2),
        DEFAULT_LOT: (10, 2),
    }
    assert stock.get("A") == StockLevel("A", 22, 14)


def test_lots_are_listed_first_expiry_first_then_by_name_without_expiry_last(
    stock: Stock,
) -> None:
    stock.set("A", 1)
    for name, expires in (("B", day(60)), ("Z", day(40)), ("A", day(60)), ("C", day(50))):
        stock.lot("A", name, 1, expires)

    level = stock.get("A")
    assert level is not None
    assert [(lot.lot, lot.expires_on) for lot in level.lots] == [
        ("Z", day(40)),
        ("C", day(50)),
        ("A", day(60)),
        ("B", day(60)),
        (DEFAULT_LOT, None),
    ]
    # Equal expiry: by name, as listed.
    assert stock.reserve("o1", ("A", 4)).lots == lots_of(
        ("A", "Z", 1), ("A", "C", 1), ("A", "A", 1), ("A", "B", 1)
    )


def test_lots_without_the_shelf_life_asked_for_are_skipped_the_boundary_lot_is_used(
    stock: Stock,
) -> None:
    stock.lot("A", "SHORT", 10, day(29))  # one day short of 30 days left
    stock.lot("A", "EDGE", 3, day(30))  # exactly 30 days left: usable
    stock.lot("A", "LONG", 10, day(60))

    assert stock.reserve("o1", ("A", 5), days=30).lots == lots_of(
        ("A", "EDGE", 3), ("A", "LONG", 2)
    )
    with pytest.raises(InsufficientStock):  # 10 units on the shelf, 8 with the shelf life
        stock.reserve("o2", ("A", 9), days=30)
    assert stock.lots("A") == {"SHORT": (10, 0), "EDGE": (3, 3), "LONG": (10, 2)}

    # A shorter shelf life asked for: the short lot is used, first.
    assert stock.reserve("o3", ("A", 2), days=29).lots == lots_of(("A", "SHORT", 2))


def test_with_no_shelf_life_asked_for_a_lot_expiring_today_is_used_an_expired_one_not(
    stock: Stock,
) -> None:
    stock.lot("A", "EXPIRED", 5, day(-1))
    stock.lot("A", "TODAY", 1, day(0))

    assert stock.reserve("o1", ("A", 1), days=0).lots == lots_of(("A", "TODAY", 1))
    with pytest.raises(InsufficientStock):
        stock.reserve("o2", ("A", 1), days=0)
    assert stock.lots("A") == {"EXPIRED": (5, 0), "TODAY": (1, 1)}


def test_a_reservation_is_all_or_nothing_across_lines(stock: Stock) -> None:
    stock.set("A", 10)
    stock.lot("B", "B-SHORT", 10, day(5))
    stock.lot("B", "B-OK", 1, day(365))
    stock.set("C", 10)

    with pytest.raises(InsufficientStock):  # B has 11 units, only 1 with the shelf life
        stock.reserve("o1", ("A", 2), ("B", 2), ("C", 1))
    with pytest.raises(InsufficientStock):
        stock.reserve("o2", ("A", 1), ("UNKNOWN", 1))
    with pytest.raises(InsufficientStock):  # more than on the shelf
        stock.reserve("o3", ("C", 11))

    for sku, on_hand in (("A", 10), ("B", 11), ("C", 10)):
        assert stock.get(sku) == StockLevel(sku, on_hand, 0)
    assert stock.lots("B") == {"B-SHORT": (10, 0), "B-OK": (1, 0)}
    assert stock.lot_orders("A", DEFAULT_LOT) == []
    # Nothing of o1 stands: it may be reserved again, from what is there.
    assert stock.reserve("o1", ("A", 2), ("B", 1)).lots == lots_of(
        ("A", DEFAULT_LOT, 2), ("B", "B-OK", 1)
    )


def test_lines_of_one_sku_are_merged_and_skus_come_in_sorted_order(stock: Stock) -> None:
    stock.set("A", 10)
    stock.set("B", 10)

    reservation = stock.reserve("o1", ("B", 1), ("A", 2), ("B", 3))

    assert reservation.lots == lots_of(("A", DEFAULT_LOT, 2), ("B", DEFAULT_LOT, 4))
    assert stock.get("B") == StockLevel("B", 10, 4)


def test_a_second_reserve_of_an_order_takes_nothing_and_returns_the_first_reservation(
    stock: Stock,
) -> None:
    stock.set("A", 10)
    stock.lot("A", "L1", 2, day(100))
    first = stock.reserve("o1", ("A", 5))
    assert first.lots == lots_of(("A", "L1", 2), ("A", DEFAULT_LOT, 3))

    stock.lot("A", "L0", 10, day(50))  # an earlier lot arrives meanwhile
    again = stock.reserve("o1", ("A", 5))

    assert again == first
    assert stock.lots("A") == {"L0": (10, 0), "L1": (2, 2), DEFAULT_LOT: (10, 3)}


# --- release and consume ------------------------------------------------------------------


def test_releasing_gives_each_lot_its_units_back_once(stock: Stock) -> None:
    stock.set("A", 10)
    stock.lot("A", "L1", 3, day(100))
    stock.reserve("o1", ("A", 5))  # L1: 3, default: 2
    stock.reserve("o2", ("A", 1))  # default: 1
    for _ in range(2):
        stock.release("o1")

    assert stock.lots("A") == {"L1": (3, 0), DEFAULT_LOT: (10, 1)}
    stock.consume("o1")  # released: consuming takes nothing off the shelf
    assert stock.get("A") == StockLevel("A", 13, 1)
    stock.release("never-reserved")


def test_consuming_takes_the_units_off_each_lots_shelf_once(stock: Stock) -> None:
    stock.set("A", 10)
    stock.lot("A", "L1", 3, day(100))
    stock.set("B", 5)
    stock.reserve("o1", ("A", 5), ("B", 5))
    for _ in range(2):
        stock.consume("o1")

    assert stock.lots("A") == {"L1": (0, 0), DEFAULT_LOT: (8, 0)}
    assert stock.get("A") == StockLevel("A", 8, 0)
    assert stock.get("B") == StockLevel("B", 0, 0)
    stock.release("o1")  # consumed: releasing gives nothing back
    assert stock.get("A") == StockLevel("A", 8, 0)


# --- setting stock ------------------------------------------------------------------------


def test_setting_on_hand_sets_the_default_lot_and_leaves_the_other_lots(stock: Stock) -> None:
    assert stock.get("A") is None
    level = stock.set("A", 7)
    assert level == StockLevel("A", 7, 0)
    assert [(lot.lot, lot.on_hand, lot.expires_on) for lot in level.lots] == [
        (DEFAULT_LOT, 7, None)
    ]
    stock.lot("A", "L1", 3, day(100))

    assert stock.set("A", 5) == StockLevel("A", 8, 0)
    assert stock.lots("A") == {"L1": (3, 0), DEFAULT_LOT: (5, 0)}


def test_a_lot_of_an_unknown_sku_creates_the_sku(stock: Stock) -> None:
    level = stock.lot("NEW", "L1", 4, day(90))

    assert level == LotLevel("NEW", "L1", 4, 0, day(90))
    assert level.available == 4
    assert stock.get("NEW") == StockLevel("NEW", 4, 0)
    assert stock.lots("NEW") == {"L1": (4, 0)}


def test_no_lot_goes_below_what_is_reserved_of_it(stock: Stock) -> None:
    stock.set("A", 4)
    stock.lot("A", "L1", 5, day(100))
    stock.reserve("o1", ("A", 7))  # L1: 5, default: 2

    with pytest.raises(InvalidInventory, match="below the 5 units reserved of lot L1"):
        stock.lot("A", "L1", 4, day(100))
    with pytest.raises(InvalidInventory, match="below the 2 units reserved for A"):
        stock.set("A", 1)
    with pytest.raises(InvalidInventory):
        stock.set("A", -1)
    with pytest.raises(InvalidInventory):
        stock.lot("A", "L2", -1, day(100))
    assert stock.lots("A") == {"L1": (5, 5), DEFAULT_LOT: (4, 2)}

    # Down to what is reserved, and a new expiry date for a lot with reservations.
    assert stock.lot("A", "L1", 5, day(10)) == LotLevel("A", "L1", 5, 5, day(10))
    assert stock.set("A", 2) == StockLevel("A", 7, 7)


def test_the_default_lot_has_no_expiry_date(stock: Stock) -> None:
    stock.set("A", 1)
    with pytest.raises(DomainError):
        stock.lot("A", DEFAULT_LOT, 1, day(100))
    assert stock.lots("A") == {DEFAULT_LOT: (1, 0)}


def test_a_sku_set_to_zero_without_lots_has_no_lots(stock: Stock) -> None:
    assert stock.set("A", 0) == StockLevel("A", 0, 0)
    level = stock.get("A")
    assert level is not None and level.lots == ()


# --- DEA schedules ------------------------------------------------------------------------


def test_a_dea_schedule_is_set_kept_when_not_given_and_cleared_by_none(stock: Stock) -> None:
    assert stock.set("A", 1, "II").dea_schedule == "II"
    assert stock.set("A", 2).dea_schedule == "II"
    stock.lot("A", "L1", 1, day(90))
    assert stock.get("A") == StockLevel("A", 3, 0, "II")
    assert stock.set("A", 2, "IV").dea_schedule == "IV"
    assert stock.set("A", 2, None).dea_schedule is None
    assert stock.set("NEW", 1).dea_schedule is None
    with pytest.raises(DomainError):
        stock.set("A", 2, "I")
    assert stock.get("A") == StockLevel("A", 3, 0, None)


def test_an_order_is_controlled_when_one_of_its_skus_has_a_schedule(stock: Stock) -> None:
    stock.set("PLAIN", 1)
    stock.set("OPIOID", 1, "II")

    assert stock.controlled("PLAIN", "OPIOID")
    assert stock.controlled("OPIOID")
    assert not stock.controlled("PLAIN")
    assert not stock.controlled("PLAIN", "UNKNOWN")
    assert not stock.controlled()
    stock.set("OPIOID", 1, None)
    assert not stock.controlled("PLAIN", "OPIOID")


# --- recalls ------------------------------------------------------------------------------


def test_a_recall_lists_every_order_that_took_units_of_the_lot_in_order(stock: Stock) -> None:
    stock.lot("A", "L1", 3, day(100))
    stock.lot("A", "L2", 10, day(200))
    stock.lot("B", "L1", 10, day(100))  # another SKU's lot of the same name
    stock.reserve("o1", ("A", 2))  # L1: 2
    stock.reserve("o2", ("A", 3), ("B", 1))  # L1: 1, L2: 2
    stock.reserve("o3", ("A", 1))  # L2: 1
    stock.release("o1")  # released orders took units too: they are listed

    assert stock.lot_orders("A", "L1") == [("o1", 2), ("o2", 1)]
    assert stock.lot_orders("A", "L2") == [("o2", 2), ("o3", 1)]
    assert stock.lot_orders("B", "L1") == [("o2", 1)]
    assert stock.lot_orders("A", "L3") is None
    assert stock.lot_orders("UNKNOWN", "L1") is None
    stock.lot("B", "L9", 1, day(100))
    assert stock.lot_orders("B", "L9") == []

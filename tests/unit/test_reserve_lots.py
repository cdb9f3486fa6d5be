"""The saga's reservation step over stock by lot (on the fakes): it takes units first
expiry first with the shelf life the engine is configured for, records the lots in
`InventoryReserved`, and gives back or consumes exactly those units."""

from __future__ import annotations

from datetime import timedelta

from fulfillment.domain import events as ev
from fulfillment.domain.status import FailureReason
from fulfillment.domain.values import LotAllocation
from fulfillment.service_layer import commands as c
from fulfillment.service_layer.ports import DEFAULT_LOT, LotLevel

from .builders import TODAY, address, lines, prescription
from .fakes import FakeApp, make_fake_app

SKU = "ASPIRIN-100"


def place(app: FakeApp, quantity: int, country: str = "NL") -> None:
    app.bus.handle(
        c.CreateOrder("o-1", "c-1", lines((SKU, quantity)), prescription(), address(country))
    )


def reserved_event(app: FakeApp) -> ev.InventoryReserved | None:
    found = [e for e in app.db.load("saga-o-1") if isinstance(e, ev.InventoryReserved)]
    return found[0] if found else None


def lot(app: FakeApp, name: str) -> LotLevel:
    return app.db.lots[(SKU, name)]


def stocked(min_shelf_life_days: int = 30) -> FakeApp:
    app = make_fake_app(min_shelf_life_days=min_shelf_life_days)
    app.bus.handle(c.SetInventory(SKU, 5))
    app.bus.handle(c.SetLot(SKU, "B-LATE", 2, TODAY + timedelta(days=90)))
    app.bus.handle(c.SetLot(SKU, "B-SOON", 2, TODAY + timedelta(days=20)))
    return app


def test_the_reservation_takes_lots_first_expiry_first_and_records_them_in_its_event() -> None:
    app = stocked()
    place(app, 3)
    app.run_until_idle()

    reserved = reserved_event(app)
    assert reserved is not None
    # B-SOON has 20 days left, less than the 30 asked for: skipped.
    assert reserved.lots == (
        LotAllocation(SKU, "B-LATE", 2),
        LotAllocation(SKU, DEFAULT_LOT, 1),
    )
    assert [(lot(app, n).on_hand, lot(app, n).reserved) for n in ("B-LATE", DEFAULT_LOT)] == [
        (0, 0),
        (4, 0),
    ], "the fulfilled order consumed exactly the units it reserved"
    assert lot(app, "B-SOON") == LotLevel(SKU, "B-SOON", 2, 0, TODAY + timedelta(days=20))


def test_the_shelf_life_the_engine_is_configured_for_decides_which_lots_are_used() -> None:
    app = stocked(min_shelf_life_days=10)
    place(app, 1)
    app.run_until_idle()

    reserved = reserved_event(app)
    assert reserved is not None
    assert reserved.lots == (LotAllocation(SKU, "B-SOON", 1),)


def test_too_little_stock_with_the_shelf_life_cancels_the_order_and_takes_nothing() -> None:
    app = stocked(min_shelf_life_days=100)  # no lot with an expiry qualifies
    place(app, 6)  # 9 on the shelf, 5 of them without expiry
    app.run_until_idle()

    assert reserved_event(app) is None
    cancelled = [e for e in app.db.load("order-o-1") if isinstance(e, ev.OrderCancelled)]
    assert [e.reason for e in cancelled] == [FailureReason.INSUFFICIENT_STOCK]
    assert all(row.reserved == 0 for row in app.db.lots.values())
    assert app.db.inventory[SKU].reserved == 0


def test_a_compensated_order_gives_each_lot_its_units_back() -> None:
    app = stocked()
    place(app, 3, country="JP")  # the carrier does not ship there: compensated
    app.run_until_idle()

    assert reserved_event(app) is not None
    assert all(row.reserved == 0 for row in app.db.lots.values())
    assert [lot(app, n).on_hand for n in ("B-LATE", "B-SOON", DEFAULT_LOT)] == [2, 2, 5]

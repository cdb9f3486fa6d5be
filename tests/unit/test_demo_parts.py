"""The demo's own parts, without running it: its lots, its mix, its settings and the
checks of its summary (tests/e2e/test_demo.py runs the whole demo)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import cast

from fulfillment.bootstrap import App
from fulfillment.config import Settings
from fulfillment.domain.events import (
    InventoryReleased,
    InventoryReserved,
    OrderCancelled,
    OrderFulfilled,
    ShipmentDelivered,
)
from fulfillment.domain.values import LotAllocation, OrderLine
from fulfillment.entrypoints.demo import DemoOptions, demo_settings
from fulfillment.entrypoints.demo_mix import (
    CATALOGUE,
    LOT_DAYS,
    MAX_CANCEL_DELAY,
    VERIFIED,
    Product,
    Scenario,
    plan_orders,
    seed_lots,
)
from fulfillment.entrypoints.demo_report import (
    DELIVERED,
    NOT_DELIVERED,
    EventTally,
    fefo_check,
)

TODAY = date(2030, 1, 1)
AT = datetime(2030, 1, 1, tzinfo=UTC)


def test_each_product_has_a_short_dated_lot_on_top_of_its_usable_stock() -> None:
    for product in CATALOGUE:
        short, first, later = seed_lots(product, TODAY)

        assert [lot.days for lot in (short, first, later)] == list(LOT_DAYS)
        assert short.expires_on < TODAY + timedelta(days=30) <= first.expires_on
        assert first.expires_on < later.expires_on
        assert first.on_hand + later.on_hand == product.stock
        assert min(short.on_hand, first.on_hand, later.on_hand) >= 1
        assert len({short.lot, first.lot, later.lot}) == 3


def test_only_the_verified_scenarios_order_controlled_substances() -> None:
    plans = plan_orders(200, 5, ("US", "GB"), TODAY, "t")
    controlled = {p.sku for p in CATALOGUE if p.dea_schedule is not None}

    assert {p.dea_schedule for p in CATALOGUE} == {None, "II", "IV"}
    for plan in plans:
        skus = {line.sku for line in plan.command.items}
        assert bool(skus & controlled) == (plan.scenario in VERIFIED), plan
        assert (plan.cancel_after is not None) == (plan.scenario is Scenario.CUSTOMER_CANCELS)
    delays = [p.cancel_after for p in plans if p.cancel_after is not None]
    assert delays[0] == 0.0 and len(delays) == 10
    assert all(0.0 <= d <= MAX_CANCEL_DELAY for d in delays)


def test_the_demo_turns_tracking_on_unless_the_user_configured_it() -> None:
    options = DemoOptions(database=Path("d.db"))

    first = demo_settings(options, Settings(), {})
    again = demo_settings(options, Settings(), {})
    assert first.database_url == "sqlite:///d.db"
    assert first.carrier_pickup_delay_ms == 300.0
    assert first.carrier_webhook_secret and len(first.carrier_webhook_secret) >= 16
    assert first.carrier_webhook_secret != again.carrier_webhook_secret

    own = Settings(carrier_pickup_delay_ms=50.0, carrier_webhook_secret="s" * 20)
    environ = {
        "FULFILLMENT_CARRIER_PICKUP_DELAY_MS": "50",
        "FULFILLMENT_CARRIER_WEBHOOK_SECRET": "s" * 20,
    }
    mine = demo_settings(options, own, environ)
    assert (mine.carrier_pickup_delay_ms, mine.carrier_webhook_secret) == (50.0, "s" * 20)

    assert demo_settings(options, Settings(), {}, tracking=False).carrier_pickup_delay_ms == 0


def _tally(*order_ids: str) -> EventTally:
    return EventTally(cast(App, None), set(order_ids))


def _reserved(order_id: str, *lots: tuple[str, str, int]) -> InventoryReserved:
    allocations = tuple(LotAllocation(sku, lot, q) for sku, lot, q in lots)
    lines = tuple(OrderLine(a.sku, a.quantity) for a in allocations)
    return InventoryReserved(
        occurred_at=AT,
        saga_id=order_id,
        reservation_id=f"r-{order_id}",
        lines=lines,
        lots=allocations,
    )


PRODUCT = Product("SKU-1", "A product", 10)
SEEDED = {"SKU-1": seed_lots(PRODUCT, TODAY)}  # short 2, first 2 (200 d), later 8
SHORT, FIRST, LATER = (lot.lot for lot in SEEDED["SKU-1"])


def test_fefo_check_replays_reservations_and_releases_in_commit_order() -> None:
    tally = _tally("a", "b", "c")
    tally.apply(_reserved("a", ("SKU-1", FIRST, 2)))  # the first usable lot is empty now
    tally.apply(_reserved("b", ("SKU-1", LATER, 1)))
    tally.apply(InventoryReleased(occurred_at=AT, saga_id="a", reservation_id="r-a"))
    tally.apply(_reserved("c", ("SKU-1", FIRST, 2), ("SKU-1", LATER, 1)))

    check = fefo_check(tally, SEEDED, TODAY, 30)

    assert (check.reservations, check.out_of_order, check.short_dated_units) == (3, 0, 0)
    assert check.ok


def test_fefo_check_flags_a_later_lot_taken_early_and_a_short_dated_lot() -> None:
    tally = _tally("a", "b")
    tally.apply(_reserved("a", ("SKU-1", LATER, 1)))  # the first usable lot still has 2
    tally.apply(_reserved("b", ("SKU-1", SHORT, 1)))

    check = fefo_check(tally, SEEDED, TODAY, 30)

    assert (check.reservations, check.out_of_order, check.short_dated_units) == (2, 2, 1)
    assert not check.ok


def test_the_tally_tells_delivered_orders_from_the_ones_on_their_way() -> None:
    tally = _tally("a", "b", "c")
    for order_id in ("a", "b"):
        tally.apply(OrderFulfilled(occurred_at=AT, order_id=order_id, tracking_number="T"))
    tally.apply(OrderCancelled(occurred_at=AT, order_id="c", reason="customer_request"))
    tally.apply(
        ShipmentDelivered(
            occurred_at=AT, order_id="a", tracking_number="T", carrier_event_id="e", reported_at=AT
        )
    )
    tally.apply(OrderFulfilled(occurred_at=AT, order_id="other", tracking_number="T"))

    assert tally.statuses() == {DELIVERED: 1, NOT_DELIVERED: 1, "customer_request": 1}
    assert tally.undelivered == 1 and tally.finished == 3

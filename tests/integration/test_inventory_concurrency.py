"""The inventory invariant `0 <= reserved <= on_hand`, per lot and per SKU, under
concurrent units of work.

Each task runs in its own unit of work (its own connection and transaction), retrying on
the conflicts a real worker retries (ConcurrencyError, deadlock / serialization failure).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from typing import TypeVar

from sqlalchemy import func, select

from fulfillment.adapters import tables as t
from fulfillment.bootstrap import App
from fulfillment.domain.errors import InsufficientStock, InvalidInventory
from fulfillment.domain.values import LotAllocation, OrderLine
from fulfillment.service_layer.messagebus import ConcurrencyError, RetryableDatabaseError
from fulfillment.service_layer.ports import StockLevel

THREADS = 16
TODAY = date(2030, 5, 1)
T = TypeVar("T")


def retrying(action_name: str, action: Callable[[], T]) -> T:
    """Run `action()` until it stops hitting conflicts; return its outcome."""
    for attempt in range(30):
        try:
            return action()
        except (ConcurrencyError, RetryableDatabaseError):
            time.sleep(0.002 * (attempt + 1))
    raise AssertionError(f"{action_name} kept conflicting")


def reserve(app: App, order_id: str, lines: tuple[OrderLine, ...]) -> str:
    def attempt() -> str:
        try:
            with app.uow() as uow:
                uow.inventory.reserve(order_id, lines, today=TODAY)
                uow.commit()
        except InsufficientStock:
            return "insufficient"
        return "reserved"

    return retrying(f"reserve {order_id}", attempt)


def release(app: App, order_id: str) -> str:
    def attempt() -> str:
        with app.uow() as uow:
            uow.inventory.release(order_id)
            uow.commit()
        return "released"

    return retrying(f"release {order_id}", attempt)


def set_on_hand(app: App, sku: str, on_hand: int) -> str:
    def attempt() -> str:
        try:
            with app.uow() as uow:
                uow.inventory.set_on_hand(sku, on_hand)
                uow.commit()
        except InvalidInventory:
            return "refused"
        return "set"

    return retrying(f"set {sku}", attempt)


def stock(app: App, sku: str) -> StockLevel:
    with app.uow() as uow:
        level = uow.inventory.get(sku)
    assert level is not None
    return level


def reservations(app: App, status: str = "reserved") -> int:
    with app.engine.connect() as conn:
        query = select(func.count()).where(t.inventory_reservations.c.status == status)
        return int(conn.execute(query).scalar_one())


def test_fifty_buyers_for_ten_units_get_exactly_ten_reservations(app: App) -> None:
    set_on_hand(app, "SKU-1", 10)
    with ThreadPoolExecutor(THREADS) as pool:
        outcomes = Counter(
            pool.map(lambda n: reserve(app, f"o{n}", (OrderLine("SKU-1", 1),)), range(50))
        )

    assert outcomes == {"reserved": 10, "insufficient": 40}
    assert stock(app, "SKU-1") == StockLevel("SKU-1", 10, 10)
    assert reservations(app) == 10


def test_orders_listing_skus_in_opposite_orders_all_get_through(app: App) -> None:
    set_on_hand(app, "SKU-A", 100)
    set_on_hand(app, "SKU-B", 100)
    forward = (OrderLine("SKU-A", 2), OrderLine("SKU-B", 1))
    backward = (OrderLine("SKU-B", 1), OrderLine("SKU-A", 2))

    def buy(n: int) -> str:
        outcome = reserve(app, f"o{n}", forward if n % 2 else backward)
        if n % 3 == 0:  # a third of them are cancelled straight away
            release(app, f"o{n}")
        return outcome

    with ThreadPoolExecutor(THREADS) as pool:
        outcomes = Counter(pool.map(buy, range(40)))

    assert outcomes == {"reserved": 40}
    kept = len([n for n in range(40) if n % 3])
    assert stock(app, "SKU-A") == StockLevel("SKU-A", 100, 2 * kept)
    assert stock(app, "SKU-B") == StockLevel("SKU-B", 100, kept)
    assert reservations(app) == kept
    assert reservations(app, "released") == 40 - kept


def test_restocking_while_reserving_never_leaves_more_reserved_than_on_hand(app: App) -> None:
    set_on_hand(app, "SKU-1", 20)
    rng = random.Random(7)
    tasks = [("reserve", n) for n in range(30)] + [("set", rng.randint(0, 25)) for _ in range(15)]
    rng.shuffle(tasks)

    def run(task: tuple[str, int]) -> str:
        kind, n = task
        if kind == "reserve":
            return reserve(app, f"o{n}", (OrderLine("SKU-1", 1),))
        return set_on_hand(app, "SKU-1", n)

    with ThreadPoolExecutor(THREADS) as pool:
        outcomes = Counter(pool.map(run, tasks))

    level = stock(app, "SKU-1")
    assert 0 <= level.reserved <= level.on_hand
    assert level.reserved == outcomes["reserved"] == reservations(app)
    assert outcomes["reserved"] + outcomes["insufficient"] == 30


def reserve_lots(
    app: App, order_id: str, lines: tuple[OrderLine, ...], days: int
) -> tuple[LotAllocation, ...] | None:
    """The lots the reservation took; None when there was not enough."""

    def attempt() -> tuple[LotAllocation, ...] | None:
        try:
            with app.uow() as uow:
                reservation = uow.inventory.reserve(
                    order_id, lines, today=TODAY, min_shelf_life_days=days
                )
                uow.commit()
        except InsufficientStock:
            return None
        return reservation.lots

    return retrying(f"reserve {order_id}", attempt)


def test_buyers_racing_for_the_lots_of_two_skus_never_oversell_a_lot(app: App) -> None:
    """Orders of one or both SKUs, some asking for more shelf life than some lots have,
    some released at once: more demand than stock, so lots run out under contention."""
    with app.uow() as uow:
        for sku in ("SKU-A", "SKU-B"):
            uow.inventory.set_on_hand(sku, 5)  # lot `default`, taken last
            for n, days in enumerate((10, 40, 40, 90, 365)):
                uow.inventory.set_lot(sku, f"LOT-{n}", 4, TODAY + timedelta(days=days))
        uow.commit()
    rng = random.Random(11)
    orders = []
    for n in range(80):
        skus = rng.choice((("SKU-A",), ("SKU-B",), ("SKU-A", "SKU-B")))
        lines = tuple(OrderLine(sku, rng.randint(1, 4)) for sku in skus)
        orders.append((f"o{n}", lines, rng.choice((0, 30, 60)), n % 5 == 0))

    def buy(order: tuple[str, tuple[OrderLine, ...], int, bool]) -> tuple[LotAllocation, ...]:
        order_id, lines, days, cancelled = order
        taken = reserve_lots(app, order_id, lines, days)
        if taken is None:
            return ()
        for line in lines:  # every line served in full
            assert sum(a.quantity for a in taken if a.sku == line.sku) == line.quantity
        if cancelled:
            release(app, order_id)
            return ()
        return taken

    with ThreadPoolExecutor(THREADS) as pool:
        outcomes = list(pool.map(buy, orders))

    held = Counter[tuple[str, str]]()
    for taken in outcomes:
        for a in taken:
            held[(a.sku, a.lot)] += a.quantity
    for sku in ("SKU-A", "SKU-B"):
        level = stock(app, sku)
        assert len(level.lots) == 6
        for lot in level.lots:
            assert 0 <= lot.reserved <= lot.on_hand, lot
            assert lot.reserved == held[(sku, lot.lot)], lot
        assert level.on_hand == sum(lot.on_hand for lot in level.lots) == 25
        assert level.reserved == sum(lot.reserved for lot in level.lots)
    assert sum(held.values()) > 30, "most of the stock went to orders"
    assert reservations(app) == sum(1 for taken in outcomes if taken)
    # What the reservations still held recorded they took: what the lots hold reserved.
    rl, r = t.reservation_lots, t.inventory_reservations
    with app.engine.connect() as conn:
        recorded = conn.execute(
            select(rl.c.sku, rl.c.lot, func.sum(rl.c.quantity))
            .join(r, r.c.order_id == rl.c.order_id)
            .where(r.c.status == "reserved")
            .group_by(rl.c.sku, rl.c.lot)
        ).all()
    assert {(sku, lot): int(q) for sku, lot, q in recorded} == +held

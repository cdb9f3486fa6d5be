"""The Order aggregate: placed once, then fulfilled or cancelled, never both, never twice."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fulfillment.domain.errors import DomainError, IllegalTransition
from fulfillment.domain.events import OrderCancelled, OrderCreated, OrderFulfilled
from fulfillment.domain.order import MAX_ORDER_LINES, MAX_QUANTITY, Order
from fulfillment.domain.status import OrderStatus
from fulfillment.domain.values import OrderLine

from .builders import T0, address, at, placed_order, prescription


def state(order: Order) -> dict[str, object]:
    """Everything an order knows, minus the bookkeeping of unsaved events."""
    return {k: v for k, v in vars(order).items() if k not in ("_pending", "stored_version")}


def place(items: tuple[OrderLine, ...]) -> Order:
    return Order.place(
        "o-1",
        customer_id="c-1",
        items=items,
        prescription=prescription(),
        shipping_address=address(),
        at=T0,
    )


def test_a_placed_order_is_pending_with_what_the_customer_asked_for() -> None:
    order = placed_order()

    assert order.status is OrderStatus.PENDING
    assert order.items == (OrderLine("ASPIRIN-100", 2),)
    assert order.shipping_address == address()
    assert [type(e) for e in order.pending_events] == [OrderCreated]
    assert order.to_created_event() == order.pending_events[0]
    assert order.stream_id == "order-o-1"


def test_fulfilling_a_pending_order_records_its_tracking_number() -> None:
    order = placed_order()

    order.fulfil("TRK-1", at=at(5))

    assert order.status is OrderStatus.FULFILLED
    assert order.tracking_number == "TRK-1"
    assert order.pending_events[-1] == OrderFulfilled(
        occurred_at=at(5), order_id="o-1", tracking_number="TRK-1"
    )


def test_cancelling_a_pending_order_records_the_reason() -> None:
    order = placed_order()

    order.cancel("insufficient_stock", at=at(5))

    assert order.status is OrderStatus.CANCELLED
    assert order.reason == "insufficient_stock"
    assert order.pending_events[-1] == OrderCancelled(
        occurred_at=at(5), order_id="o-1", reason="insufficient_stock"
    )


def fulfil(order: Order) -> None:
    order.fulfil("TRK-2", at=at(9))


def cancel(order: Order) -> None:
    order.cancel("again", at=at(9))


@pytest.mark.parametrize("first", [fulfil, cancel], ids=["fulfilled", "cancelled"])
@pytest.mark.parametrize("then", [fulfil, cancel], ids=["fulfil", "cancel"])
def test_a_finished_order_can_be_neither_fulfilled_nor_cancelled_again(
    first: Callable[[Order], None], then: Callable[[Order], None]
) -> None:
    order = placed_order()
    first(order)
    before = state(order)
    recorded = len(order.pending_events)

    with pytest.raises(IllegalTransition):
        then(order)

    assert state(order) == before
    assert len(order.pending_events) == recorded


@pytest.mark.parametrize("action", [fulfil, cancel], ids=["fulfil", "cancel"])
def test_an_order_never_placed_can_be_neither_fulfilled_nor_cancelled(
    action: Callable[[Order], None],
) -> None:
    with pytest.raises(IllegalTransition):
        action(Order("ghost"))


@pytest.mark.parametrize(
    "items",
    [
        (),
        tuple(OrderLine(f"SKU-{n}", 1) for n in range(MAX_ORDER_LINES + 1)),
        (OrderLine("ASPIRIN-100", MAX_QUANTITY + 1),),
    ],
    ids=["no lines", "too many lines", "quantity too large"],
)
def test_an_order_with_bad_lines_is_refused(items: tuple[OrderLine, ...]) -> None:
    with pytest.raises(DomainError):
        place(items)


def test_an_order_at_the_limits_is_accepted() -> None:
    items = tuple(OrderLine(f"SKU-{n}", MAX_QUANTITY) for n in range(MAX_ORDER_LINES))

    assert place(items).items == items


def test_a_line_of_zero_units_is_refused() -> None:
    with pytest.raises(DomainError):
        OrderLine("ASPIRIN-100", 0)


@pytest.mark.parametrize("finish", [fulfil, cancel], ids=["fulfilled", "cancelled"])
def test_replaying_an_orders_events_gives_the_same_order(finish: Callable[[Order], None]) -> None:
    order = placed_order()
    finish(order)

    replayed = Order.replay(order.id, order.pending_events)

    assert state(replayed) == state(order)
    assert replayed.pending_events == []
    assert replayed.stored_version == replayed.version == 2

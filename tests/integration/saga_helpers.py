"""Helpers shared by the saga tests: run the queue, read an order's state and history."""

from __future__ import annotations

from fulfillment.bootstrap import App
from fulfillment.domain.order import Order
from fulfillment.domain.saga import OrderFulfillmentSaga
from fulfillment.entrypoints.worker import Worker


def run_jobs(app: App, concurrency: int = 4) -> None:
    """Run a worker until no job is ready or running."""
    Worker(app, concurrency).run(until_idle=True, timeout=30)


def order_of(app: App, order_id: str) -> Order:
    with app.uow() as uow:
        order = uow.orders.get(order_id)
    assert order is not None
    return order


def saga_of(app: App, order_id: str) -> OrderFulfillmentSaga:
    with app.uow() as uow:
        saga = uow.sagas.get(order_id)
    assert saga is not None
    return saga


def history(app: App, order_id: str) -> list[str]:
    """Event types of the order's and its saga's streams, in commit order."""
    with app.uow() as uow:
        stored = uow.events.read_streams([f"order-{order_id}", f"saga-{order_id}"])
    return [e.type for e in stored]

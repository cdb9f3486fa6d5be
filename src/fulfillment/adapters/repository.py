"""Repositories of the event-sourced aggregates: load by replaying a stream, track for commit."""

from __future__ import annotations

from collections.abc import Callable

from fulfillment.adapters.event_store import SqlAlchemyEventStore
from fulfillment.domain.aggregate import Aggregate
from fulfillment.domain.order import Order
from fulfillment.domain.saga import OrderFulfillmentSaga
from fulfillment.service_layer import ports

Track = Callable[[Aggregate], None]


class SqlAlchemyOrderRepository(ports.OrderRepository):
    def __init__(self, store: SqlAlchemyEventStore, track: Track) -> None:
        self.store = store
        self.track = track

    def get(self, order_id: str) -> Order | None:
        events = self.store.load(Order.stream_id_for(order_id))
        if not events:
            return None
        order = Order.replay(order_id, events)
        self.track(order)
        return order

    def add(self, order: Order) -> None:
        self.track(order)


class SqlAlchemySagaRepository(ports.SagaRepository):
    def __init__(self, store: SqlAlchemyEventStore, track: Track) -> None:
        self.store = store
        self.track = track

    def get(self, saga_id: str) -> OrderFulfillmentSaga | None:
        events = self.store.load(OrderFulfillmentSaga.stream_id_for(saga_id))
        if not events:
            return None
        saga = OrderFulfillmentSaga.replay(saga_id, events)
        self.track(saga)
        return saga

    def add(self, saga: OrderFulfillmentSaga) -> None:
        self.track(saga)

"""Repositories of the event-sourced aggregates: load by replaying a stream, track for commit."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from fulfillment.adapters.event_store import SqlAlchemyEventStore
from fulfillment.domain.aggregate import Aggregate
from fulfillment.domain.order import Order
from fulfillment.domain.saga import Saga
from fulfillment.service_layer import ports

Track = Callable[[Aggregate], None]
A = TypeVar("A", bound=Aggregate)


class _EventSourcedRepository(Generic[A]):
    """Loads an aggregate of type `kind` from its stream; every aggregate seen is tracked."""

    kind: type[A]

    def __init__(self, store: SqlAlchemyEventStore, track: Track) -> None:
        self.store = store
        self.track = track

    def get(self, aggregate_id: str) -> A | None:
        events = self.store.load(self.kind.stream_id_for(aggregate_id))
        if not events:
            return None
        aggregate = self.kind.replay(aggregate_id, events)
        self.track(aggregate)
        return aggregate

    def add(self, aggregate: A) -> None:
        self.track(aggregate)


class SqlAlchemyOrderRepository(_EventSourcedRepository[Order], ports.OrderRepository):
    kind = Order


class SqlAlchemySagaRepository(_EventSourcedRepository[Saga], ports.SagaRepository):
    kind = Saga

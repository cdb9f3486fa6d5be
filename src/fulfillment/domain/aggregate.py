"""Event-sourced aggregate base: state changes only by recording events."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Self

from fulfillment.domain.events import DomainEvent


class Aggregate:
    """An aggregate rebuilt from its stream and extended by recording new events.

    `version` is the number of events applied; `stored_version` is what the event store
    held when the aggregate was loaded, i.e. the expected version for the next append.
    """

    stream_prefix: ClassVar[str]

    def __init__(self, aggregate_id: str) -> None:
        self.id = aggregate_id
        self.version = 0
        self.stored_version = 0
        self._pending: list[DomainEvent] = []

    @classmethod
    def stream_id_for(cls, aggregate_id: str) -> str:
        return f"{cls.stream_prefix}-{aggregate_id}"

    @property
    def stream_id(self) -> str:
        return self.stream_id_for(self.id)

    @classmethod
    def replay(cls, aggregate_id: str, events: Iterable[DomainEvent]) -> Self:
        aggregate = cls(aggregate_id)
        for event in events:
            aggregate._apply(event)
            aggregate.version += 1
        aggregate.stored_version = aggregate.version
        return aggregate

    def _record(self, event: DomainEvent) -> None:
        self._apply(event)
        self.version += 1
        self._pending.append(event)

    def _apply(self, event: DomainEvent) -> None:
        handler: Any = getattr(self, f"_when_{type(event).__name__}", None)
        if handler is None:
            raise TypeError(f"{type(self).__name__} cannot apply {type(event).__name__}")
        handler(event)

    @property
    def pending_events(self) -> list[DomainEvent]:
        return list(self._pending)

    def collect_pending(self) -> list[DomainEvent]:
        """Hand over the new events (to be stored) and forget them."""
        events, self._pending = self._pending, []
        self.stored_version = self.version
        return events

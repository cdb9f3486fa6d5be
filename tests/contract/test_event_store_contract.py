"""The event store's contract, written once and run on the in-memory fake
(`FakeEventStore`, over the `FakeDatabase` the unit tests use) and on the SQL event store
(`SqlAlchemyEventStore`) of every backend.

The SQL store works inside its caller's transaction; here each call runs in a
transaction of its own, committed when the call returns (rolled back when it raises), so
that both implementations are seen the way a reader after the commit sees them.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Protocol

import pytest
from conftest import empty_database, settings_for
from unit.builders import T0, placed_order, started_saga
from unit.fakes import FakeDatabase, FakeEventStore

from fulfillment.adapters.db import read_connection
from fulfillment.adapters.event_store import SqlAlchemyEventStore
from fulfillment.adapters.mapper import EventMapper, StoredEvent
from fulfillment.bootstrap import App, bootstrap
from fulfillment.domain.events import DomainEvent, OrderCancelled, OrderFulfilled
from fulfillment.service_layer.messagebus import ConcurrencyError
from fulfillment.service_layer.unit_of_work import StreamAppend


class EventStore(Protocol):
    """What the contract uses of an event store."""

    def append(self, appends: list[StreamAppend], causation_id: str | None = None) -> None: ...

    def load(self, stream_id: str) -> list[DomainEvent]: ...

    def read_stream(self, stream_id: str) -> list[StoredEvent]: ...

    def read_all(self, after: int = 0, limit: int = 100) -> list[StoredEvent]: ...


class CommittingSqlStore:
    """`SqlAlchemyEventStore`, each call in a transaction of its own."""

    def __init__(self, app: App) -> None:
        self.app = app

    def append(self, appends: list[StreamAppend], causation_id: str | None = None) -> None:
        with self.app.engine.begin() as conn:
            SqlAlchemyEventStore(conn, self.app.mapper).append(appends, causation_id)

    def load(self, stream_id: str) -> list[DomainEvent]:
        with read_connection(self.app.engine) as conn:
            return SqlAlchemyEventStore(conn, self.app.mapper).load(stream_id)

    # Read back as a role that may read patient data sees them: opened by the mapper
    # (stored sealed: tests/integration/test_patient_data.py).
    def read_stream(self, stream_id: str) -> list[StoredEvent]:
        with read_connection(self.app.engine) as conn:
            stored = SqlAlchemyEventStore(conn, self.app.mapper).read_stream(stream_id)
            return [self.app.mapper.open(conn, e) for e in stored]

    def read_all(self, after: int = 0, limit: int = 100) -> list[StoredEvent]:
        with read_connection(self.app.engine) as conn:
            stored = SqlAlchemyEventStore(conn, self.app.mapper).read_all(after, limit)
            return [self.app.mapper.open(conn, e) for e in stored]


@pytest.fixture(params=["fake", "sqlite", "postgresql", "mysql"])
def store(request: pytest.FixtureRequest, _migrated_urls: dict[str, str]) -> Iterator[EventStore]:
    if request.param == "fake":
        yield FakeEventStore(FakeDatabase())
        return
    url = _migrated_urls[str(request.param)]
    empty_database(url)
    app = bootstrap(settings_for(url))
    try:
        yield CommittingSqlStore(app)
    finally:
        app.close()


def cancelled(order_id: str, n: int) -> OrderCancelled:
    return OrderCancelled(
        occurred_at=T0 + timedelta(seconds=n), order_id=order_id, reason=f"reason {n}"
    )


def append(store: EventStore, stream_id: str, expected: int, events: list[DomainEvent]) -> None:
    store.append([StreamAppend(stream_id, expected, events, stream_id)])


def everything(store: EventStore) -> list[StoredEvent]:
    return store.read_all(after=0, limit=10_000)


def test_one_append_writes_several_streams_in_the_order_given(store: EventStore) -> None:
    order = placed_order("o-1")
    saga = started_saga("o-1")
    other: list[DomainEvent] = [cancelled("o-2", 1), cancelled("o-2", 2)]

    store.append(
        [
            StreamAppend(order.stream_id, 0, order.pending_events, "o-1"),
            StreamAppend(saga.stream_id, 0, saga.pending_events, "o-1", sender="key:x"),
            StreamAppend("order-o-2", 0, other, "o-2"),
        ],
        causation_id="job:7",
    )

    stored = everything(store)
    assert [(e.stream_id, e.version) for e in stored] == [
        *[(order.stream_id, v) for v in range(1, len(order.pending_events) + 1)],
        *[(saga.stream_id, v) for v in range(1, len(saga.pending_events) + 1)],
        ("order-o-2", 1),
        ("order-o-2", 2),
    ]
    assert store.load(order.stream_id) == order.pending_events
    assert store.load(saga.stream_id) == saga.pending_events
    assert store.load("order-o-2") == other
    by_stream = {e.stream_id: e.metadata for e in stored}
    assert by_stream == {
        order.stream_id: {"correlation_id": "o-1", "causation_id": "job:7"},
        saga.stream_id: {"correlation_id": "o-1", "causation_id": "job:7", "sender": "key:x"},
        "order-o-2": {"correlation_id": "o-2", "causation_id": "job:7"},
    }


def test_a_stream_reads_back_in_version_order_with_the_same_events(store: EventStore) -> None:
    order = placed_order("o-1")
    first: list[DomainEvent] = [*order.pending_events, cancelled("o-1", 1)]
    later: list[DomainEvent] = [
        OrderFulfilled(occurred_at=T0, order_id="o-1", tracking_number="TRK-1")
    ]
    append(store, "order-o-1", 0, first)
    append(store, "order-other", 0, [cancelled("other", 9)])
    append(store, "order-o-1", len(first), later)

    stored = store.read_stream("order-o-1")
    written = [*first, *later]
    assert [e.version for e in stored] == list(range(1, len(written) + 1))
    assert [e.type for e in stored] == [type(e).__name__ for e in written]
    assert [e.event_version for e in stored] == [type(e).event_version for e in written]
    mapper = EventMapper()
    assert [e.data for e in stored] == [json.loads(json.dumps(mapper.to_data(e))) for e in written]
    assert [e.recorded_at for e in stored] == [e.occurred_at for e in written]
    assert all(e.recorded_at.utcoffset() == timedelta(0) for e in stored)
    # The domain events come back equal, through the mapper.
    assert store.load("order-o-1") == written
    assert store.load("order-unknown") == []
    assert store.read_stream("order-unknown") == []


def test_a_stale_expected_version_is_refused_and_appends_nothing_of_the_call(
    store: EventStore,
) -> None:
    append(store, "order-o-1", 0, [cancelled("o-1", 1), cancelled("o-1", 2)])
    before = everything(store)

    with pytest.raises(ConcurrencyError):
        store.append(
            [
                # A stream that could take its events, listed first: it gets none either.
                StreamAppend("order-o-2", 0, [cancelled("o-2", 1)], "o-2"),
                # Expected 1, but the stream is at 2.
                StreamAppend("order-o-1", 1, [cancelled("o-1", 3)], "o-1"),
            ]
        )

    assert everything(store) == before
    assert store.read_stream("order-o-2") == []
    # Another writer that read the stream at the same version loses too.
    with pytest.raises(ConcurrencyError):
        append(store, "order-o-1", 0, [cancelled("o-1", 3)])
    assert everything(store) == before
    # At its real version the stream takes the events.
    append(store, "order-o-1", 2, [cancelled("o-1", 3)])
    assert [e.version for e in store.read_stream("order-o-1")] == [1, 2, 3]


def test_the_global_read_pages_through_every_event_once_in_position_order(
    store: EventStore,
) -> None:
    written: list[tuple[str, int]] = []
    for n in range(3):
        append(store, "order-a", n, [cancelled("a", n)])
        written.append(("order-a", n + 1))
        append(store, "order-b", 2 * n, [cancelled("b", n), cancelled("b", n + 10)])
        written += [("order-b", 2 * n + 1), ("order-b", 2 * n + 2)]

    full = everything(store)
    positions = [e.position for e in full]
    assert all(a < b for a, b in itertools.pairwise(positions))
    # Positions follow the appends: the order in which they were committed.
    assert [(e.stream_id, e.version) for e in full] == written

    pages: list[list[StoredEvent]] = []
    after = 0
    for _ in range(len(written)):  # 2 a page: more than enough pages to reach the end
        page = store.read_all(after=after, limit=2)
        if not page:
            break
        assert len(page) <= 2 and page[0].position > after
        pages.append(page)
        after = page[-1].position
    paged = [e for page in pages for e in page]
    assert paged == full
    assert len({e.position for e in paged}) == len(written)
    assert store.read_all(after=positions[-1]) == []
    assert store.read_all(after=positions[2], limit=3) == full[3:6]

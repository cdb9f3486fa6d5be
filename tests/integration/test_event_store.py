"""The event store on every backend, used the way handlers use it: inside a unit of work."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError

from fulfillment.adapters import tables as t
from fulfillment.adapters.mapper import StoredEvent
from fulfillment.bootstrap import App
from fulfillment.domain.events import DomainEvent, OrderCancelled, OrderFulfilled
from fulfillment.service_layer.messagebus import ConcurrencyError
from fulfillment.service_layer.unit_of_work import StreamAppend

T0 = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def cancelled(order_id: str, n: int) -> OrderCancelled:
    return OrderCancelled(order_id=order_id, reason=f"reason {n}", occurred_at=T0 + timedelta(n))


def append(
    app: App,
    stream_id: str,
    expected: int,
    events: Sequence[DomainEvent],
    *,
    correlation_id: str = "corr",
    causation_id: str | None = None,
    also: Sequence[StreamAppend] = (),
) -> None:
    with app.uow() as uow:
        appends = [StreamAppend(stream_id, expected, list(events), correlation_id), *also]
        uow.events.append(appends, causation_id)
        uow.conn.commit()


def read_stream(app: App, stream_id: str) -> list[StoredEvent]:
    with app.uow() as uow:
        return uow.events.read_stream(stream_id)


def read_all(app: App, after: int = 0, limit: int = 100) -> list[StoredEvent]:
    with app.uow() as uow:
        return uow.events.read_all(after=after, limit=limit)


def test_a_stream_reads_back_its_events_in_version_order(app: App) -> None:
    first = [cancelled("o1", 1), cancelled("o1", 2), cancelled("o1", 3)]
    more = [OrderFulfilled(order_id="o1", tracking_number="TRK-1", occurred_at=T0)]
    append(app, "order-o1", 0, first)
    append(app, "order-other", 0, [cancelled("other", 9)])
    append(app, "order-o1", 3, more)

    stored = read_stream(app, "order-o1")
    assert [e.version for e in stored] == [1, 2, 3, 4]
    assert [e.type for e in stored] == ["OrderCancelled"] * 3 + ["OrderFulfilled"]
    assert stored[3].data == {"order_id": "o1", "tracking_number": "TRK-1"}
    assert all(e.event_version == 1 for e in stored)
    with app.uow() as uow:
        assert uow.events.load("order-o1") == [*first, *more]
        assert uow.events.load("order-unknown") == []


def test_read_all_follows_positions_after_a_point_with_a_limit(app: App) -> None:
    for n in range(3):
        append(app, "order-a", n, [cancelled("a", n)])
        append(app, "order-b", 2 * n, [cancelled("b", n), cancelled("b", n + 10)])

    everything = read_all(app, after=0, limit=1000)
    positions = [e.position for e in everything]
    assert len(everything) == 9
    assert positions == sorted(positions) and len(set(positions)) == 9
    # The stream order within the global order is preserved.
    assert [e.version for e in everything if e.stream_id == "order-b"] == [1, 2, 3, 4, 5, 6]

    page = read_all(app, after=positions[2], limit=4)
    assert [e.position for e in page] == positions[3:7]
    assert read_all(app, after=positions[-1]) == []
    assert [e.position for e in read_all(app, after=0, limit=2)] == positions[:2]


def test_read_all_text_gives_the_same_events_with_their_stored_json_text(app: App) -> None:
    """The relay's read: the same page as `read_all`, the payloads unparsed; spliced into
    the envelope they parse back to `as_dict` (quotes, backslashes and non-ASCII too)."""
    odd = OrderCancelled(order_id="q", reason='a "quoted" \\ é ✓ reason', occurred_at=T0)
    append(app, 'order-"q"', 0, [odd, cancelled("q", 1)])
    append(app, "order-r", 0, [cancelled("r", 2)])

    stored = read_all(app, after=0, limit=1000)
    with app.uow() as uow:
        texts = uow.events.read_all_text(after=0, limit=1000)
        page = uow.events.read_all_text(after=stored[0].position, limit=1)
    assert [e.stored() for e in texts] == stored
    assert [json.loads(e.as_json()) for e in texts] == [e.as_dict() for e in stored]
    assert [e.position for e in page] == [stored[1].position]


def test_a_stale_expected_version_is_refused_and_stores_nothing(app: App) -> None:
    append(app, "order-o1", 0, [cancelled("o1", 1), cancelled("o1", 2)])
    before = read_all(app, limit=1000)

    other_stream = StreamAppend("order-o2", 0, [cancelled("o2", 1)], "o2")
    with pytest.raises(ConcurrencyError):
        # Expected 1, but the stream is at 2: version 2 is already taken.
        append(app, "order-o1", 1, [cancelled("o1", 3), cancelled("o1", 4)], also=[other_stream])

    assert read_all(app, limit=1000) == before
    assert read_stream(app, "order-o2") == []
    # The stream accepts the same events at its real version.
    append(app, "order-o1", 2, [cancelled("o1", 3)])
    assert [e.version for e in read_stream(app, "order-o1")] == [1, 2, 3]


def test_of_concurrent_appenders_at_the_same_version_exactly_one_wins(app: App) -> None:
    appenders = 6
    start = threading.Barrier(appenders)
    outcomes: list[str] = []

    def race(n: int) -> None:
        start.wait()
        try:
            append(app, "saga-contested", 0, [cancelled("contested", n)])
            outcomes.append("stored")
        except ConcurrencyError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=race, args=(n,)) for n in range(appenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["conflict"] * (appenders - 1) + ["stored"]
    assert [e.version for e in read_stream(app, "saga-contested")] == [1]
    assert len(read_all(app)) == 1


def test_two_events_can_never_share_a_stream_version(app: App) -> None:
    append(app, "order-o1", 0, [cancelled("o1", 1)])
    row = {
        "stream_id": "order-o1",
        "version": 1,
        "type": "OrderCancelled",
        "event_version": 1,
        "data": {"order_id": "o1", "reason": "dup"},
        "metadata": {},
        "recorded_at": T0,
    }
    with pytest.raises(IntegrityError), app.engine.begin() as conn:
        conn.execute(insert(t.events).values(row))
    with app.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.events)).scalar_one() == 1


def test_metadata_carries_the_correlation_and_causation_ids(app: App) -> None:
    append(app, "saga-o1", 0, [cancelled("o1", 1)], correlation_id="o1", causation_id="job:42")
    append(app, "saga-o2", 0, [cancelled("o2", 1)], correlation_id="o2")

    (first,) = read_stream(app, "saga-o1")
    (second,) = read_stream(app, "saga-o2")
    assert first.metadata == {"correlation_id": "o1", "causation_id": "job:42"}
    assert second.metadata == {"correlation_id": "o2", "causation_id": None}


def test_recorded_at_reads_back_as_the_same_instant_in_utc(app: App) -> None:
    tz = timezone(timedelta(hours=5, minutes=30))
    occurred = datetime(2030, 6, 1, 23, 59, 58, 654321, tzinfo=tz)
    append(app, "order-o1", 0, [OrderCancelled(order_id="o1", reason="r", occurred_at=occurred)])

    for stored in (read_stream(app, "order-o1")[0], read_all(app)[0]):
        assert stored.recorded_at.utcoffset() == timedelta(0)
        assert stored.recorded_at == occurred
        assert stored.recorded_at.isoformat() == "2030-06-01T18:29:58.654321+00:00"
    with app.uow() as uow:
        (event,) = uow.events.load("order-o1")
    assert event.occurred_at == occurred and event.occurred_at.tzinfo is not None

"""A follower of the global position never skips an event that committed late
(docs/architecture.md, rule 3), with concurrent writers.

Writers insert their events, then keep the transaction open for a random moment before
committing, so a later position often commits first (on PostgreSQL, which has no append
lock). A reader that follows `read_all(after=last_seen)` would then step over the earlier
position for good, unless it reads only positions that are final (`event_store.visible`).
"""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import read_connection
from fulfillment.adapters.db_errors import translate
from fulfillment.adapters.event_store import SqlAlchemyEventStore, insert_events
from fulfillment.bootstrap import App
from fulfillment.domain.events import DomainEvent, OrderCancelled
from fulfillment.service_layer.messagebus import DatabaseBusy
from fulfillment.service_layer.unit_of_work import StreamAppend

WRITERS = 4
TRANSACTIONS_PER_WRITER = 12
EVENTS_PER_TRANSACTION = 2


def _write(app: App, writer: int, start: threading.Barrier, errors: list[BaseException]) -> None:
    rng = random.Random(writer)
    try:
        start.wait()
        for n in range(TRANSACTIONS_PER_WRITER):
            order_id = f"w{writer}-{n}"
            events: list[DomainEvent] = [
                OrderCancelled(order_id=order_id, reason=str(i), occurred_at=datetime.now(UTC))
                for i in range(EVENTS_PER_TRANSACTION)
            ]
            for _attempt in range(20):
                try:
                    with app.uow() as uow:
                        uow.events.append([StreamAppend(f"order-{order_id}", 0, events, order_id)])
                        # Hold the transaction open after the insert: commits land out of
                        # insert order.
                        threading.Event().wait(rng.uniform(0, 0.02))
                        uow.conn.commit()
                    break
                except DatabaseBusy:
                    # SQLite's busy handler is not fair: a writer can wait out its bounded
                    # lock wait behind the others. Nothing was written; try again, as the
                    # worker does (the job is postponed).
                    continue
    except BaseException as exc:
        errors.append(exc)


def test_a_follower_of_the_global_position_sees_every_committed_event_once(app: App) -> None:
    start = threading.Barrier(WRITERS + 1)
    errors: list[BaseException] = []
    writers = [
        threading.Thread(target=_write, args=(app, w, start, errors)) for w in range(WRITERS)
    ]
    for thread in writers:
        thread.start()

    seen: list[tuple[int, str, int]] = []
    last_seen = 0
    start.wait()
    while True:
        done = not any(thread.is_alive() for thread in writers)
        with app.uow() as uow:
            page = uow.events.read_all(after=last_seen, limit=7)
        for event in page:
            seen.append((event.position, event.stream_id, event.version))
            last_seen = event.position
        if done and not page:
            break  # the writers had finished before this empty read: nothing left to see
    for thread in writers:
        thread.join()
    assert errors == []

    with app.uow() as uow:
        committed = [(e.position, e.stream_id, e.version) for e in uow.events.read_all(0, 10_000)]
    assert len(committed) == WRITERS * TRANSACTIONS_PER_WRITER * EVENTS_PER_TRANSACTION
    skipped = sorted(set(committed) - set(seen))
    assert skipped == [], f"the follower stepped over {len(skipped)} events that committed late"
    assert seen == committed  # every committed event, in position order, none twice


# --- many writers, one follower, 100,000 events ----------------------------------------

MANY_WRITERS = 8
BIG_TRANSACTIONS = 250  # per writer
BIG_EVENTS = 50  # per transaction: 8 x 250 x 50 = 100,000 events


def _rows(stream_id: str, count: int) -> list[dict[str, object]]:
    now = datetime.now(UTC)
    return [
        {
            "stream_id": stream_id,
            "version": v,
            "type": "OrderCancelled",
            "event_version": 1,
            "data": {"order_id": stream_id, "reason": "load"},
            "metadata": {},
            "recorded_at": now,
        }
        for v in range(1, count + 1)
    ]


def _write_many(
    app: App, writer: int, start: threading.Barrier, errors: list[BaseException]
) -> None:
    rng = random.Random(1000 + writer)
    try:
        start.wait()
        for n in range(BIG_TRANSACTIONS):
            rows = _rows(f"load-{writer}-{n}", BIG_EVENTS)
            while True:
                try:
                    with app.engine.begin() as conn:
                        insert_events(conn, rows)
                        if rng.random() < 0.1:  # now and then a transaction commits late
                            threading.Event().wait(rng.uniform(0, 0.01))
                    break
                except OperationalError as exc:  # SQLite: the bounded wait for the write lock
                    if not isinstance(translate(exc), DatabaseBusy):
                        raise
    except BaseException as exc:
        errors.append(exc)


def test_a_follower_of_many_concurrent_writers_sees_100k_events_each_once_in_order(
    app: App,
) -> None:
    start = threading.Barrier(MANY_WRITERS + 1)
    errors: list[BaseException] = []
    writers = [
        threading.Thread(target=_write_many, args=(app, w, start, errors))
        for w in range(MANY_WRITERS)
    ]
    for thread in writers:
        thread.start()
    seen: list[int] = []
    last_seen = 0
    start.wait()
    while True:
        done = not any(thread.is_alive() for thread in writers)
        with read_connection(app.engine) as conn:
            page = SqlAlchemyEventStore(conn, app.mapper).read_all(after=last_seen, limit=2000)
        for event in page:
            assert event.position > last_seen
            seen.append(event.position)
            last_seen = event.position
        if done and not page:
            break
    for thread in writers:
        thread.join()
    assert errors == []

    with read_connection(app.engine) as conn:
        committed = list(
            conn.execute(select(t.events.c.position).order_by(t.events.c.position)).scalars()
        )
    assert len(committed) == MANY_WRITERS * BIG_TRANSACTIONS * BIG_EVENTS
    assert len(set(seen)) == len(seen), "the follower saw an event twice"
    skipped = len(set(committed) - set(seen))
    assert skipped == 0, f"the follower stepped over {skipped} events that committed late"
    assert seen == committed

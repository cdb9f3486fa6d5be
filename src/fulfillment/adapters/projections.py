"""Read models (projections) that follow the event log: CQRS's query side.

The projector reads the events after its checkpoint in position order, only those a
follower may read (``adapters/event_store.visible``), so it never steps over an event
that committed late.
For each batch it reloads the streams of the orders the batch touches, replays them
through the domain (``Order`` and ``Saga``: the saga's rules live in one
place) and replaces their ``order_summaries`` rows. The rows and the new checkpoint are
written in ONE transaction, and the checkpoint only moves if it still holds the position
the batch was read after (a tracking record, as in eventsourcing): a batch applied twice,
or by two projectors at once, changes nothing the second time. The metric counters of
``/metrics`` (``adapters/metric_counters.py``) ride along: each batch's counts are added in
the same transaction, so they too are counted exactly once.

* PostgreSQL and MariaDB: ``run_once`` locks the checkpoint row (``SELECT ... FOR UPDATE``)
  before reading, so concurrent projectors in other processes wait rather than redo work.
* SQLite: the batch is read in a deferred (read-only) transaction and written in a short
  ``BEGIN IMMEDIATE`` one, so the single write lock is held only for the write.

Because every row is recomputed from whole streams, a row is never older than the events
of its batch and is recomputed again by any later event of its order: projections are
self-healing, and ``rebuild`` yields exactly the rows the incremental run built.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection, Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import backend_of, read_connection
from fulfillment.adapters.event_store import SqlAlchemyEventStore, visible
from fulfillment.adapters.mapper import EventMapper, StoredEvent, to_utc
from fulfillment.adapters.metric_counters import (
    EVENT_COLUMNS,
    Counts,
    add_counts,
    count_events,
    reset_counts,
)
from fulfillment.domain import events as ev
from fulfillment.domain.order import Order
from fulfillment.domain.saga import Saga
from fulfillment.domain.saga_definition import SagaDefinition
from fulfillment.domain.status import OrderStatus, SagaStatus, StepStatus
from fulfillment.service_layer import order_saga
from fulfillment.service_layer.order_saga import ORDER_SAGA

log = logging.getLogger("fulfillment.projections")

ORDER_SUMMARIES = "order_summaries"
DEFAULT_BATCH_SIZE = 500
_STREAM_PREFIXES = (Order.stream_prefix + "-", Saga.stream_prefix + "-")

Row = dict[str, Any]


def order_id_of(stream_id: str) -> str | None:
    """The order an `order-<id>` or `saga-<id>` stream belongs to (saga id == order id)."""
    for prefix in _STREAM_PREFIXES:
        if stream_id.startswith(prefix):
            return stream_id[len(prefix) :]
    return None


def summarize(order_id: str, stored: Sequence[StoredEvent], mapper: EventMapper) -> Row | None:
    """The `order_summaries` row of one order, from the events of its two streams.

    `stored` may hold events of other streams too; they are ignored. None when the
    order's stream is empty (an unknown order).
    """
    replayed = replay_order(order_id, stored, mapper)
    return summary_of(*replayed) if replayed is not None else None


#: An order and its saga (None before it starts), replayed once, with the positions of
#: the first and the last of their events.
Replayed = tuple[Order, Saga | None, StoredEvent, StoredEvent]


def replay_order(
    order_id: str,
    stored: Sequence[StoredEvent],
    mapper: EventMapper,
    watch: Callable[[StoredEvent, Any], None] | None = None,
) -> Replayed | None:
    """The order and its saga folded from `stored` (each event decoded once; `watch`
    sees each saga event as it is applied); None for an unknown order."""
    order_stream = Order.stream_id_for(order_id)
    saga_stream = Saga.stream_id_for(order_id)
    order_events = sorted((e for e in stored if e.stream_id == order_stream), key=_version)
    if not order_events:
        return None
    saga_events = sorted((e for e in stored if e.stream_id == saga_stream), key=_version)

    def decode(events: list[StoredEvent], tap: bool) -> Iterator[Any]:
        for e in events:
            event = mapper.to_event(e.type, e.event_version, e.data, e.recorded_at)
            if tap and watch is not None:
                watch(e, event)
            yield event

    order = Order.replay(order_id, decode(order_events, False))
    saga = Saga.replay(order_id, decode(saga_events, True)) if saga_events else None
    last = max(order_events + saga_events, key=lambda e: e.position)
    return order, saga, order_events[0], last


def _version(event: StoredEvent) -> int:
    return event.version


def summary_of(order: Order, saga: Saga | None, created: StoredEvent, last: StoredEvent) -> Row:
    """The `order_summaries` row of a replayed order and saga."""
    assert order.status is not None and order.placed_at is not None
    # A saga that has not started yet (its order was created before sagas existed) is
    # about to run: it shows as running with every step pending.
    saga_status = saga.status if saga is not None and saga.status else SagaStatus.RUNNING
    status = order.display_status
    if saga_status is SagaStatus.COMPENSATION_FAILED:
        status = OrderStatus.NEEDS_ATTENTION
    elif order_saga.awaiting_verification(saga):
        status = OrderStatus.AWAITING_VERIFICATION
    assert status is not None
    reason = order.reason or (saga.failure_reason if saga is not None else None)
    definition: SagaDefinition = saga.spec if saga is not None else ORDER_SAGA
    steps = [
        {
            "name": step.name,
            "status": saga.steps[step.name].status.value if saga else StepStatus.PENDING.value,
            "attempts": saga.steps[step.name].attempts if saga else 0,
        }
        # The pivot's outcome is the order's status.
        for step in definition.steps
        if step is not definition.pivot
    ]
    shipment = None
    booked = saga.result(ev.ShipmentInitiated) if saga is not None else None
    if saga is not None and booked is not None:
        shipment = {
            "tracking_number": booked.tracking_number,
            "status": order_saga.shipment_status(saga, order),
        }
    return {
        "order_id": order.id,
        "created_position": created.position,
        "status": status.value,
        "reason": reason[:100] if reason else None,
        "customer_id": order.customer_id,
        "items": [line.to_dict() for line in order.items],
        "saga_status": saga_status.value,
        "steps": steps,
        "shipment": shipment,
        "verification": order_saga.verification(saga),
        "lots": order_saga.lots(saga),
        "placed_at": to_utc(order.placed_at),
        "updated_at": last.recorded_at,
        "finished_at": to_utc(saga.finished_at) if saga and saga.finished_at else None,
        "last_position": last.position,
    }


def row_from_db(mapping: Any) -> Row:
    """A stored `order_summaries` row as a plain dict, timestamps as aware UTC."""
    row = dict(mapping)
    for key in ("placed_at", "updated_at", "finished_at"):
        value = row.get(key)
        if isinstance(value, datetime):
            row[key] = to_utc(value)
    return row


@dataclass(frozen=True)
class Lag:
    """How far a projection is behind the head of the event log."""

    checkpoint: int
    head: int
    behind: int  # events with a position greater than the checkpoint

    @property
    def positions(self) -> int:
        """Head position minus checkpoint (positions may have gaps, hence `behind`)."""
        return max(0, self.head - self.checkpoint)

    def as_dict(self) -> dict[str, int]:
        return {
            "checkpoint": self.checkpoint,
            "head": self.head,
            "lag": self.positions,
            "behind": self.behind,
        }


@dataclass(frozen=True)
class Batch:
    """Events read after `checkpoint` up to `end`, the rows and metric counts they lead to."""

    checkpoint: int
    end: int
    events: int
    order_ids: tuple[str, ...]
    rows: tuple[Row, ...]
    counts: Counts = field(default_factory=Counts, compare=False)


class _StaleBatch(Exception):
    """The checkpoint moved since the batch was read: another projector applied it."""


class Projector:
    """Keeps `order_summaries` in step with the event log (see the module docstring)."""

    name = ORDER_SUMMARIES

    def __init__(
        self, engine: Engine, mapper: EventMapper, *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> None:
        self.engine = engine
        self.mapper = mapper
        self.batch_size = max(1, batch_size)
        self.backend = backend_of(engine)

    # --- reading ----------------------------------------------------------------------

    def _checkpoint(self, conn: Connection, *, lock: bool = False) -> int:
        query = select(t.projection_checkpoints.c.position).where(
            t.projection_checkpoints.c.name == self.name
        )
        if lock and self.backend != "sqlite":
            query = query.with_for_update()
        position = conn.execute(query).scalar_one_or_none()
        return int(position or 0)

    def checkpoint(self) -> int:
        """The position of the last event this projection has applied."""
        with read_connection(self.engine) as conn:
            return self._checkpoint(conn)

    def lag(self) -> Lag:
        """Checkpoint, head of the log, and how many events are still to apply."""
        with read_connection(self.engine) as conn:
            checkpoint = self._checkpoint(conn)
            head = conn.execute(select(func.max(t.events.c.position))).scalar_one_or_none()
            behind = conn.execute(
                select(func.count()).where(t.events.c.position > checkpoint)
            ).scalar_one()
        return Lag(checkpoint, int(head or 0), int(behind))

    def _read(self, conn: Connection, checkpoint: int) -> Batch | None:
        heads = conn.execute(
            select(*EVENT_COLUMNS)
            .where(t.events.c.position > checkpoint, visible(self.backend))
            .order_by(t.events.c.position)
            .limit(self.batch_size)
        ).all()
        if not heads:
            return None
        order_ids = sorted(
            {oid for head in heads if (oid := order_id_of(head.stream_id)) is not None}
        )
        rows: list[Row] = []
        if order_ids:
            streams = [
                stream
                for oid in order_ids
                for stream in (
                    Order.stream_id_for(oid),
                    Saga.stream_id_for(oid),
                )
            ]
            stored = SqlAlchemyEventStore(conn, self.mapper).read_streams(streams)
            by_order: dict[str, list[StoredEvent]] = {}
            for event in stored:
                oid = order_id_of(event.stream_id)
                if oid is not None:
                    by_order.setdefault(oid, []).append(event)
            for oid in order_ids:
                row = summarize(oid, by_order.get(oid, []), self.mapper)
                if row is not None:
                    rows.append(row)
        return Batch(
            checkpoint=checkpoint,
            end=int(heads[-1][0]),
            events=len(heads),
            order_ids=tuple(order_ids),
            rows=tuple(rows),
            counts=count_events(conn, self.mapper, heads),
        )

    def read_batch(self) -> Batch | None:
        """The next batch after the current checkpoint (nothing written), or None."""
        with read_connection(self.engine) as conn:
            return self._read(conn, self._checkpoint(conn))

    # --- writing ----------------------------------------------------------------------

    def _advance(self, conn: Connection, old: int, new: int) -> None:
        """Move the checkpoint from `old` to `new`, or raise _StaleBatch."""
        cp = t.projection_checkpoints
        moved = conn.execute(
            update(cp).where(cp.c.name == self.name, cp.c.position == old).values(position=new)
        )
        if moved.rowcount == 1:
            return
        exists = conn.execute(select(cp.c.position).where(cp.c.name == self.name)).first()
        if old != 0 or exists is not None:
            raise _StaleBatch(f"{self.name} checkpoint is no longer {old}")
        # First run: a concurrent first run makes this insert fail on the primary key.
        conn.execute(insert(cp).values(name=self.name, position=new))

    def _write(self, conn: Connection, batch: Batch) -> None:
        self._advance(conn, batch.checkpoint, batch.end)
        s = t.order_summaries
        if batch.order_ids:
            conn.execute(delete(s).where(s.c.order_id.in_(list(batch.order_ids))))
        if batch.rows:
            conn.execute(insert(s), list(batch.rows))
        # The metric counters (fulfillment.observability) follow the log with this checkpoint.
        add_counts(conn, batch.counts)

    def commit_batch(self, batch: Batch) -> bool:
        """Apply a batch read earlier; False (and nothing written) if it is stale."""
        try:
            with self.engine.begin() as conn:
                self._write(conn, batch)
        except (_StaleBatch, IntegrityError):
            return False
        return True

    def run_once(self) -> int:
        """Apply the next batch; the number of events applied (0: nothing new, or lost a race)."""
        if self.backend == "sqlite":
            batch = self.read_batch()
            if batch is None:
                return 0
            return batch.events if self.commit_batch(batch) else 0
        if not self._has_new_events():
            return 0
        try:
            with self.engine.begin() as conn:
                batch = self._read(conn, self._checkpoint(conn, lock=True))
                if batch is None:
                    return 0
                self._write(conn, batch)
        except (_StaleBatch, IntegrityError):
            return 0
        return batch.events

    def _has_new_events(self) -> bool:
        """A cheap look, without locks, so an idle poll costs one indexed read."""
        with read_connection(self.engine) as conn:
            checkpoint = self._checkpoint(conn)
            return (
                conn.execute(
                    select(t.events.c.position)
                    .where(t.events.c.position > checkpoint, visible(self.backend))
                    .limit(1)
                ).first()
                is not None
            )

    def catch_up(self, timeout: float | None = None) -> int:
        """Apply every event committed before the call; the number this projector applied."""
        target = self.lag().head
        deadline = time.monotonic() + timeout if timeout is not None else None
        applied = 0
        while True:
            n = self.run_once()
            applied += n
            if n == 0:
                if self.checkpoint() >= target:
                    return applied
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} did not catch up in {timeout} s")
                time.sleep(0.01)  # another projector holds the batch: let it finish

    def rebuild(self) -> int:
        """Empty the projection and its checkpoint, then replay the log from position 0."""
        cp = t.projection_checkpoints
        with self.engine.begin() as conn:
            self._checkpoint(conn, lock=True)
            conn.execute(delete(t.order_summaries))
            reset_counts(conn)
            reset = conn.execute(update(cp).where(cp.c.name == self.name).values(position=0))
            if reset.rowcount != 1:
                conn.execute(insert(cp).values(name=self.name, position=0))
        return self.catch_up()


class _Wiring(Protocol):
    """What a projector is built from (the bootstrapped App has both)."""

    engine: Engine
    mapper: EventMapper


class ProjectorThread(threading.Thread):
    """Runs a projector in the background: batch after batch, then a short poll when idle.

    `start()` it as a thread, or call `run()` on a thread of your own; `stop()` ends it.
    """

    def __init__(self, source: Projector | _Wiring, poll_interval: float = 0.1) -> None:
        projector = (
            source if isinstance(source, Projector) else Projector(source.engine, source.mapper)
        )
        super().__init__(name=f"projector-{projector.name}", daemon=True)
        self.projector = projector
        self.poll_interval = poll_interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                applied = self.projector.run_once()
            except Exception:
                log.exception("projector %s failed; retrying", self.projector.name)
                self._stop_event.wait(max(1.0, self.poll_interval))
                continue
            if applied < self.projector.batch_size:
                self._stop_event.wait(self.poll_interval)

    def stop(self, timeout: float | None = 5.0) -> None:
        """Ask the loop to end and wait for the batch in progress."""
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

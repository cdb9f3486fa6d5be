"""The database read behind each Prometheus scrape (``observability/metrics.py`` turns
it into metric families): `read_snapshot`.

* Counters are derived from the event log: the stored counters the projector keeps
  (``adapters/metric_counters.py``) plus the events after its checkpoint, counted on the
  fly, read in ONE snapshot, so a scrape is exact even while the projector lags.
* Gauges (jobs ready and the age of the oldest, jobs by status, projection lag, the head
  of the log, orders and sagas by status) are read live, in the same snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from fulfillment.adapters import metric_counters as c
from fulfillment.adapters import tables as t
from fulfillment.adapters.db import backend_of, db_now_epoch
from fulfillment.adapters.job_queue import READY, by_row_status
from fulfillment.adapters.mapper import EventMapper
from fulfillment.views.jobs import count_jobs
from fulfillment.views.orders import orders_by_status
from fulfillment.views.sagas import sagas_by_status

#: The projection whose checkpoint the counters follow (adapters.projections.ORDER_SUMMARIES).
PROJECTION = "order_summaries"
#: At most this many not-yet-projected events are counted at a scrape. Beyond, counters
#: show the log up to that point (still never going down) and the lag gauge says why.
TAIL_LIMIT = 5000
#: The checkpoints of event relays (adapters/relay.py) are named with this prefix.
RELAY_PREFIX = "relay:"
#: A relay's lag counts at most this many events (beyond, the gauge stays there).
RELAY_LAG_LIMIT = 100_000


@dataclass(frozen=True)
class RelayState:
    """One event relay: events after its checkpoint (at most RELAY_LAG_LIMIT), and the
    events it published with the broker's confirmation."""

    lag: int
    published: int


@dataclass
class Snapshot:
    """Everything one scrape reports, read in one database snapshot."""

    counts: c.Counts = field(default_factory=c.Counts)
    checkpoint: int = 0
    head: int = 0
    behind: int = 0
    jobs: dict[str, int] = field(default_factory=dict)
    jobs_ready: int = 0
    oldest_ready_age: float = 0.0
    sagas: dict[str, int] = field(default_factory=dict)
    orders: dict[str, int] = field(default_factory=dict)
    #: Event relays by name (`relay:<name>` checkpoints).
    relays: dict[str, RelayState] = field(default_factory=dict)


@contextmanager
def _snapshot_connection(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction that sees one snapshot across all its statements."""
    if backend_of(engine) == "sqlite":
        options: dict[str, Any] = {"sqlite_begin": "DEFERRED"}  # WAL: one snapshot
    else:
        options = {"isolation_level": "REPEATABLE READ"}
    with engine.connect().execution_options(**options) as conn:
        try:
            yield conn
        finally:
            conn.rollback()


def read_snapshot(engine: Engine, mapper: EventMapper, tail_limit: int = TAIL_LIMIT) -> Snapshot:
    """Counters and gauges as of now (raises if the database does not answer)."""
    e, jobs = t.events, t.jobs
    cp = t.projection_checkpoints
    with _snapshot_connection(engine) as conn:
        checkpoint = int(
            conn.execute(select(cp.c.position).where(cp.c.name == PROJECTION)).scalar() or 0
        )
        stored = c.read_counts(conn)
        tail = conn.execute(
            select(*c.EVENT_COLUMNS)
            .where(e.c.position > checkpoint)
            .order_by(e.c.position)
            .limit(tail_limit)
        ).all()
        counts = stored.merge(c.count_events(conn, mapper, tail))
        head = int(conn.execute(select(func.max(e.c.position))).scalar() or 0)
        behind = len(tail)
        if behind >= tail_limit:
            behind = int(
                conn.execute(select(func.count()).where(e.c.position > checkpoint)).scalar_one()
            )
        depth = count_jobs(conn)
        now = db_now_epoch(backend_of(conn))
        oldest, db_now = conn.execute(
            select(func.min(jobs.c.run_at), now).where(jobs.c.status == READY, jobs.c.run_at <= now)
        ).one()
        sagas = sagas_by_status(conn)
        orders = orders_by_status(conn)
        relays = _relays(conn)
    return Snapshot(
        counts=counts,
        checkpoint=checkpoint,
        head=head,
        behind=behind,
        jobs=by_row_status(depth),
        jobs_ready=depth.get(READY, 0),
        oldest_ready_age=max(0.0, float(db_now) - float(oldest)) if oldest is not None else 0.0,
        sagas=sagas,
        orders=orders,
        relays=relays,
    )


def _relays(conn: Connection) -> dict[str, RelayState]:
    cp, e = t.projection_checkpoints, t.events
    rows = conn.execute(
        select(cp.c.name, cp.c.position, cp.c.published).where(
            cp.c.name.startswith(RELAY_PREFIX, autoescape=True)
        )
    ).all()
    relays = {}
    for name, position, published in rows:
        after = select(e.c.position).where(e.c.position > position).limit(RELAY_LAG_LIMIT)
        lag = conn.execute(select(func.count()).select_from(after.subquery())).scalar_one()
        relays[str(name).removeprefix(RELAY_PREFIX)] = RelayState(int(lag), int(published or 0))
    return relays

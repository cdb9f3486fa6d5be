"""Metric counters derived from the event log: the numbers behind `/metrics`.

Every counter is a function of the events, so it is counted where the events are read
in order anyway: the projector (``adapters/projections.py``) counts each batch it
applies and adds the counts to ``metric_counters`` in the transaction that advances its
checkpoint. A batch applied twice, or by two projectors at once, is counted once (the
checkpoint only moves from the position the batch was read after), and the numbers are
the same for every process reading them, however many workers and API processes share
the database, across restarts.

At scrape time, the events after the checkpoint (those not projected yet) are counted on
the fly and added, in the same snapshot: the counters are exact at the moment of the
scrape, not a poll interval behind (see ``metrics.py``).

Series are keyed by name (without `_total`) and their label set, stored as canonical JSON.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Executable, Row, delete, select
from sqlalchemy.dialects import mysql, postgresql, sqlite

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import backend_of
from fulfillment.adapters.mapper import EventMapper, to_utc
from fulfillment.domain import events as ev
from fulfillment.domain.order import Order
from fulfillment.domain.saga import Saga
from fulfillment.domain.saga_definition import REGISTRY, StepSpec
from fulfillment.domain.status import FailureReason, SagaStatus

SAGAS_STARTED = "fulfillment_sagas_started"
SAGAS_FINISHED = "fulfillment_sagas_finished"
ORDERS_CANCELLED = "fulfillment_orders_cancelled"
STEP_ATTEMPTS = "fulfillment_step_attempts"
COMPENSATIONS = "fulfillment_compensations"
COMPENSATION_FAILURES = "fulfillment_compensation_failures"
EVENTS_APPENDED = "fulfillment_events_appended"
SAGA_DURATION = "fulfillment_saga_duration_seconds"

#: Outcomes of a finished saga: its terminal status (the order is fulfilled / cancelled).
COMPLETED, COMPENSATED = SagaStatus.COMPLETED.value, SagaStatus.COMPENSATED.value
FINISHED_OUTCOMES = (COMPLETED, COMPENSATED)
#: Outcomes of a step attempt, and of a failed compensation attempt.
SUCCEEDED, RETRIED, FAILED, PARKED = "succeeded", "retried", "failed", "parked"
STEP_OUTCOMES = (SUCCEEDED, RETRIED, FAILED)
COMPENSATION_FAILURE_OUTCOMES = (RETRIED, PARKED)
#: `reason` of a cancelled order: a FailureReason, or `other` (keeps the label set small).
OTHER_REASON = "other"
CANCEL_REASONS = (*(r.value for r in FailureReason), OTHER_REASON)

#: Upper bounds (seconds) of the saga duration histogram; `+Inf` is implied. A saga runs in
#: well under a second unless it waits for retries, whose backoff is 60 s by default.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

#: The event columns the counting reads (a projector batch selects exactly these).
EVENT_COLUMNS = (
    t.events.c.position,
    t.events.c.stream_id,
    t.events.c.type,
    t.events.c.event_version,
    t.events.c.data,
    t.events.c.recorded_at,
)


def _outcome_maps() -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Event type -> the step it succeeds or fails, the compensation it records, from
    every registered saga definition (the pivot's success counts as a saga's end)."""
    succeeded: dict[str, str] = {}
    failed: dict[str, str] = {}
    compensated: dict[str, str] = {}
    for definition in REGISTRY.all():
        for step in definition.steps:
            if not isinstance(step, StepSpec) or step.pivot:
                continue
            succeeded[step.succeeded.__name__] = step.name
            if step.failed is not None:
                failed[step.failed.__name__] = step.name
        for compensation in definition.compensations:
            compensated[compensation.recorded_by.__name__] = compensation.name
    return succeeded, failed, compensated


def known_labels() -> tuple[list[str], list[str]]:
    """The `step` and `compensation` label values of every registered definition, in
    their definitions' order (each series is reported from zero)."""
    succeeded, _, compensated = _outcome_maps()
    return list(dict.fromkeys(succeeded.values())), list(dict.fromkeys(compensated.values()))


# The order's terminal events are appended in the transaction that ends its saga.
_FINISHED = {ev.OrderFulfilled.__name__: COMPLETED, ev.OrderCancelled.__name__: COMPENSATED}
_SAGA_STARTED = ev.OrderFulfillmentSagaStarted.__name__
_ORDER_PREFIX = Order.stream_prefix + "-"
_SAGA_PREFIX = Saga.stream_prefix + "-"


def labels_key(labels: Mapping[str, str]) -> str:
    """The stored form of a label set: canonical JSON, "" for no labels."""
    if not labels:
        return ""
    return json.dumps(dict(sorted(labels.items())), separators=(",", ":"))


def parse_labels(key: str) -> dict[str, str]:
    return {str(k): str(v) for k, v in json.loads(key).items()} if key else {}


class Counts:
    """Values of counter series, by (name, label set); what one batch of events adds up to."""

    def __init__(self, values: Mapping[tuple[str, str], float] | None = None) -> None:
        self.values: dict[tuple[str, str], float] = dict(values or {})

    def add(self, name: str, value: float = 1.0, **labels: str) -> None:
        key = (name, labels_key(labels))
        self.values[key] = self.values.get(key, 0.0) + value

    def merge(self, other: Counts) -> Counts:
        """A new Counts with both sets of values added up."""
        merged = Counts(self.values)
        for key, value in other.values.items():
            merged.values[key] = merged.values.get(key, 0.0) + value
        return merged

    def get(self, name: str, **labels: str) -> float:
        return self.values.get((name, labels_key(labels)), 0.0)

    def series(self, name: str) -> Iterator[tuple[dict[str, str], float]]:
        """(labels, value) of every series of `name`."""
        for (series_name, key), value in sorted(self.values.items()):
            if series_name == name:
                yield parse_labels(key), value

    def __bool__(self) -> bool:
        return any(self.values.values())

    def __repr__(self) -> str:
        return f"Counts({self.values!r})"


def bucket_label(bound: float) -> str:
    """The `le` label of a bucket bound, as Prometheus writes it: "0.5", "60.0", "+Inf"."""
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _bucket_of(seconds: float) -> str:
    for bound in DURATION_BUCKETS:
        if seconds <= bound:
            return bucket_label(bound)
    return "+Inf"


def observe_duration(counts: Counts, seconds: float, outcome: str) -> None:
    """One saga duration in the histogram; buckets are stored per bucket, not cumulative."""
    seconds = max(0.0, seconds)  # workers' clocks may disagree by a little
    counts.add(SAGA_DURATION + "_bucket", outcome=outcome, le=_bucket_of(seconds))
    counts.add(SAGA_DURATION + "_sum", seconds, outcome=outcome)
    counts.add(SAGA_DURATION + "_count", outcome=outcome)


def _order_id(stream_id: str) -> str:
    for prefix in (_ORDER_PREFIX, _SAGA_PREFIX):
        if stream_id.startswith(prefix):
            return stream_id[len(prefix) :]
    return stream_id


def count_events(conn: Connection, mapper: EventMapper, rows: Sequence[Row[Any]]) -> Counts:
    """What `rows` (selected as EVENT_COLUMNS, in position order) add to the counters.

    The saga duration of a saga that ends in `rows` needs its start, read from the
    saga's stream when it is not in `rows` too.
    """
    counts = Counts()
    started: dict[str, datetime] = {}
    finished: list[tuple[str, str, datetime]] = []
    _STEP_SUCCEEDED, _STEP_FAILED, _COMPENSATED = _outcome_maps()
    for row in rows:
        kind = str(row.type)
        counts.add(EVENTS_APPENDED, type=kind)
        if kind == _SAGA_STARTED:
            counts.add(SAGAS_STARTED)
            started[_order_id(row.stream_id)] = to_utc(row.recorded_at)
        elif kind in _STEP_SUCCEEDED:
            counts.add(STEP_ATTEMPTS, step=_STEP_SUCCEEDED[kind], outcome=SUCCEEDED)
        elif kind in _STEP_FAILED:
            counts.add(STEP_ATTEMPTS, step=_STEP_FAILED[kind], outcome=FAILED)
        elif kind in _COMPENSATED:
            counts.add(COMPENSATIONS, compensation=_COMPENSATED[kind])
        elif kind in _FINISHED:
            outcome = _FINISHED[kind]
            counts.add(SAGAS_FINISHED, outcome=outcome)
            finished.append((_order_id(row.stream_id), outcome, to_utc(row.recorded_at)))
            if outcome == COMPENSATED:
                event = _decode(mapper, row)
                assert isinstance(event, ev.OrderCancelled)
                reason = event.reason if event.reason in CANCEL_REASONS else OTHER_REASON
                counts.add(ORDERS_CANCELLED, reason=reason)
        elif kind == ev.SagaStepAttemptFailed.__name__:
            attempt = _decode(mapper, row)
            assert isinstance(attempt, ev.SagaStepAttemptFailed)
            counts.add(STEP_ATTEMPTS, step=attempt.step, outcome=RETRIED)
        elif kind == ev.CompensationAttemptFailed.__name__:
            failure = _decode(mapper, row)
            assert isinstance(failure, ev.CompensationAttemptFailed)
            counts.add(COMPENSATION_FAILURES, compensation=failure.compensation, outcome=RETRIED)
        elif kind == ev.SagaCompensationFailed.__name__:
            parked = _decode(mapper, row)
            assert isinstance(parked, ev.SagaCompensationFailed)
            counts.add(COMPENSATION_FAILURES, compensation=parked.compensation, outcome=PARKED)
    missing = sorted({order_id for order_id, _, _ in finished} - started.keys())
    started.update(saga_start_times(conn, missing))
    for order_id, outcome, at in finished:
        start = started.get(order_id)
        if start is not None:  # an order whose saga never started has no duration
            observe_duration(counts, (at - start).total_seconds(), outcome)
    return counts


def _decode(mapper: EventMapper, row: Row[Any]) -> ev.DomainEvent:
    return mapper.to_event(row.type, row.event_version, row.data, row.recorded_at)


def saga_start_times(conn: Connection, order_ids: Iterable[str]) -> dict[str, datetime]:
    """When each order's saga started (its OrderFulfillmentSagaStarted), by order id."""
    ids = list(order_ids)
    found: dict[str, datetime] = {}
    for i in range(0, len(ids), 500):
        streams = [Saga.stream_id_for(oid) for oid in ids[i : i + 500]]
        rows = conn.execute(
            select(t.events.c.stream_id, t.events.c.recorded_at).where(
                t.events.c.stream_id.in_(streams), t.events.c.type == _SAGA_STARTED
            )
        )
        for stream_id, recorded_at in rows:
            found[_order_id(stream_id)] = to_utc(recorded_at)
    return found


def _upsert(backend: str) -> Executable:
    table = t.metric_counters
    if backend == "postgresql":
        pg = postgresql.insert(table)
        return pg.on_conflict_do_update(
            index_elements=[table.c.name, table.c.labels],
            set_={"value": table.c.value + pg.excluded.value},
        )
    if backend == "mysql":
        my = mysql.insert(table)
        return my.on_duplicate_key_update(value=table.c.value + my.inserted.value)
    lite = sqlite.insert(table)
    return lite.on_conflict_do_update(
        index_elements=[table.c.name, table.c.labels],
        set_={"value": table.c.value + lite.excluded.value},
    )


def add_counts(conn: Connection, counts: Counts) -> None:
    """Add `counts` to the stored counters, inside the caller's transaction."""
    rows = [
        {"name": name, "labels": labels, "value": value}
        for (name, labels), value in sorted(counts.values.items())
        if value
    ]
    if rows:
        conn.execute(_upsert(backend_of(conn)), rows)


def read_counts(conn: Connection) -> Counts:
    """The stored counters."""
    table = t.metric_counters
    rows = conn.execute(select(table.c.name, table.c.labels, table.c.value))
    return Counts({(str(name), str(labels)): float(value) for name, labels, value in rows})


def reset_counts(conn: Connection) -> None:
    """Forget every counter (a projection rebuild counts the whole log again)."""
    conn.execute(delete(t.metric_counters))

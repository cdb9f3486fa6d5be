"""Prometheus metrics, read from the database at each scrape: `Metrics(...).render()`.

Aggregated through the database, not in process memory (nor prometheus-client's
multiprocess mode): every API process reports the same numbers whichever worker ran the
sagas, however many processes there are, and across restarts.

* Counters (sagas started and finished, step attempts, compensations, events appended,
  the saga duration histogram) are derived from the event log: the stored counters the
  projector keeps (``adapters/metric_counters.py``) plus the events after its checkpoint,
  counted on the fly, read in ONE snapshot, so a scrape is exact even while the projector
  lags.
* Gauges (jobs ready and the age of the oldest, jobs by status, projection lag, the head
  of the log, orders and sagas by status) are read live.

The database read is the query side's (``views/metrics.py``, `read_snapshot`); this
module turns its `Snapshot` into metric families. Each app gets its own
`CollectorRegistry`: no global state, tests can build many apps.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from sqlalchemy import Engine

from fulfillment.adapters import metric_counters as c
from fulfillment.adapters.mapper import EventMapper
from fulfillment.domain.events import EVENT_TYPES
from fulfillment.domain.status import OrderStatus, SagaStatus
from fulfillment.views.metrics import PROJECTION, RELAY_LAG_LIMIT, Snapshot, read_snapshot

JOB_STATUSES = ("ready", "running", "dead")


def _counter(
    name: str, documentation: str, counts: c.Counts, labels: list[str], known: list[list[str]]
) -> CounterMetricFamily:
    """A counter family with a series for each of `known` (0 until counted) and any other."""
    family = CounterMetricFamily(name, documentation, labels=labels)
    values: dict[tuple[str, ...], float] = {
        tuple(lbl[k] for k in labels): v for lbl, v in counts.series(name)
    }
    for known_values in known:
        values.setdefault(tuple(known_values), 0.0)
    for label_values, value in sorted(values.items()):
        family.add_metric(list(label_values), value)
    return family


def _duration_histogram(counts: c.Counts) -> HistogramMetricFamily:
    family = HistogramMetricFamily(
        c.SAGA_DURATION,
        "Time from a saga's start to its end (order fulfilled or cancelled), in seconds.",
        labels=["outcome"],
    )
    bounds = [*c.DURATION_BUCKETS, float("inf")]
    for outcome in c.FINISHED_OUTCOMES:
        per_bucket = [0.0] * len(bounds)
        for labels, value in counts.series(c.SAGA_DURATION + "_bucket"):
            if labels.get("outcome") != outcome:
                continue
            le = float(labels["le"])
            # A bound no longer configured counts in the next bucket up (never lost).
            index = next(i for i, bound in enumerate(bounds) if le <= bound)
            per_bucket[index] += value
        cumulative, buckets = 0.0, []
        for bound, n in zip(bounds, per_bucket, strict=True):
            cumulative += n
            buckets.append((c.bucket_label(bound), cumulative))
        family.add_metric(
            [outcome],
            buckets,
            sum_value=counts.get(c.SAGA_DURATION + "_sum", outcome=outcome),
        )
    return family


def _gauge(
    name: str, documentation: str, label: str, values: dict[str, int], known: tuple[str, ...]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key in sorted({*known, *values}):
        family.add_metric([key], values.get(key, 0))
    return family


def metric_families(snap: Snapshot) -> Iterator[Metric]:
    """The Prometheus families of one snapshot (names, types and labels: docs/observability.md)."""
    counts = snap.counts
    steps, compensations = c.known_labels()
    yield _counter(c.SAGAS_STARTED, "Sagas started (one per order).", counts, [], [[]])
    yield _counter(
        c.SAGAS_FINISHED,
        "Sagas that ended, by outcome: completed (order fulfilled) or compensated "
        "(order cancelled after undoing what had succeeded).",
        counts,
        ["outcome"],
        [[o] for o in c.FINISHED_OUTCOMES],
    )
    yield _counter(
        c.ORDERS_CANCELLED,
        "Orders cancelled, by the reason their saga failed.",
        counts,
        ["reason"],
        [[r] for r in c.CANCEL_REASONS],
    )
    yield _duration_histogram(counts)
    yield _counter(
        c.STEP_ATTEMPTS,
        "Attempts of saga steps, by step and outcome: succeeded; retried (a transient "
        "failure, tried again after a backoff); failed (for good: compensation follows).",
        counts,
        ["step", "outcome"],
        [[s, o] for s in steps for o in c.STEP_OUTCOMES],
    )
    yield _counter(
        c.COMPENSATIONS,
        "Compensations run, each undoing one step that had succeeded.",
        counts,
        ["compensation"],
        [[x] for x in compensations],
    )
    yield _counter(
        c.COMPENSATION_FAILURES,
        "Failed compensation attempts: retried after a backoff, or parked "
        "(the saga waits in compensation_failed for an operator).",
        counts,
        ["compensation", "outcome"],
        [[x, o] for x in compensations for o in c.COMPENSATION_FAILURE_OUTCOMES],
    )
    yield _counter(
        c.EVENTS_APPENDED,
        "Events appended to the event store, by type.",
        counts,
        ["type"],
        [[name] for name in EVENT_TYPES],
    )
    yield _gauge(
        "fulfillment_jobs",
        "Jobs in the durable queue, by status (ready includes jobs waiting for a backoff).",
        "status",
        snap.jobs,
        JOB_STATUSES,
    )
    yield GaugeMetricFamily(
        "fulfillment_jobs_ready", "Jobs due now and waiting for a worker.", value=snap.jobs_ready
    )
    yield GaugeMetricFamily(
        "fulfillment_jobs_oldest_ready_age_seconds",
        "How long the oldest due job has been waiting for a worker (database clock); 0 if none.",
        value=snap.oldest_ready_age,
    )
    lag = GaugeMetricFamily(
        "fulfillment_projection_lag_events",
        "Events the projection has not applied yet.",
        labels=["projection"],
    )
    lag.add_metric([PROJECTION], snap.behind)
    yield lag
    checkpoint = GaugeMetricFamily(
        "fulfillment_projection_checkpoint_position",
        "Position of the last event the projection has applied.",
        labels=["projection"],
    )
    checkpoint.add_metric([PROJECTION], snap.checkpoint)
    yield checkpoint
    yield GaugeMetricFamily(
        "fulfillment_events_head_position",
        "Position of the newest event in the log.",
        value=snap.head,
    )
    relay_lag = GaugeMetricFamily(
        "fulfillment_relay_lag_events",
        f"Events after the event relay's checkpoint, not yet published (at most "
        f"{RELAY_LAG_LIMIT}).",
        labels=["relay"],
    )
    relay_published = CounterMetricFamily(
        "fulfillment_relay_published_total",
        "Events the event relay published with the broker's confirmation, and checkpointed.",
        labels=["relay"],
    )
    for name, relay in sorted(snap.relays.items()):
        relay_lag.add_metric([name], relay.lag)
        relay_published.add_metric([name], relay.published)
    yield relay_lag
    yield relay_published
    yield _gauge(
        "fulfillment_sagas",
        "Sagas by status, as projected.",
        "status",
        snap.sagas,
        tuple(x.value for x in SagaStatus),
    )
    yield _gauge(
        "fulfillment_orders",
        "Orders by status, as projected (needs_attention: its saga is parked).",
        "status",
        snap.orders,
        tuple(x.value for x in OrderStatus),
    )


class FulfillmentCollector(Collector):
    """Reads the database at each scrape (see the module docstring)."""

    def __init__(self, engine: Engine, mapper: EventMapper) -> None:
        self.engine = engine
        self.mapper = mapper

    def collect(self) -> Iterator[Metric]:
        yield from metric_families(read_snapshot(self.engine, self.mapper))


class Metrics:
    """`GET /metrics` of one app: its own registry (so several apps in one process never
    share, or collide on, the global one), holding the fulfillment collector."""

    def __init__(self, engine: Engine, mapper: EventMapper) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(FulfillmentCollector(engine, mapper))

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type.

        Raises (SQLAlchemy errors) when the database does not answer: answer 503 then.
        """
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

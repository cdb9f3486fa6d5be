"""Prometheus metrics of the API, counted from the database at each scrape.

Counting from the database (not in process memory) makes every API process report the
same numbers, however many there are and whichever ran the sagas.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from fulfillment.adapters import tables as t


class SagaMetrics(Collector):
    """Counted from the database at each scrape, so every API process reports the same."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        types = ("OrderFulfillmentSagaStarted", "OrderFulfillmentSagaCompleted", "OrderCancelled")
        with self.engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
            counts = {
                str(kind): int(n)
                for kind, n in conn.execute(
                    select(t.events.c.type, func.count())
                    .where(t.events.c.type.in_(types))
                    .group_by(t.events.c.type)
                )
            }
            jobs = {
                str(status): int(n)
                for status, n in conn.execute(
                    select(t.jobs.c.status, func.count()).group_by(t.jobs.c.status)
                )
            }
        yield CounterMetricFamily(
            "fulfillment_sagas_started",
            "Sagas started (OrderFulfillmentSagaStarted events).",
            value=counts.get("OrderFulfillmentSagaStarted", 0),
        )
        finished = CounterMetricFamily(
            "fulfillment_sagas_finished",
            "Sagas that ended: completed (order fulfilled) or compensated (order cancelled).",
            labels=["outcome"],
        )
        finished.add_metric(["completed"], counts.get("OrderFulfillmentSagaCompleted", 0))
        finished.add_metric(["compensated"], counts.get("OrderCancelled", 0))
        yield finished
        queue = GaugeMetricFamily(
            "fulfillment_jobs", "Jobs in the durable queue, by status.", labels=["status"]
        )
        for status in ("ready", "running", "dead"):
            queue.add_metric([status], jobs.get(status, 0))
        yield queue

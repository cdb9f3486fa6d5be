"""Prometheus metrics: after a known set of orders, every number matches what happened.

The counters are aggregated through the database (the projector keeps them, the scrape
adds what it has not applied yet), so they are the same whichever process scrapes, with
any number of workers and projectors, and never counted twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial

import pytest
from prometheus_client.parser import text_string_to_metric_families
from saga_testkit import failing_job, place_order, run_jobs
from sqlalchemy import func, select, update

from fulfillment.adapters import job_queue
from fulfillment.adapters import tables as t
from fulfillment.adapters.carrier import SimulatedCarrier
from fulfillment.adapters.projections import Projector
from fulfillment.bootstrap import App
from fulfillment.domain.errors import TransientFailure
from fulfillment.entrypoints.worker import Worker
from fulfillment.observability.metrics import Metrics
from fulfillment.service_layer import commands as c
from fulfillment.service_layer.jobs import JobSpec

MakeApp = Callable[..., App]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
SKU = "PARACETAMOL-500"


class FailsOnce:
    """Carrier keys that fail transiently the first time they are used."""

    def __init__(self, *keys: str) -> None:
        self.pending = set(keys)
        self.lock = threading.Lock()

    def __call__(self, key: str) -> bool:
        with self.lock:
            if key in self.pending:
                self.pending.discard(key)
                return True
            return False


# One unit of the SKU the tests stock.
place = partial(place_order, sku=SKU)


def scrape(app: App) -> Samples:
    body, content_type = Metrics(app.engine, app.mapper).render()
    assert content_type.startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def event_count(app: App) -> int:
    with app.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(t.events)).scalar_one())


def carrier_failing_once(*keys: str) -> SimulatedCarrier:
    return SimulatedCarrier(("US", "GB"), fail_keys=FailsOnce(*keys))


def run_known_orders(make_app: MakeApp, workers: int = 1) -> list[App]:
    """3 fulfilled, 1 expired prescription, 1 unsupported destination, 1 retried shipment.

    Run by `workers` worker processes' worth of apps (own engines and caches) at once.
    """
    carrier = carrier_failing_once("retry:shipment")  # one carrier, as in the real world
    apps = [make_app(carrier=carrier) for _ in range(workers)]
    first = apps[0]
    first.bus.handle(c.SetInventory(SKU, 100))
    for order_id in ("ok-1", "ok-2", "ok-3"):
        place(first, order_id)
    place(first, "expired", expires_on=datetime.now(UTC).date() - timedelta(days=1))
    place(first, "far-away", country="JP")
    place(first, "retry")
    threads = [
        threading.Thread(target=Worker(app, 3).run, kwargs={"until_idle": True, "timeout": 60})
        for app in apps
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return apps


def assert_outcomes(samples: Samples) -> None:
    assert value(samples, "fulfillment_sagas_started_total") == 6
    assert value(samples, "fulfillment_sagas_finished_total", outcome="completed") == 4
    assert value(samples, "fulfillment_sagas_finished_total", outcome="compensated") == 2
    cancelled = "fulfillment_orders_cancelled_total"
    assert value(samples, cancelled, reason="prescription_expired") == 1
    assert value(samples, cancelled, reason="unsupported_destination") == 1
    assert value(samples, cancelled, reason="insufficient_stock") == 0

    attempts = "fulfillment_step_attempts_total"
    assert {
        (dict(labels)["step"], dict(labels)["outcome"]): v
        for (name, labels), v in samples.items()
        if name == attempts and v
    } == {
        ("create_prescription", "succeeded"): 5,
        ("create_prescription", "failed"): 1,
        ("reserve_inventory", "succeeded"): 5,
        ("initiate_shipment", "succeeded"): 4,
        ("initiate_shipment", "retried"): 1,
        ("initiate_shipment", "failed"): 1,
    }
    compensations = "fulfillment_compensations_total"
    assert value(samples, compensations, compensation="release_inventory") == 1
    assert value(samples, compensations, compensation="cancel_prescription") == 1
    assert value(samples, compensations, compensation="cancel_shipment") == 0

    duration = "fulfillment_saga_duration_seconds"
    assert value(samples, duration + "_count", outcome="completed") == 4
    assert value(samples, duration + "_count", outcome="compensated") == 2
    assert value(samples, duration + "_bucket", outcome="completed", le="+Inf") == 4
    assert value(samples, duration + "_sum", outcome="completed") >= 0

    assert value(samples, "fulfillment_events_appended_total", type="OrderCreated") == 6
    assert value(samples, "fulfillment_events_appended_total", type="OrderFulfilled") == 4
    assert value(samples, "fulfillment_jobs", status="ready") == 0
    assert value(samples, "fulfillment_jobs", status="dead") == 0
    assert value(samples, "fulfillment_jobs_ready") == 0


def test_metrics_after_a_known_set_of_orders_match_their_outcomes(make_app: MakeApp) -> None:
    worker_app = run_known_orders(make_app)[0]
    api_app = make_app()  # another process scraping: same numbers

    # Before the projector has run, the scrape counts the whole log itself.
    before = scrape(api_app)
    assert_outcomes(before)
    assert value(before, "fulfillment_projection_lag_events", projection="order_summaries") > 0

    Projector(worker_app.engine, worker_app.mapper).catch_up(timeout=30)
    after = scrape(api_app)
    assert_outcomes(after)
    assert value(after, "fulfillment_projection_lag_events", projection="order_summaries") == 0
    assert value(after, "fulfillment_events_head_position") == value(
        after, "fulfillment_projection_checkpoint_position", projection="order_summaries"
    )
    total = sum(v for (n, _), v in after.items() if n == "fulfillment_events_appended_total")
    assert total == event_count(api_app)
    assert value(after, "fulfillment_sagas", status="completed") == 4
    assert value(after, "fulfillment_orders", status="cancelled") == 2


def test_several_workers_and_projectors_count_each_saga_once(make_app: MakeApp) -> None:
    apps = run_known_orders(make_app, workers=2)
    # Two projectors, in two "processes" (own engines), race over the same batches.
    projectors = [Projector(app.engine, app.mapper, batch_size=7) for app in apps]
    threads = [threading.Thread(target=p.catch_up, kwargs={"timeout": 30}) for p in projectors]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    samples = scrape(make_app())
    assert_outcomes(samples)
    assert value(samples, "fulfillment_projection_lag_events", projection="order_summaries") == 0


def test_a_batch_applied_twice_is_counted_once(make_app: MakeApp) -> None:
    app = run_known_orders(make_app)[0]
    projector = Projector(app.engine, app.mapper)
    batch = projector.read_batch()
    assert batch is not None
    assert projector.commit_batch(batch)
    assert not projector.commit_batch(batch)  # stale: its checkpoint has moved on
    projector.catch_up()
    assert_outcomes(scrape(app))


def test_rebuilding_the_projection_counts_the_same(make_app: MakeApp) -> None:
    app = run_known_orders(make_app)[0]
    projector = Projector(app.engine, app.mapper)
    projector.catch_up()
    before = scrape(app)
    projector.rebuild()
    after = scrape(app)
    assert_outcomes(after)
    assert after == before


def test_jobs_ready_and_the_age_of_the_oldest_come_from_the_queue(make_app: MakeApp) -> None:
    app = make_app()
    app.bus.handle(c.SetInventory(SKU, 5))
    place(app, "waiting-1")
    place(app, "waiting-2")
    with app.engine.begin() as conn:
        # One job has been due for ten minutes; another waits for a backoff.
        conn.execute(
            update(t.jobs)
            .where(t.jobs.c.saga_id == "waiting-1")
            .values(run_at=t.jobs.c.run_at - 600)
        )
        job_queue.enqueue(conn, [JobSpec("later", "create_prescription", 3600)])

    samples = scrape(app)
    assert value(samples, "fulfillment_jobs", status="ready") == 3
    assert value(samples, "fulfillment_jobs_ready") == 2
    assert 600 <= value(samples, "fulfillment_jobs_oldest_ready_age_seconds") < 3600
    assert value(samples, "fulfillment_sagas_started_total") == 2
    assert value(samples, "fulfillment_sagas_finished_total", outcome="completed") == 0


def test_each_app_has_its_own_registry(make_app: MakeApp) -> None:
    # Two apps in one process (two registrations of the same collector) both scrape.
    first, second = make_app(), make_app()
    assert scrape(first) == scrape(second)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_an_empty_database_reports_zeros(make_app: MakeApp) -> None:
    samples = scrape(make_app())
    assert value(samples, "fulfillment_sagas_started_total") == 0
    assert value(samples, "fulfillment_sagas_finished_total", outcome="compensated") == 0
    assert value(samples, "fulfillment_saga_duration_seconds_count", outcome="completed") == 0
    assert value(samples, "fulfillment_jobs_oldest_ready_age_seconds") == 0


def test_a_compensation_that_keeps_failing_parks_the_saga_and_is_counted(
    make_app: MakeApp,
) -> None:
    app = make_app(carrier=SimulatedCarrier(("US",)))

    failing_job(app, "release_inventory", lambda: TransientFailure("inventory service unavailable"))
    app.bus.handle(c.SetInventory(SKU, 5))
    place(app, "stuck", country="JP")  # shipment fails, releasing the stock keeps failing
    run_jobs(app, 2)
    Projector(app.engine, app.mapper).catch_up()

    samples = scrape(app)
    failures = "fulfillment_compensation_failures_total"
    assert value(samples, failures, compensation="release_inventory", outcome="retried") == 2
    assert value(samples, failures, compensation="release_inventory", outcome="parked") == 1
    assert value(samples, "fulfillment_compensations_total", compensation="release_inventory") == 0
    # Parked is not finished: an operator may still let it end as compensated.
    assert value(samples, "fulfillment_sagas_finished_total", outcome="compensated") == 0
    assert value(samples, "fulfillment_sagas", status="compensation_failed") == 1
    assert value(samples, "fulfillment_orders", status="needs_attention") == 1

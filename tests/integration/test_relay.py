"""The event relay in process, on each backend and broker: what reaches the broker is
exactly the store's events, in order, as `GET /events` shows them (patient data left
out unless asked for); `--types`; the lease; its metrics.

The brokers and how the tests keep apart on them: tests/relay_testkit.py.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Sequence

import pytest
from prometheus_client.parser import text_string_to_metric_families
from relay_testkit import (
    BROKERS,
    checkpoint,
    consumer,
    head,
    new_marker,
    require_broker,
    running_relay,
    store_events,
)
from saga_testkit import place_order, run_jobs, wait_until
from sqlalchemy import func, select, update

from fulfillment.adapters import relay as r
from fulfillment.adapters import tables as t
from fulfillment.adapters.mapper import EventMapper
from fulfillment.bootstrap import App
from fulfillment.observability.metrics import Metrics
from fulfillment.views.events import events_after

MakeApp = Callable[..., App]
SKU = "RELAY-SKU"
PHI_FIELDS = {
    "prescription": {"patient_name", "prescriber_id"},
    "shipping_address": {"name", "line1", "city", "postal_code"},
}


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> str:
    return str(request.param)


#: In every order id of this module's tests: what they read from the broker is theirs.
MARKER = new_marker()


def place(app: App, first: int, count: int) -> None:
    for i in range(first, first + count):
        place_order(app, f"relay-{MARKER}-{i:04d}", sku=SKU, patient_name=f"Patient {i}")


def caught_up(database_url: str, name: str = "test") -> Callable[[], bool]:
    return lambda: checkpoint(database_url, name)[0] == head(database_url) > 0


def test_every_event_reaches_the_broker_once_in_order_without_patient_data(
    make_app: MakeApp, database_url: str, broker: str
) -> None:
    url = require_broker(broker)
    app = make_app()
    place_order(app, f"relay-{MARKER}-stock", sku=SKU, stock=1000)
    place(app, 0, 12)
    run_jobs(app)
    with consumer(broker, url, MARKER) as read:
        with running_relay(app.engine, EventMapper(), broker, url, name="test"):
            wait_until(caught_up(database_url), 30, "the relay caught up")
            place(app, 100, 5)  # while it runs: followed too
            run_jobs(app)
            wait_until(caught_up(database_url), 30, "the relay caught up again")
        received = read()
    expected = store_events(database_url)
    assert len({e["type"] for e in expected}) > 5  # whole sagas, not just their starts
    assert [m.body for m in received] == expected
    assert [m.message_id for m in received] == [str(e["position"]) for e in expected]
    prefix = "" if broker == "amqp" else r.SUBJECT_PREFIX
    assert [m.key for m in received] == [prefix + e["type"] for e in expected]
    if broker == "amqp":
        assert {(m.headers["delivery_mode"], m.headers["content_type"]) for m in received} == {
            (2, "application/json")
        }
    for message in received:
        data = message.body["data"]
        for value, fields in PHI_FIELDS.items():
            if value in data:
                assert not fields & set(data[value]), message.body
        if "shipping_address" in data:
            assert data["shipping_address"]["country"] == "US"
    assert checkpoint(database_url, "test") == (expected[-1]["position"], len(expected))


def test_only_the_types_asked_for_are_published_and_the_checkpoint_passes_the_rest(
    make_app: MakeApp, database_url: str, broker: str
) -> None:
    url = require_broker(broker)
    app = make_app()
    place_order(app, f"relay-{MARKER}-stock", sku=SKU, stock=1000)
    place(app, 0, 6)
    run_jobs(app)
    only = frozenset({"OrderCreated", "OrderFulfilled"})
    with consumer(broker, url, MARKER) as read:
        with running_relay(app.engine, EventMapper(), broker, url, name="test", types=only):
            wait_until(caught_up(database_url), 30, "the relay caught up")
        received = read()
    expected = [e for e in store_events(database_url) if e["type"] in only]
    assert {e["type"] for e in expected} == only
    assert [m.body for m in received] == expected
    assert checkpoint(database_url, "test") == (head(database_url), len(expected))


def test_with_patient_data_the_body_is_what_get_events_shows(
    make_app: MakeApp, database_url: str
) -> None:
    url = require_broker("amqp")
    app = make_app()
    place(app, 0, 4)
    with consumer("amqp", url, MARKER) as read:
        with running_relay(
            app.engine, app.mapper, "amqp", url, name="test", include_phi=True, batch_size=3
        ):
            wait_until(caught_up(database_url), 30, "the relay caught up")
        received = read()
    shown = events_after(app, 0, 1000)
    assert [m.body for m in received] == shown
    names = {m.body["data"]["prescription"]["patient_name"] for m in received}
    assert names == {f"Patient {i}" for i in range(4)}


class Recording:
    """A publisher that notes when each batch was being published, and by whom."""

    def __init__(self, inner: r.Publisher, who: str, log: list[tuple[str, float, float]]) -> None:
        self.inner = inner
        self.who = who
        self.log = log
        self.description = inner.description

    async def connect(self) -> None:
        await self.inner.connect()

    async def publish(self, messages: Sequence[r.Message], timeout: float) -> None:
        started = time.monotonic()
        await self.inner.publish(messages, timeout)
        self.log.append((self.who, started, time.monotonic()))

    async def close(self) -> None:
        await self.inner.close()


def test_two_relays_of_one_name_never_publish_at_the_same_time(
    make_app: MakeApp, database_url: str, broker: str
) -> None:
    """Both run while orders arrive: one holds the lease and publishes; once it stops,
    the other takes over from its checkpoint. No batch of one overlaps one of the
    other, and every event arrives exactly once (a clean hand-over repeats nothing)."""
    url = require_broker(broker)
    app = make_app()
    place_order(app, f"relay-{MARKER}-stock", sku=SKU, stock=1000)
    log: list[tuple[str, float, float]] = []
    options = {"name": "test", "batch_size": 7, "poll_seconds": 0.01, "lease_seconds": 2.0}

    def relay(who: str) -> r.Relay:
        publisher = Recording(r.publisher_for(url, who), who, log)
        return r.Relay(app.engine, EventMapper(), publisher, holder=who, **options)  # type: ignore[arg-type]

    from relay_testkit import RelayThread

    with consumer(broker, url, MARKER) as read:
        first, second = RelayThread(relay("first")), RelayThread(relay("second"))
        try:
            place(app, 0, 15)
            wait_until(caught_up(database_url), 30, "caught up")
            holders = {who for who, _, _ in log}
            assert len(holders) == 1, holders
            (holder,) = holders
            (standby, stopping) = (second, first) if holder == "first" else (first, second)
            stopping.stop()
            place(app, 100, 15)
            wait_until(caught_up(database_url), 30, "caught up after the hand-over")
        finally:
            first.stop()
            second.stop()
        received = read()
    assert {who for who, _, _ in log} == {"first", "second"}
    spans = sorted((start, end, who) for who, start, end in log)
    for (_, end, who), (start, _, next_who) in itertools.pairwise(spans):
        assert who == next_who or end <= start, spans
    expected = store_events(database_url)
    assert [m.message_id for m in received] == [str(e["position"]) for e in expected]
    assert standby.relay.published + stopping.relay.published == len(expected)


def test_the_fence_stops_a_relay_whose_lease_was_taken_over(
    make_app: MakeApp, database_url: str
) -> None:
    app = make_app()
    a = r.Lease(app.engine, "fenced", 5.0, holder="a")
    b = r.Lease(app.engine, "fenced", 5.0, holder="b")
    assert a.take() == 0
    assert b.take() is None, "held by a"
    assert a.advance(0, 10, 3)
    # a's lease runs out (a paused process): b may take it, a's next advance fails.
    with app.engine.begin() as conn:
        conn.execute(update(t.projection_checkpoints).values(lease_expires_at=0.0))
    assert b.take() == 10
    assert not a.advance(10, 20, 5)
    assert a.take() is None
    assert b.advance(10, 20, 5)
    assert b.holder_now()[0] == "b"
    assert checkpoint(database_url, "fenced") == (20, 8)
    b.release()
    assert a.take() == 20, "released: free at once"


def scrape(app: App) -> dict[tuple[str, str], float]:
    body, _ = Metrics(app.engine, app.mapper).render()
    return {
        (s.name, s.labels.get("relay", "")): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name.startswith("fulfillment_relay_")
    }


def test_published_total_and_lag_are_on_metrics(
    make_app: MakeApp, database_url: str, broker: str
) -> None:
    url = require_broker(broker)
    app = make_app()
    place(app, 0, 5)
    assert scrape(app) == {}, "no relay yet"
    with consumer(broker, url, MARKER) as read:
        with running_relay(app.engine, EventMapper(), broker, url, name="test"):
            wait_until(caught_up(database_url), 30, "the relay caught up")
        received = read()
    assert scrape(app) == {
        ("fulfillment_relay_lag_events", "test"): 0.0,
        ("fulfillment_relay_published_total", "test"): float(len(received)),
    }
    before = head(database_url)
    place(app, 10, 3)
    # Every committed event after the checkpoint counts, also those a follower may not
    # read yet (PostgreSQL's visibility rule, adapters/event_store.py).
    with app.engine.connect() as conn:
        behind = conn.execute(select(func.count()).where(t.events.c.position > before)).scalar_one()
    assert behind > 0
    assert scrape(app)[("fulfillment_relay_lag_events", "test")] == float(behind)


def test_an_unreachable_broker_is_retried_until_it_answers(
    make_app: MakeApp, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker that refuses connections: one line says so, nothing is checkpointed."""
    app = make_app()
    place(app, 0, 2)
    relay = r.Relay(
        app.engine, EventMapper(), r.publisher_for("amqp://127.0.0.1:1/", "x"), name="test"
    )
    stopper = threading.Timer(1.5, lambda: loop.call_soon_threadsafe(relay.stop))
    loop = asyncio.new_event_loop()
    caplog.set_level("WARNING", logger="fulfillment.relay")
    stopper.start()
    try:
        loop.run_until_complete(relay.run())
    finally:
        loop.close()
    outages = [rec.getMessage() for rec in caplog.records if "unreachable" in rec.getMessage()]
    assert len(outages) == 1, outages
    assert "RabbitMQ at amqp://127.0.0.1:1/" in outages[0] and "retrying" in outages[0]
    assert "Connection refused" in outages[0]  # the cause, not pika's empty wrapper
    assert checkpoint(database_url, "test") == (0, 0)

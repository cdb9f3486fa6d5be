"""The access audit of patient data (adapters/access_log.py) on every backend: the
batched writer (nothing written on the request path, batches of multi-row INSERTs, rows
kept while the database does not take them, dropped and logged past the bound), pruning
by FULFILLMENT_AUDIT_RETENTION_DAYS, the listing and its filters, exactly which HTTP
answers record which rows, and the CLI: `fulfillment audit list` and the commands that
print patient data.
"""

from __future__ import annotations

import getpass
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import LOOPBACK
from fastapi.testclient import TestClient
from saga_testkit import place_order, run_jobs
from sqlalchemy import Engine, event

from fulfillment import views
from fulfillment.adapters.access_log import (
    AccessLog,
    list_accesses,
    prune_expired,
    subjects_of,
)
from fulfillment.adapters.db import create_nullpool_engine
from fulfillment.bootstrap import App
from fulfillment.entrypoints.api import create_api
from fulfillment.entrypoints.cli_audit import parse_since

KEYS = (
    "watcher:viewer:s-viewer",
    "shop:client:s-client",
    "rx-desk:pharmacist:s-pharmacist",
    "ops:operator:s-operator",
)
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
Row = tuple[str, str, str | None, str | None]


def as_key(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def rows(engine: Engine) -> list[Row]:
    """Every row, oldest first: (key name, route, order id, customer id)."""
    found = reversed(list_accesses(engine, limit=1000))
    return [(a.key_name, a.route, a.order_id, a.customer_id) for a in found]


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


class Clock:
    def __init__(self, at: datetime = T0) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def inserts_into_access_log(engine: Engine) -> list[str]:
    """The INSERT statements into access_log that `engine` runs from now on."""
    seen: list[str] = []

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO ACCESS_LOG"):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", before)
    return seen


# --- the writer -------------------------------------------------------------------------


def test_records_wait_in_memory_until_a_flush_writes_them_in_multi_row_batches(
    app: App,
) -> None:
    writer = AccessLog(app.engine, batch=3)
    inserts = inserts_into_access_log(app.engine)
    for n in range(7):
        writer.record("ops", "/events", order_id=f"o-{n}", customer_id=f"cust-{n % 2}")

    assert rows(app.engine) == []  # recording writes nothing
    assert writer.pending == 7

    assert writer.flush() == 7

    assert len(inserts) == 3  # 3 + 3 + 1 rows, one INSERT each
    assert rows(app.engine) == [("ops", "/events", f"o-{n}", f"cust-{n % 2}") for n in range(7)]
    assert writer.pending == 0
    assert writer.flush() == 0


def test_the_thread_writes_every_interval_and_close_writes_the_rest(app: App) -> None:
    writer = AccessLog(app.engine, interval=0.05)
    writer.start()
    writer.record("ops", "/events", order_id="o-1", customer_id="cust-1")
    wait_for(lambda: len(rows(app.engine)) == 1)

    writer.close()  # the thread stopped: the next one waits for close's own flush
    writer.record("ops", "/events", order_id="o-2")
    writer.close()

    assert rows(app.engine) == [
        ("ops", "/events", "o-1", "cust-1"),
        ("ops", "/events", "o-2", None),
    ]


def test_a_full_batch_wakes_the_thread_before_its_interval(app: App) -> None:
    writer = AccessLog(app.engine, interval=60, batch=2)
    writer.start()
    try:
        writer.record("ops", "/events", order_id="o-1")
        writer.record("ops", "/events", order_id="o-2")
        wait_for(lambda: len(rows(app.engine)) == 2, timeout=5)
    finally:
        writer.close()


def test_rows_the_database_does_not_take_are_kept_and_past_the_bound_dropped_and_logged(
    app: App, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unavailable = create_nullpool_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    writer = AccessLog(unavailable, max_pending=3)
    for n in range(5):
        writer.record("ops", "/events", order_id=f"o-{n}")  # never raises, never blocks

    with pytest.raises(Exception, match="unable to open"):
        writer.flush()
    assert writer.pending == 3  # kept, the oldest first

    writer.engine = app.engine  # the database is back
    with caplog.at_level(logging.ERROR, logger="fulfillment.audit"):
        writer.close()

    assert rows(app.engine) == [("ops", "/events", f"o-{n}", None) for n in range(3)]
    assert "2 records of patient-data access dropped" in caplog.text


def test_the_thread_retries_until_the_database_takes_the_rows(
    app: App, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unavailable = create_nullpool_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    writer = AccessLog(unavailable, interval=0.02)
    writer.start()
    try:
        with caplog.at_level(logging.WARNING, logger="fulfillment.audit"):
            writer.record("ops", "/events", order_id="o-1")
            wait_for(lambda: "did not take 1 records" in caplog.text)
        writer.engine = app.engine
        wait_for(lambda: len(rows(app.engine)) == 1)
    finally:
        writer.close()


def test_close_logs_what_it_could_not_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unavailable = create_nullpool_engine(f"sqlite:///{tmp_path / 'no-such-dir' / 'x.db'}")
    writer = AccessLog(unavailable)
    writer.record("ops", "/events", order_id="o-1")

    with caplog.at_level(logging.ERROR, logger="fulfillment.audit"):
        writer.close(timeout=0.2)  # returns, never raises

    assert "1 records of patient-data access could not be written" in caplog.text


def test_subjects_are_the_orders_whose_creation_is_in_the_events() -> None:
    def e(kind: str, **data: Any) -> dict[str, Any]:
        return {"type": kind, "data": data}

    events = [
        e("OrderCreated", order_id="o-1", customer_id="cust-7"),
        e("OrderFulfillmentSagaStarted", saga_id="o-1", order_id="o-1", customer_id="cust-7"),
        e("PrescriptionCreated", saga_id="o-2", prescription_id="p-2"),
        e("OrderFulfillmentSagaStarted", saga_id="o-3", order_id="o-3", customer_id="cust-8"),
    ]

    assert subjects_of(events) == {"o-1": "cust-7", "o-3": "cust-8"}


# --- pruning ------------------------------------------------------------------------------


def test_rows_past_the_retention_are_pruned_in_batches(app: App) -> None:
    clock = Clock(T0 - timedelta(days=10))
    writer = AccessLog(app.engine, now=clock)
    for n in range(3):
        writer.record("ops", "/events", order_id=f"old-{n}")
    clock.at = T0 - timedelta(days=1)
    writer.record("ops", "/events", order_id="recent")
    writer.flush()

    def prune() -> int:
        return prune_expired(app.engine, 5, batch=2, now=lambda: T0)

    assert (prune(), prune(), prune()) == (2, 1, 0)
    assert rows(app.engine) == [("ops", "/events", "recent", None)]


def test_a_worker_prunes_by_FULFILLMENT_AUDIT_RETENTION_DAYS(
    make_app: Callable[..., App],
) -> None:
    app = make_app(audit_retention_days=30)
    clock = Clock(datetime.now(UTC) - timedelta(days=31))
    writer = AccessLog(app.engine, now=clock)
    writer.record("ops", "/events", order_id="old")
    clock.at = datetime.now(UTC) - timedelta(days=29)
    writer.record("ops", "/events", order_id="kept")
    writer.flush()

    run_jobs(app)  # its first loop prunes

    assert rows(app.engine) == [("ops", "/events", "kept", None)]


# --- the listing --------------------------------------------------------------------------


def three_reads(engine: Engine) -> None:
    clock = Clock(T0 - timedelta(hours=3))
    writer = AccessLog(engine, now=clock)
    writer.record("ops", "/events", order_id="o-1", customer_id="cust-7")
    clock.at = T0 - timedelta(hours=2)
    writer.record("rx-desk", "/orders/{order_id}/fhir", order_id="o-2", customer_id="cust-8")
    clock.at = T0 - timedelta(hours=1)
    writer.record("ops", "/orders/{order_id}/events", order_id="o-3", customer_id="cust-7")
    writer.flush()


def test_the_listing_is_newest_first_and_filters_by_customer_key_and_time(app: App) -> None:
    three_reads(app.engine)

    def orders(**filters: Any) -> list[str | None]:
        return [a.order_id for a in list_accesses(app.engine, **filters)]

    assert orders() == ["o-3", "o-2", "o-1"]
    assert orders(customer_id="cust-7") == ["o-3", "o-1"]
    assert orders(key_name="rx-desk") == ["o-2"]
    assert orders(since=T0 - timedelta(hours=2)) == ["o-3", "o-2"]  # at or after
    # Another offset, the same instant.
    assert orders(since=datetime.fromisoformat("2026-11-25T11:30:00+02:00")) == ["o-3", "o-2"]
    assert orders(customer_id="cust-7", key_name="ops", since=T0 - timedelta(hours=2)) == ["o-3"]
    assert orders(limit=1) == ["o-3"]
    assert orders(customer_id="nobody") == []
    newest = list_accesses(app.engine, limit=1)[0]
    assert newest.at == T0 - timedelta(hours=1)
    assert (newest.key_name, newest.route, newest.customer_id) == (
        "ops",
        "/orders/{order_id}/events",
        "cust-7",
    )


# --- the HTTP routes ------------------------------------------------------------------------


@pytest.fixture
def keyed(make_app: Callable[..., App]) -> App:
    app = make_app(api_keys=KEYS)
    place_order(app, "o-1", stock=5, customer_id="cust-7")
    place_order(app, "o-2", stock=5, customer_id="cust-8")
    return app


@pytest.fixture
def http(keyed: App) -> Iterator[tuple[TestClient, AccessLog]]:
    api = create_api(keyed)
    with TestClient(api) as client:
        yield client, api.state.access_log


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/orders/o-1/events", "/orders/{order_id}/events"),
        ("/orders/o-1/fhir", "/orders/{order_id}/fhir"),
        ("/api/dashboard/orders/o-1/timeline", "/api/dashboard/orders/{order_id}/timeline"),
    ],
)
def test_an_order_read_with_patient_data_records_the_key_route_order_and_customer(
    keyed: App, http: tuple[TestClient, AccessLog], path: str, route: str
) -> None:
    client, access_log = http

    answer = client.get(path, headers=as_key("s-pharmacist"))

    assert answer.status_code == 200, answer.text
    access_log.flush()
    assert rows(keyed.engine) == [("rx-desk", route, "o-1", "cust-7")]


def test_the_feed_records_each_order_whose_prescription_is_in_the_page(
    keyed: App, http: tuple[TestClient, AccessLog]
) -> None:
    client, access_log = http
    run_jobs(keyed)  # more events after the orders' creation
    last_creation = max(
        e["position"]
        for e in views.events_after(keyed, 0, 1000)
        if e["type"] in ("OrderCreated", "OrderFulfillmentSagaStarted")
    )

    assert client.get("/events", headers=as_key("s-operator")).status_code == 200
    access_log.flush()
    assert sorted(rows(keyed.engine)) == [
        ("ops", "/events", "o-1", "cust-7"),
        ("ops", "/events", "o-2", "cust-8"),
    ]

    # A page with no order's creation in it holds no prescription: nothing recorded.
    answer = client.get(f"/events?after={last_creation}", headers=as_key("s-operator"))
    assert answer.status_code == 200 and answer.json(), answer.text
    # A page of one order's creation: that order only.
    assert client.get("/events?limit=1", headers=as_key("s-pharmacist")).status_code == 200
    access_log.flush()
    assert rows(keyed.engine)[2:] == [("rx-desk", "/events", "o-1", "cust-7")]


def test_reads_without_patient_data_refusals_and_404s_record_nothing(
    keyed: App, http: tuple[TestClient, AccessLog]
) -> None:
    client, access_log = http
    pharmacist, viewer = as_key("s-pharmacist"), as_key("s-viewer")
    answers = [
        client.get("/api/dashboard/orders/o-1/timeline", headers=viewer),  # without PHI
        client.get("/api/dashboard/orders/o-1/timeline", headers=as_key("s-client")),
        client.get("/orders/o-1", headers=pharmacist),
        client.get("/orders", headers=pharmacist),
        client.get("/api/dashboard/orders", headers=pharmacist),
    ]
    assert [a.status_code for a in answers] == [200] * len(answers)
    assert [
        client.get("/orders/nope/events", headers=pharmacist).status_code,
        client.get("/orders/nope/fhir", headers=pharmacist).status_code,
        client.get("/api/dashboard/orders/nope/timeline", headers=pharmacist).status_code,
        client.get("/events", headers=viewer).status_code,
        client.get("/orders/o-1/fhir", headers=as_key("s-client")).status_code,
        client.get("/orders/o-1/events").status_code,  # no key
    ] == [404, 404, 404, 403, 403, 401]

    access_log.flush()
    assert rows(keyed.engine) == []


def test_without_keys_the_sender_is_anonymous_and_stopping_the_app_writes_the_rest(
    app: App,
) -> None:
    place_order(app, "o-1", stock=5, customer_id="cust-7")

    with TestClient(create_api(app), base_url=LOOPBACK) as client:
        assert client.get("/orders/o-1/fhir").status_code == 200

    # No flush: the application's shutdown wrote it.
    assert rows(app.engine) == [("anonymous", "/orders/{order_id}/fhir", "o-1", "cust-7")]


# --- the CLI ------------------------------------------------------------------------------


# `run_cli`: tests/conftest.py.


def table_rows(output: str) -> list[list[str]]:
    """The cells of each body row of a Rich table."""
    return [
        [cell.strip() for cell in line.strip("│ ").split("│")]
        for line in output.splitlines()
        if line.startswith("│")
    ]


def test_audit_list_shows_the_records_newest_first_with_its_filters(
    app: App, run_cli: Callable[..., str]
) -> None:
    three_reads(app.engine)

    everything = table_rows(run_cli("audit", "list"))
    assert everything == [
        ["2026-11-25 11:00:00.000", "ops", "/orders/{order_id}/events", "o-3", "cust-7"],
        ["2026-11-25 10:00:00.000", "rx-desk", "/orders/{order_id}/fhir", "o-2", "cust-8"],
        ["2026-11-25 09:00:00.000", "ops", "/events", "o-1", "cust-7"],
    ]
    assert table_rows(run_cli("audit", "list", "--customer", "cust-7")) == [
        everything[0],
        everything[2],
    ]
    assert table_rows(run_cli("audit", "list", "--key", "rx-desk")) == [everything[1]]
    since = run_cli("audit", "list", "--since", "2026-11-25T10:00:00Z", "--key", "ops")
    assert table_rows(since) == [everything[0]]
    assert "since 2026-11-25T10:00:00+00:00" in since
    limited = run_cli("audit", "list", "--limit", "2")
    assert table_rows(limited) == everything[:2]
    assert "showing the newest 2" in limited
    assert "no records" in run_cli("audit", "list", "--since", "15m")
    assert "no records" in run_cli("audit", "list", "--customer", "nobody")
    assert "--since" in run_cli("audit", "list", "--since", "yesterday", expect=2)


def test_the_cli_commands_that_print_patient_data_record_it(
    app: App, run_cli: Callable[..., str]
) -> None:
    place_order(app, "o-1", stock=5, customer_id="cust-7")
    place_order(app, "o-2", stock=5, customer_id="cust-8")
    user = f"cli:{getpass.getuser()}"

    run_cli("orders", "show", "o-1")
    run_cli("sagas", "show", "o-2")
    run_cli("events", "tail", "--limit", "1000")
    run_cli("orders", "list")  # no patient data
    run_cli("orders", "show", "nope", expect=1)

    assert rows(app.engine) == [
        (user, "orders show", "o-1", "cust-7"),
        (user, "sagas show", "o-2", "cust-8"),
        (user, "events tail", "o-1", "cust-7"),
        (user, "events tail", "o-2", "cust-8"),
    ]
    listed = table_rows(run_cli("audit", "list", "--key", user, "--since", "1h"))
    assert [(r[2], r[3]) for r in listed] == [
        ("events tail", "o-2"),
        ("events tail", "o-1"),
        ("sagas show", "o-2"),
        ("orders show", "o-1"),
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("15m", T0 - timedelta(minutes=15)),
        ("24h", T0 - timedelta(hours=24)),
        ("7d", T0 - timedelta(days=7)),
        ("2w", T0 - timedelta(weeks=2)),
        ("90s", T0 - timedelta(seconds=90)),
        ("1.5h", T0 - timedelta(minutes=90)),
        ("2026-11-20", datetime(2026, 11, 20, tzinfo=UTC)),
        ("2026-11-20T08:30", datetime(2026, 11, 20, 8, 30, tzinfo=UTC)),
        ("2026-11-20T08:30:00+01:00", datetime(2026, 11, 20, 7, 30, tzinfo=UTC)),
        ("2026-11-20T08:30:00Z", datetime(2026, 11, 20, 8, 30, tzinfo=UTC)),
    ],
)
def test_since_takes_iso_times_and_spans_back_from_now(value: str, expected: datetime) -> None:
    assert parse_since(value, T0) == expected


@pytest.mark.parametrize("value", ["yesterday", "15", "m15", "-3d", "2026-13-01", ""])
def test_since_refuses_anything_else(value: str) -> None:
    with pytest.raises(ValueError):
        parse_since(value, T0)

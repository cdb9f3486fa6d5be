"""No process can stall the others (docs/architecture.md, rule 11) on every backend.

A paused, killed or cut-off process may sit on a row lock, the event-append lock or
SQLite's write lock. Here another connection plays that process: it takes a lock and
does nothing more. Everyone else must either skip what it holds (the reaper, heartbeats,
claims), or give up within the configured bound and abort the whole transaction that
waited (a group of steps, an API write), never retrying inside it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import anyio
import httpx
import pytest
from conftest import LOOPBACK, settings_for
from saga_testkit import place_order
from sqlalchemy import Connection, select, text, update
from sqlalchemy.exc import OperationalError

from fulfillment.adapters import job_queue
from fulfillment.adapters import tables as t
from fulfillment.adapters.db import (
    append_lock_sql,
    backend_of,
    begin_promptly,
    create_nullpool_engine,
)
from fulfillment.bootstrap import App, bootstrap
from fulfillment.entrypoints.api import create_api
from fulfillment.entrypoints.worker import Worker
from fulfillment.service_layer import commands as c
from fulfillment.service_layer.jobs import ClaimedJob, JobSpec
from fulfillment.service_layer.messagebus import DatabaseBusy, RetryableDatabaseError

LEASE = 2.0  # the derived lock timeout is then 1 s (FULFILLMENT_DB_LOCK_TIMEOUT_SECONDS)
#: Row locks exist on the servers; SQLite has its one write lock (tested on its own).
servers_only = pytest.mark.parametrize("backend", ["postgresql", "mysql"])


@pytest.fixture
def bounded(make_app: Callable[..., App]) -> App:
    return make_app(job_lease_seconds=LEASE)


@contextmanager
def paused_transaction(database_url: str) -> Iterator[Connection]:
    """A connection of "another process" that opened a transaction and stopped in it."""
    engine = create_nullpool_engine(database_url)
    conn = engine.connect()
    try:
        conn.execute(text("SELECT 1"))  # begins (on SQLite: BEGIN IMMEDIATE, the write lock)
        yield conn
    finally:
        conn.rollback()
        conn.close()
        engine.dispose()


def hold_append_lock(conn: Connection) -> None:
    """Hold what every append waits for: MariaDB's append lock; on PostgreSQL, which has
    none (appends never wait for each other), a lock on the events table, as a migration
    or an operator's statement would take; on SQLite the paused transaction's BEGIN
    IMMEDIATE already holds the write lock."""
    sql = append_lock_sql(backend_of(conn))
    if backend_of(conn) == "postgresql":
        sql = "LOCK TABLE events IN SHARE MODE"
    if sql is not None:
        conn.execute(text(sql))


def hold_job_row(conn: Connection, job_id: int) -> None:
    """The paused process had updated this job row (its lock is held to its commit)."""
    conn.execute(update(t.jobs).where(t.jobs.c.id == job_id).values(last_error="paused"))


def expired_jobs(app: App, *sagas: str) -> list[ClaimedJob]:
    with app.engine.begin() as conn:
        job_queue.enqueue(conn, [JobSpec(saga, "create_prescription") for saga in sagas])
    jobs = app.queue.claim(len(sagas), "paused-worker", lease_seconds=0.05)
    time.sleep(0.2)
    return sorted(jobs, key=lambda j: j.saga_id)


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started


def test_every_connection_carries_the_configured_bounds(bounded: App, backend: str) -> None:
    bounds = bounded.settings.db_bounds
    with bounded.engine.connect() as conn:
        if backend == "postgresql":
            shown = {
                name: conn.execute(text(f"SHOW {name}")).scalar_one()
                for name in (
                    "lock_timeout",
                    "idle_in_transaction_session_timeout",
                    "statement_timeout",
                    "tcp_keepalives_count",
                )
            }
            assert shown == {
                "lock_timeout": "1s",
                "idle_in_transaction_session_timeout": "1s",
                "statement_timeout": "5s",
                "tcp_keepalives_count": "3",
            }
        elif backend == "mysql":
            row = conn.execute(
                text(
                    "SELECT @@session.innodb_lock_wait_timeout, "
                    "@@session.idle_transaction_timeout, @@session.max_statement_time"
                )
            ).one()
            assert (int(row[0]), int(row[1]), float(row[2])) == (1, 1, 5.0)
        else:
            busy = conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one()
            assert busy == 1000
    assert (bounds.lock_timeout, bounds.idle_in_transaction, bounds.statement_timeout) == (
        1.0,
        1.0,
        5.0,
    )


@servers_only
def test_the_reaper_skips_a_row_a_paused_transaction_holds_and_never_waits(
    bounded: App, database_url: str
) -> None:
    free, held = expired_jobs(bounded, "saga-free", "saga-held")

    with paused_transaction(database_url) as paused:
        hold_job_row(paused, held.id)
        reaped, seconds = timed(bounded.queue.reap_expired)
        assert reaped == 1 and seconds < 0.5, (reaped, seconds)
        # The heartbeat of the held claim skips it too rather than wait.
        beats, seconds = timed(lambda: bounded.queue.heartbeat([held], 30))
        assert beats == 0 and seconds < 0.5
    row_free, row_held = bounded.queue.for_saga("saga-free"), bounded.queue.for_saga("saga-held")
    assert row_free is not None and row_free.status == "ready"
    assert row_held is not None and row_held.status == "running"

    assert bounded.queue.reap_expired() == 1  # once the holder is gone, the next reap takes it
    assert free.claim_token == held.claim_token


def test_on_sqlite_a_held_write_lock_is_waited_for_no_longer_than_the_bound(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    app = bootstrap(settings_for(url, job_lease_seconds=LEASE), run_migrations=True)
    try:
        with paused_transaction(url):
            started = time.monotonic()
            with pytest.raises(DatabaseBusy):
                app.bus.handle(c.SetInventory(sku="LOCKED", on_hand=1))
            with pytest.raises(OperationalError, match="locked"):
                app.queue.reap_expired()
            assert time.monotonic() - started < 4.0  # two waits of 1 s, with slack
        app.bus.handle(c.SetInventory(sku="LOCKED", on_hand=1))  # free again
    finally:
        app.close()


def test_on_sqlite_a_prompt_writer_takes_the_write_lock_in_the_first_gap_within_the_bound(
    tmp_path: Path,
) -> None:
    """`begin_promptly` (the relay's checkpoint): a writer that holds the lock back to back
    with gaps of a few ms leaves it those gaps; past the bound it gives up like any."""
    url = f"sqlite:///{tmp_path / 'prompt.db'}"
    app = bootstrap(settings_for(url, job_lease_seconds=LEASE), run_migrations=True)
    stop = threading.Event()

    def busy_writer() -> None:  # a worker's group commits: 20 ms held, 3 ms free
        engine = create_nullpool_engine(url)
        with engine.connect() as conn:
            while not stop.is_set():
                conn.execute(text("SELECT 1"))  # BEGIN IMMEDIATE
                time.sleep(0.02)
                conn.rollback()
                time.sleep(0.003)
        engine.dispose()

    writer = threading.Thread(target=busy_writer)
    writer.start()
    try:
        time.sleep(0.05)
        waits = []
        for _ in range(20):
            started = time.monotonic()
            with begin_promptly(app.engine) as conn:
                conn.execute(update(t.projection_checkpoints).values(position=1))
            waits.append(time.monotonic() - started)
        assert max(waits) < 0.5, waits  # the busy handler alone waits longer than that
        with app.engine.connect() as conn:  # the engine's busy timeout is back as it was
            raw = conn.connection.dbapi_connection
            assert raw is not None
            assert raw.execute("PRAGMA busy_timeout").fetchone()[0] == 1000
        stop.set()
        writer.join()
        with paused_transaction(url):
            started = time.monotonic()
            with pytest.raises(OperationalError, match="locked"), begin_promptly(app.engine):
                pass
            assert 0.9 < time.monotonic() - started < 3.0  # the bound: 1 s
    finally:
        stop.set()
        writer.join()
        app.close()


@servers_only
def test_a_reaper_and_a_group_commit_never_wait_on_each_other(
    bounded: App, database_url: str
) -> None:
    """A group holds the append lock and a job row it advanced; the reaper, racing it
    from another thread, neither waits for the group nor makes the group wait."""
    group = bounded.group
    assert group is not None
    advanced, expired = expired_jobs(bounded, "saga-a-advanced", "saga-b-expired")
    reaped: list[int] = []
    in_group = threading.Event()
    reaper_done = threading.Event()

    def step() -> None:
        conn = group.enter()
        hold_job_row(conn, advanced.id)  # as a step's advance would
        in_group.set()
        reaper_done.wait(5)
        finished = group.keep([])
        finished.wait()

    worker = threading.Thread(target=step)
    worker.start()
    assert in_group.wait(5)
    reaped_count, seconds = timed(bounded.queue.reap_expired)
    reaped.append(int(str(reaped_count)))
    reaper_done.set()
    worker.join(5)
    assert not worker.is_alive()
    assert reaped == [1] and seconds < 0.5, (reaped, seconds)
    row = bounded.queue.for_saga(expired.saga_id)
    assert row is not None and row.status == "ready"

    # And many rounds of the real thing: steps and reapers side by side, no error.
    errors: list[BaseException] = []
    stop = threading.Event()

    def reaper() -> None:
        while not stop.is_set():
            try:
                bounded.queue.reap_expired()
            except BaseException as exc:  # a deadlock would land here
                errors.append(exc)

    threads = [threading.Thread(target=reaper) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for round_ in range(20):
            jobs = expired_jobs(bounded, *(f"race-{round_}-{n}" for n in range(4)))
            for job in jobs:
                conn = group.enter()
                conn.execute(
                    update(t.jobs).where(t.jobs.c.id == job.id).values(kind="reserve_inventory")
                )
                done = group.keep([])
                done.wait()
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert errors == []


@servers_only
def test_a_lock_timeout_in_one_step_rolls_back_the_whole_group_and_frees_its_locks(
    bounded: App, database_url: str
) -> None:
    """The step that meets the timeout gets DatabaseBusy; the step before it in the same
    group gets RetryableDatabaseError (it runs again); and none of the group's locks
    outlives it: the row the first step updated can be taken at once."""
    group = bounded.group
    assert group is not None
    for sku in ("FIRST", "HELD"):
        bounded.bus.handle(c.SetInventory(sku=sku, on_hand=5))
    outcomes: dict[str, object] = {}
    first_left = threading.Event()

    def first_step() -> None:
        conn = group.enter()
        conn.execute(update(t.inventory).where(t.inventory.c.sku == "FIRST").values(reserved=1))
        # Keep the group open: the second step queues before this one leaves.
        deadline = time.monotonic() + 5
        while group._queued < 1 and time.monotonic() < deadline:
            time.sleep(0.001)
        joined = group.keep([])
        first_left.set()
        try:
            joined.wait()
            outcomes["first"] = "committed"
        except RetryableDatabaseError as exc:
            outcomes["first"] = exc

    def second_step() -> None:
        # A step that joins groups everywhere (one that writes stock commits on its own
        # where groups of different workers do not take turns).
        job = ClaimedJob(0, "no-saga", "create_prescription", "token", 1, 0)
        outcomes["started"] = time.monotonic()
        try:
            with bounded.uow(job) as uow:
                uow.conn.execute(
                    update(t.inventory).where(t.inventory.c.sku == "HELD").values(reserved=1)
                )
            outcomes["second"] = "no error"
        except DatabaseBusy as exc:
            outcomes["second"] = exc
        outcomes["waited"] = time.monotonic() - float(str(outcomes["started"]))

    with paused_transaction(database_url) as paused:
        paused.execute(update(t.inventory).where(t.inventory.c.sku == "HELD").values(on_hand=6))
        one = threading.Thread(target=first_step)
        one.start()
        while not group._turn.locked():
            time.sleep(0.001)
        two = threading.Thread(target=second_step)
        two.start()
        two.join(10)
        one.join(10)
        # Nothing of the group is left: the row the first step locked is free right away.
        with bounded.engine.begin() as conn:
            if backend_of(conn) == "postgresql":
                conn.execute(text("SET LOCAL lock_timeout = '100ms'"))
            conn.execute(update(t.inventory).where(t.inventory.c.sku == "FIRST").values(on_hand=7))

    assert isinstance(outcomes["second"], DatabaseBusy), outcomes
    assert isinstance(outcomes["first"], RetryableDatabaseError), outcomes
    # The session's lock wait (1 s with this lease; MariaDB's has whole seconds).
    limit = 1.8
    assert float(str(outcomes["waited"])) < limit, outcomes
    with bounded.engine.connect() as conn:
        reserved = dict(conn.execute(select(t.inventory.c.sku, t.inventory.c.reserved)).all())
    assert reserved == {"FIRST": 0, "HELD": 0}


def order_body(n: int) -> dict[str, object]:
    return {
        "customer_id": f"c-{n}",
        "items": [{"sku": "ASPIRIN", "quantity": 1}],
        "prescription": {
            "prescriber_id": "dr-1",
            "patient_name": "Pat Doe",
            "expires_on": date(2099, 1, 1).isoformat(),
        },
        "shipping_address": {
            "name": "Pat",
            "line1": "1 Main St",
            "city": "Town",
            "postal_code": "12345",
            "country": "US",
        },
    }


def test_an_order_placed_while_a_paused_process_holds_the_append_lock_gets_503_in_time(
    bounded: App, database_url: str
) -> None:
    bounded.bus.handle(c.SetInventory(sku="ASPIRIN", on_hand=10))

    async def place(n: int) -> tuple[httpx.Response, float]:
        transport = httpx.ASGITransport(create_api(bounded))
        async with httpx.AsyncClient(transport=transport, base_url=LOOPBACK) as client:
            started = time.monotonic()
            response = await client.post("/orders", json=order_body(n))
            return response, time.monotonic() - started

    with paused_transaction(database_url) as paused:
        hold_append_lock(paused)
        response, seconds = anyio.run(place, 1)
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "busy"
    assert response.headers["Retry-After"] == "1"
    assert seconds < 2.0, seconds

    response, _ = anyio.run(place, 2)  # the holder is gone: accepted
    assert response.status_code == 202, response.text


def test_a_job_that_meets_a_held_lock_is_postponed_not_failed(
    bounded: App, database_url: str
) -> None:
    place_order(bounded, "o-held", stock=10)
    (job,) = bounded.queue.claim(1, "w1", 30)
    with paused_transaction(database_url) as paused:
        hold_append_lock(paused)
        outcome = bounded.runner.run(job)
    assert outcome.value == "postponed"
    row = bounded.queue.for_saga("o-held")
    # Handed back at once; on SQLite the paused writer blocked that too, so the job
    # stays claimed until its lease runs out. Either way no failure is counted.
    handed_back = "running" if backend_of(bounded.engine) == "sqlite" else "ready"
    assert row is not None and (row.status, row.failures, row.kind) == (
        handed_back,
        0,
        "create_prescription",
    )


# --- fencing: a stale lease holder never commits -------------------------------------


def saga_events(app: App, order_id: str) -> list[str]:
    with app.engine.connect() as conn:
        query = select(t.events.c.type).where(t.events.c.stream_id == f"saga-{order_id}")
        return list(conn.execute(query.order_by(t.events.c.version)).scalars())


def test_a_worker_woken_after_its_lease_ran_out_commits_nothing(bounded: App) -> None:
    place_order(bounded, "o-stale", stock=10)
    (stale,) = bounded.queue.claim(1, "paused-worker", lease_seconds=0.05)
    time.sleep(0.2)
    assert bounded.queue.reap_expired() == 1
    (fresh,) = bounded.queue.claim(1, "healthy-worker", lease_seconds=30)
    before = saga_events(bounded, "o-stale")

    assert bounded.runner.run(stale).value == "lease_lost"  # the woken worker's late step
    assert saga_events(bounded, "o-stale") == before
    assert bounded.runner.run(fresh).value == "done"
    assert saga_events(bounded, "o-stale") == [
        *before,
        "PrescriptionCreated",
        "PrescriptionVerified",
    ]


def test_a_stale_run_ending_leaves_the_fresh_claim_of_the_same_job_in_flight(
    bounded: App,
) -> None:
    """The woken worker claimed the job again while its stale run went on: the stale
    run's end removes its own claim only, so the fresh one keeps its heartbeats."""
    place_order(bounded, "o-twice", stock=10)
    (stale,) = bounded.queue.claim(1, "w", lease_seconds=0.05)
    time.sleep(0.2)
    bounded.queue.reap_expired()
    (fresh,) = bounded.queue.claim(1, "w", lease_seconds=30)
    worker = Worker(bounded, concurrency=2)
    worker._in_flight = {(j.id, j.claim_token): j for j in (stale, fresh)}

    worker._execute(stale)

    assert list(worker._in_flight.values()) == [fresh]
    assert bounded.queue.heartbeat(list(worker._in_flight.values()), 30) == 1


def test_a_step_rerun_after_a_commit_lost_in_transit_leaves_the_next_job_alone(
    bounded: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server committed the step (and the chained advance of its job row to the
    next step), but the connection dropped before the worker heard so: the step runs
    again, finds its work done, and must not consume the row, now its saga's next job."""
    place_order(bounded, "o-ambiguous", stock=10)
    (job,) = bounded.queue.claim(1, "w1", lease_seconds=30, chain=True)
    original = Connection.commit
    lost = []

    def commit_then_drop(conn: Connection) -> None:
        original(conn)
        if not lost:
            lost.append(True)
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(Connection, "commit", commit_then_drop)
    outcome = bounded.runner.run(job)
    monkeypatch.undo()

    assert lost and outcome.value in ("lease_lost", "done")
    row = bounded.queue.for_saga("o-ambiguous")
    assert row is not None and row.kind == "reserve_inventory", row
    assert saga_events(bounded, "o-ambiguous").count("PrescriptionCreated") == 1


def test_an_order_placed_while_the_pool_is_exhausted_gets_503_in_time(database_url: str) -> None:
    app = bootstrap(settings_for(database_url, job_lease_seconds=LEASE), pool_size=1)
    held = [app.engine.connect() for _ in range(2)]  # the pool's one and its one overflow
    try:

        async def place() -> tuple[httpx.Response, float]:
            transport = httpx.ASGITransport(create_api(app))
            async with httpx.AsyncClient(transport=transport, base_url=LOOPBACK) as client:
                started = time.monotonic()
                response = await client.post("/orders", json=order_body(3))
                return response, time.monotonic() - started

        response, seconds = anyio.run(place)
    finally:
        for conn in held:
            conn.close()
        app.close()
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "busy"
    assert response.headers["Retry-After"] == "1"
    assert seconds < 2.0, seconds

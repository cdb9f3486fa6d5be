"""The job queue's contract (`AbstractJobQueue`), written once and run on the in-memory
fake (`tests/unit/fakes.py`, which the unit tests rely on) and on the SQL queue of every
backend: a test on the fake means something only if the fake behaves like the real one.

Each implementation comes with a way to let a lease run out: the fake's clock moves, the
database's does not, so there the test waits past a short lease.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from conftest import empty_database, settings_for
from unit.fakes import FakeDatabase, FakeJobQueue, JobRow

from fulfillment.adapters import job_queue
from fulfillment.bootstrap import bootstrap
from fulfillment.service_layer.job_runner import AbstractJobQueue
from fulfillment.service_layer.jobs import ClaimedJob, JobSpec, LeaseLost

SHORT = 0.05  # a lease that runs out


@dataclass
class Queue:
    """One implementation under test and what the contract needs around it."""

    queue: AbstractJobQueue
    enqueue: Callable[[JobSpec], None]
    status: Callable[[str], str | None]  # saga id -> its job's status
    expire: Callable[[], None]  # let leases of SHORT seconds run out


def _fake() -> Queue:
    db = FakeDatabase()
    ids = iter(range(1, 1_000_000))

    def enqueue(spec: JobSpec) -> None:
        job_id = next(ids)
        db.jobs[job_id] = JobRow(
            job_id, spec.saga_id, spec.kind, "ready", db.now() + spec.delay_seconds
        )

    def status(saga_id: str) -> str | None:
        return next((j.status for j in db.jobs.values() if j.saga_id == saga_id), None)

    return Queue(FakeJobQueue(db, max_claims=2), enqueue, status, lambda: db.clock.advance(1))


@pytest.fixture(params=["fake", "sqlite", "postgresql", "mysql"])
def impl(request: pytest.FixtureRequest, _migrated_urls: dict[str, str]) -> Iterator[Queue]:
    if request.param == "fake":
        yield _fake()
        return
    url = _migrated_urls[str(request.param)]
    empty_database(url)
    app = bootstrap(settings_for(url, max_job_failures=2))

    def enqueue(spec: JobSpec) -> None:
        with app.engine.begin() as conn:
            job_queue.enqueue(conn, [spec])

    def status(saga_id: str) -> str | None:
        row = app.queue.for_saga(saga_id)
        return row.status if row is not None else None

    try:
        yield Queue(app.queue, enqueue, status, lambda: time.sleep(SHORT * 4))
    finally:
        app.close()


def test_only_due_jobs_are_claimed_each_once(impl: Queue) -> None:
    impl.enqueue(JobSpec("now-1", "create_prescription"))
    impl.enqueue(JobSpec("later", "create_prescription", delay_seconds=3600))
    impl.enqueue(JobSpec("now-2", "create_prescription"))

    claimed = impl.queue.claim(10, "w1", 30)

    assert sorted(j.saga_id for j in claimed) == ["now-1", "now-2"]
    assert all(j.claims == 1 and j.failures == 0 for j in claimed)
    assert impl.queue.claim(10, "w2", 30) == []
    assert (impl.status("now-1"), impl.status("later")) == ("running", "ready")


def test_a_claim_of_nothing_claims_nothing(impl: Queue) -> None:
    impl.enqueue(JobSpec("s1", "create_prescription"))
    assert impl.queue.claim(0, "w1", 30) == []
    assert impl.status("s1") == "ready"


def test_an_expired_lease_goes_back_and_the_old_holder_can_change_nothing(impl: Queue) -> None:
    impl.enqueue(JobSpec("s1", "reserve_inventory"))
    (lost,) = impl.queue.claim(1, "paused", SHORT)
    impl.expire()

    assert impl.queue.reap_expired() == 1
    (again,) = impl.queue.claim(1, "healthy", 30)
    assert again.id == lost.id and again.claim_token != lost.claim_token and again.claims == 2

    with pytest.raises(LeaseLost):
        impl.queue.fail(lost, "late", 0, dead=False)
    assert impl.queue.heartbeat([lost], 30) == 0
    impl.queue.release(lost)  # a late release by the old holder changes nothing
    assert impl.status("s1") == "running"
    assert impl.queue.heartbeat([again], 30) == 1


def test_a_heartbeat_keeps_the_reaper_away(impl: Queue) -> None:
    impl.enqueue(JobSpec("beating", "initiate_shipment"))
    impl.enqueue(JobSpec("silent", "initiate_shipment"))
    jobs = {j.saga_id: j for j in impl.queue.claim(2, "w1", SHORT)}
    impl.expire()

    assert impl.queue.heartbeat([jobs["beating"]], 30) == 1
    assert impl.queue.reap_expired() == 1
    assert (impl.status("beating"), impl.status("silent")) == ("running", "ready")


def test_a_job_that_keeps_losing_its_worker_goes_dead(impl: Queue) -> None:
    impl.enqueue(JobSpec("s1", "cancel_shipment"))
    for _ in range(2):  # max_claims is 2
        assert impl.queue.claim(1, "doomed", SHORT)
        impl.expire()
        impl.queue.reap_expired()
    assert impl.status("s1") == "dead"
    assert impl.queue.claim(1, "w", 30) == []


def test_a_failure_backs_off_and_a_dead_job_is_never_claimed(impl: Queue) -> None:
    impl.enqueue(JobSpec("later", "initiate_shipment"))
    impl.enqueue(JobSpec("dead", "release_inventory"))
    jobs: dict[str, ClaimedJob] = {j.saga_id: j for j in impl.queue.claim(2, "w1", 30)}

    impl.queue.fail(jobs["later"], "carrier timeout", delay_seconds=3600, dead=False)
    impl.queue.fail(jobs["dead"], "RuntimeError: bug", delay_seconds=0, dead=True)

    assert (impl.status("later"), impl.status("dead")) == ("ready", "dead")
    assert impl.queue.claim(5, "w2", 30) == []


def test_a_released_job_is_due_after_its_delay(impl: Queue) -> None:
    impl.enqueue(JobSpec("now", "create_prescription"))
    impl.enqueue(JobSpec("later", "create_prescription"))
    jobs = {j.saga_id: j for j in impl.queue.claim(2, "w1", 30)}

    impl.queue.release(jobs["now"])
    impl.queue.release(jobs["later"], delay_seconds=3600)

    assert [j.saga_id for j in impl.queue.claim(5, "w2", 30)] == ["now"]
    assert impl.status("later") == "ready"

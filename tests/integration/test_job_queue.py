"""The durable job queue (docs/architecture.md, rule 4) on every backend."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from saga_testkit import place_order, wait_until
from sqlalchemy.exc import IntegrityError

from fulfillment.adapters import job_queue
from fulfillment.adapters.job_queue import SqlAlchemyJobQueue
from fulfillment.bootstrap import App
from fulfillment.service_layer.jobs import ClaimedJob, JobSpec, LeaseLost

LEASE = 30.0


def enqueue(app: App, *specs: JobSpec) -> None:
    with app.engine.begin() as conn:
        job_queue.enqueue(conn, list(specs))


def finish(app: App, job: ClaimedJob) -> None:
    with app.engine.begin() as conn:
        job_queue.finish(conn, job)


def test_concurrent_claimers_get_disjoint_sets_of_jobs(app: App) -> None:
    enqueue(app, *(JobSpec(f"saga-{n}", "create_prescription") for n in range(40)))
    claimers = 4
    start = threading.Barrier(claimers)
    claimed: list[list[ClaimedJob]] = [[] for _ in range(claimers)]
    errors: list[BaseException] = []

    def claim_all(i: int) -> None:
        try:
            start.wait()
            while batch := app.queue.claim(3, f"worker-{i}", LEASE):
                claimed[i].extend(batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(claimers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    ids = [job.id for jobs in claimed for job in jobs]
    assert len(ids) == 40 and len(set(ids)) == 40  # every job once, none twice
    assert {job.saga_id for jobs in claimed for job in jobs} == {f"saga-{n}" for n in range(40)}
    assert app.queue.counts() == {"running": 40}
    assert app.queue.claim(10, "late", LEASE) == []


def test_a_job_scheduled_for_later_is_not_claimed_yet(app: App) -> None:
    enqueue(app, JobSpec("later", "create_prescription", delay_seconds=3600))
    enqueue(app, JobSpec("now", "create_prescription"))

    claimed = app.queue.claim(10, "w1", LEASE)
    assert [job.saga_id for job in claimed] == ["now"]
    assert app.queue.claim(10, "w1", LEASE) == []
    later = app.queue.for_saga("later")
    assert later is not None and later.status == "ready"


def test_claiming_records_the_worker_and_counts_the_claims(app: App) -> None:
    enqueue(app, JobSpec("s1", "reserve_inventory"))
    (job,) = app.queue.claim(5, "host:123:abc", LEASE)
    assert (job.saga_id, job.kind, job.claims, job.failures) == ("s1", "reserve_inventory", 1, 0)
    row = app.queue.for_saga("s1")
    assert row is not None
    assert (row.status, row.claimed_by, row.claim_token) == (
        "running",
        "host:123:abc",
        job.claim_token,
    )
    assert row.lease_expires_at is not None and row.lease_expires_at > row.run_at


def test_an_expired_lease_is_reaped_and_the_job_claimed_again_with_a_new_token(app: App) -> None:
    enqueue(app, JobSpec("s1", "create_prescription"))
    (lost,) = app.queue.claim(1, "crashed-worker", lease_seconds=0.05)

    wait_until(lambda: app.queue.reap_expired() == 1, 10, "the expired lease is reaped")
    (again,) = app.queue.claim(1, "healthy-worker", LEASE)

    assert again.id == lost.id and again.claim_token != lost.claim_token
    assert again.claims == 2
    with pytest.raises(LeaseLost):
        finish(app, lost)
    with pytest.raises(LeaseLost):
        app.queue.fail(lost, "late failure", 0, dead=False)
    assert app.queue.heartbeat([lost], LEASE) == 0
    app.queue.release(lost)  # a late release by the old holder changes nothing
    row = app.queue.for_saga("s1")
    assert row is not None and (row.status, row.claim_token) == ("running", again.claim_token)

    finish(app, again)
    assert app.queue.for_saga("s1") is None


def test_a_heartbeat_keeps_the_reaper_away(app: App) -> None:
    enqueue(app, JobSpec("beating", "initiate_shipment"), JobSpec("silent", "initiate_shipment"))
    beating = app.queue.claim(1, "w1", lease_seconds=0.2)
    silent = app.queue.claim(1, "w2", lease_seconds=0.2)
    assert [j.saga_id for j in beating + silent] == ["beating", "silent"]

    assert app.queue.heartbeat(beating, LEASE) == 1
    wait_until(lambda: app.queue.reap_expired() == 1, 10, "the silent job's lease is reaped")

    kept = app.queue.for_saga("beating")
    assert kept is not None and (kept.status, kept.claim_token) == (
        "running",
        beating[0].claim_token,
    )
    reaped = app.queue.for_saga("silent")
    assert reaped is not None and (reaped.status, reaped.claim_token) == ("ready", None)
    finish(app, beating[0])


def test_a_job_that_keeps_losing_its_worker_goes_dead(make_app: Callable[..., App]) -> None:
    app = make_app(max_job_failures=2)
    enqueue(app, JobSpec("s1", "reserve_inventory"))

    def reaped() -> bool:
        app.queue.reap_expired()
        row = app.queue.for_saga("s1")
        return row is not None and row.status != "running"

    for _ in range(2):
        assert app.queue.claim(1, "doomed", lease_seconds=0.02)
        wait_until(reaped, 10, "the lease is reaped")
    row = app.queue.for_saga("s1")
    assert row is not None and row.status == "dead"
    assert row.last_error == "lease expired too many times"
    assert app.queue.claim(1, "w", LEASE) == []


def test_a_failure_backs_off_before_the_job_runs_again(app: App) -> None:
    enqueue(app, JobSpec("s1", "initiate_shipment"))
    (job,) = app.queue.claim(1, "w1", LEASE)
    app.queue.fail(job, "carrier timeout", delay_seconds=3600, dead=False)

    row = app.queue.for_saga("s1")
    assert row is not None
    assert (row.status, row.failures, row.last_error) == ("ready", 1, "carrier timeout")
    assert app.queue.claim(1, "w1", LEASE) == []


def test_a_dead_job_is_listed_and_can_be_retried(app: App) -> None:
    enqueue(app, JobSpec("s1", "release_inventory"), JobSpec("s2", "create_prescription"))
    (job,) = app.queue.claim(1, "w1", LEASE)
    assert job.saga_id == "s1"
    app.queue.fail(job, "RuntimeError: bug", delay_seconds=0, dead=True)

    (dead,) = app.queue.list(status="dead")
    assert (dead.saga_id, dead.kind, dead.failures, dead.last_error) == (
        "s1",
        "release_inventory",
        1,
        "RuntimeError: bug",
    )
    assert [j.saga_id for j in app.queue.list()] == ["s1", "s2"]
    assert app.queue.counts() == {"dead": 1, "ready": 1}
    assert [j.saga_id for j in app.queue.claim(5, "w1", LEASE)] == ["s2"]  # dead is never claimed

    assert app.queue.retry_dead("s1") is True
    assert app.queue.retry_dead("s1") is False  # no longer dead
    assert app.queue.retry_dead("s2") is False  # never was
    (again,) = app.queue.claim(5, "w2", LEASE)
    assert (again.saga_id, again.kind, again.failures, again.claims) == (
        "s1",
        "release_inventory",
        0,
        1,
    )


def test_a_saga_has_at_most_one_job(app: App) -> None:
    enqueue(app, JobSpec("s1", "create_prescription"))
    with pytest.raises(IntegrityError):
        enqueue(app, JobSpec("s1", "cancel_prescription"))
    (row,) = app.queue.list()
    assert (row.saga_id, row.kind) == ("s1", "create_prescription")


def test_claim_with_no_room_claims_nothing(app: App) -> None:
    enqueue(app, JobSpec("s1", "create_prescription"))
    assert app.queue.claim(0, "w1", LEASE) == []
    assert isinstance(app.queue, SqlAlchemyJobQueue)
    assert app.queue.counts() == {"ready": 1}


def test_a_claim_made_to_chain_hands_the_sagas_next_job_to_the_same_worker(app: App) -> None:
    """A step whose next job is due at once returns it still claimed (same row, same
    token): the worker's thread runs it without a round through the queue."""
    place_order(app, "o-chain", stock=10)
    (job,) = app.queue.claim(1, "w1", LEASE, chain=True)

    first = app.runner.run_step(job)
    assert first.outcome.value == "done" and first.next_job is not None
    handed = first.next_job
    assert (handed.id, handed.claim_token, handed.kind) == (
        job.id,
        job.claim_token,
        "reserve_inventory",
    )
    row = app.queue.for_saga("o-chain")
    assert row is not None and (row.status, row.kind) == ("running", "reserve_inventory")
    assert app.queue.claim(5, "w2", LEASE) == []  # nobody else can take it meanwhile

    second = app.runner.run_step(handed)
    assert second.next_job is not None and second.next_job.kind == "initiate_shipment"


def test_a_claim_not_made_to_chain_puts_the_next_job_back_in_the_queue(app: App) -> None:
    place_order(app, "o-unchained", stock=10)
    (job,) = app.queue.claim(1, "w1", LEASE)

    result = app.runner.run_step(job)
    assert result.outcome.value == "done" and result.next_job is None
    (again,) = app.queue.claim(1, "w2", LEASE)
    assert (again.id, again.kind) == (job.id, "reserve_inventory")

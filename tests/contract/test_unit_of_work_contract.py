"""The unit of work's contract as handlers see it, written once and run on the in-memory
fake (`FakeUnitOfWork`, which the unit tests rely on) and on the SQL unit of work of every
backend (`app.uow()`, as wired by `bootstrap`: a job's unit of work joins the worker's
group commit).

A commit stores the new events of every aggregate the unit of work saw, enqueues the job
the saga policy derives from them and consumes the job being run, all at once or not at
all. Each implementation comes with what the contract needs around it: its job queue (to
claim jobs), the rows of a stream as committed, and a way to let a lease run out (the
fake's clock moves, the database's does not, so there the test waits past a short lease).

SQLite admits one writer at a time, so two units of work cannot hold write transactions
open together there: the conflict tests interleave the loads and commits of two units of
work instead, which every backend must refuse in the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from conftest import empty_database, settings_for
from unit.builders import at, placed_order, started_saga
from unit.fakes import FakeDatabase, FakeJobQueue, FakeUnitOfWork

from fulfillment.adapters.db import read_connection
from fulfillment.adapters.event_store import SqlAlchemyEventStore
from fulfillment.adapters.mapper import StoredEvent
from fulfillment.bootstrap import bootstrap
from fulfillment.domain.events import PrescriptionCreated
from fulfillment.domain.order import Order
from fulfillment.domain.saga import Saga
from fulfillment.service_layer.job_runner import AbstractJobQueue
from fulfillment.service_layer.jobs import ClaimedJob, LeaseLost
from fulfillment.service_layer.messagebus import ConcurrencyError
from fulfillment.service_layer.ports import IdempotencyRecord, SagaJob, StockLevel
from fulfillment.service_layer.unit_of_work import AbstractUnitOfWork

ORDER = "o-1"
ORDER_STREAM = Order.stream_id_for(ORDER)
SAGA_STREAM = Saga.stream_id_for(ORDER)
SKU = "ASPIRIN-100"
KEY = IdempotencyRecord("key-1", "hash-1", ORDER, {"order_id": ORDER, "status": "pending"})
SHORT = 0.05  # a lease that runs out


class Boom(Exception):
    """A handler fails halfway through its unit of work."""


@dataclass
class Storage:
    """One implementation under test and what the contract needs around it."""

    make_uow: Callable[[ClaimedJob | None], AbstractUnitOfWork]
    queue: AbstractJobQueue
    stored: Callable[[str], list[StoredEvent]]  # a stream's committed rows, in version order
    expire: Callable[[], None]  # let leases of SHORT seconds run out

    def uow(self, job: ClaimedJob | None = None) -> AbstractUnitOfWork:
        return self.make_uow(job)

    def claim(self, worker: str = "w1", lease_seconds: float = 30.0) -> ClaimedJob:
        (job,) = self.queue.claim(1, worker, lease_seconds)
        return job

    def job(self, saga_id: str = ORDER) -> SagaJob | None:
        with self.uow() as uow:
            return uow.jobs.get(saga_id)

    def stock(self, sku: str = SKU) -> StockLevel | None:
        with self.uow() as uow:
            return uow.inventory.get(sku)

    def key(self, key: str = KEY.key) -> IdempotencyRecord | None:
        with self.uow() as uow:
            return uow.idempotency.get(key)


def _fake() -> Storage:
    db = FakeDatabase()
    return Storage(
        lambda job: FakeUnitOfWork(db, job),
        FakeJobQueue(db),
        db.stream,
        lambda: db.clock.advance(1),
    )


@pytest.fixture(params=["fake", "sqlite", "postgresql", "mysql"])
def impl(request: pytest.FixtureRequest, _migrated_urls: dict[str, str]) -> Iterator[Storage]:
    if request.param == "fake":
        yield _fake()
        return
    url = _migrated_urls[str(request.param)]
    empty_database(url)
    app = bootstrap(settings_for(url))

    def stored(stream_id: str) -> list[StoredEvent]:
        with read_connection(app.engine) as conn:
            return SqlAlchemyEventStore(conn, app.mapper).read_stream(stream_id)

    try:
        yield Storage(app.uow, app.queue, stored, lambda: time.sleep(SHORT * 4))
    finally:
        app.close()


def types(rows: list[StoredEvent]) -> list[str]:
    return [row.type for row in rows]


def place(impl: Storage) -> None:
    """Commit a placed order and its started saga (whose first step is then due)."""
    with impl.uow() as uow:
        uow.orders.add(placed_order(ORDER))
        uow.sagas.add(started_saga(ORDER))
        uow.commit()


def prescription_created(seconds: float = 1.0) -> PrescriptionCreated:
    return PrescriptionCreated(occurred_at=at(seconds), saga_id=ORDER, prescription_id="rx-1")


def create_prescription(uow: AbstractUnitOfWork) -> Saga:
    """What the first step's handler does: the saga records its success."""
    saga = uow.sagas.get(ORDER)
    assert saga is not None
    saga.succeed("create_prescription", prescription_created())
    return saga


def fail_prescription(uow: AbstractUnitOfWork, saga: Saga | None = None) -> Saga:
    """The first step fails for good: with nothing to undo, the saga ends (no next job)."""
    saga = saga or uow.sagas.get(ORDER)
    assert saga is not None
    saga.fail_step("create_prescription", "expired", "PrescriptionExpired", at=at(1))
    return saga


# --- committing ------------------------------------------------------------------------------


def test_a_commit_stores_the_new_events_of_every_aggregate_and_enqueues_the_sagas_job(
    impl: Storage,
) -> None:
    order, saga = placed_order(ORDER), started_saga(ORDER)
    order_events, saga_events = order.pending_events, saga.pending_events

    with impl.uow() as uow:
        uow.orders.add(order)
        uow.sagas.add(saga)
        uow.commit()

    assert uow.committed_events == [*order_events, *saga_events]
    assert (order.pending_events, saga.pending_events) == ([], [])
    assert (order.stored_version, saga.stored_version) == (order.version, saga.version)
    assert types(impl.stored(ORDER_STREAM)) == ["OrderCreated"]
    assert types(impl.stored(SAGA_STREAM)) == [type(e).__name__ for e in saga_events]
    assert [e.version for e in impl.stored(SAGA_STREAM)] == list(range(1, len(saga_events) + 1))
    # The saga policy: the first step is due now.
    assert impl.job() == SagaJob("create_prescription", "ready")
    with impl.uow() as uow:
        loaded = uow.sagas.get(ORDER)
        assert loaded is not None and loaded.version == saga.version
        assert loaded.next_step == "create_prescription"


def test_a_commit_appends_to_streams_already_stored(impl: Storage) -> None:
    place(impl)
    before = impl.stored(SAGA_STREAM)

    with impl.uow() as uow:
        saga = fail_prescription(uow)
        order = uow.orders.get(ORDER)
        assert order is not None
        order.cancel("prescription expired", at=at(1))
        uow.commit()

    after = impl.stored(SAGA_STREAM)
    assert after[: len(before)] == before
    assert types(after[len(before) :]) == ["PrescriptionCreationFailed", "SagaCompensationStarted"]
    assert [e.version for e in after] == list(range(1, saga.version + 1))
    assert types(impl.stored(ORDER_STREAM)) == ["OrderCreated", "OrderCancelled"]


def test_a_commit_stores_service_table_writes_and_idempotency_keys_with_the_events(
    impl: Storage,
) -> None:
    with impl.uow() as uow:
        uow.orders.add(placed_order(ORDER))
        uow.inventory.set_on_hand(SKU, 5)
        uow.idempotency.add(KEY)
        # The transaction reads its own writes.
        assert uow.inventory.get(SKU) == StockLevel(SKU, 5, 0)
        assert uow.idempotency.get(KEY.key) == KEY
        uow.commit()

    assert impl.stock() == StockLevel(SKU, 5, 0)
    assert impl.key() == KEY
    assert types(impl.stored(ORDER_STREAM)) == ["OrderCreated"]


def test_the_sender_is_kept_in_the_metadata_of_the_events_it_asked_for(impl: Storage) -> None:
    with impl.uow() as uow:
        uow.orders.add(placed_order(ORDER))
        uow.sagas.add(started_saga(ORDER))
        uow.sender = "key:x"
        uow.commit()
    job = impl.claim()
    with impl.uow(job) as uow:
        create_prescription(uow)
        uow.commit()

    asked = {"correlation_id": ORDER, "causation_id": None, "sender": "key:x"}
    (created,) = impl.stored(ORDER_STREAM)
    *started, step = impl.stored(SAGA_STREAM)
    assert [e.metadata for e in [created, *started]] == [asked] * (1 + len(started))
    # The system's own step: caused by its job, sent by nobody.
    assert step.type == "PrescriptionCreated"
    assert step.metadata == {"correlation_id": ORDER, "causation_id": f"job:{job.id}"}


# --- nothing without a commit ------------------------------------------------------------


@pytest.mark.parametrize("ending", ["leaves the block", "raises"])
def test_nothing_is_stored_without_a_commit(impl: Storage, ending: str) -> None:
    uow = impl.uow()

    def work() -> None:
        uow.orders.add(placed_order(ORDER))
        uow.sagas.add(started_saga(ORDER))
        uow.inventory.set_on_hand(SKU, 5)
        uow.idempotency.add(KEY)

    if ending == "raises":
        with pytest.raises(Boom), uow:
            work()
            raise Boom
    else:
        with uow:
            work()

    assert impl.stored(ORDER_STREAM) == [] and impl.stored(SAGA_STREAM) == []
    assert impl.job() is None
    assert impl.stock() is None
    assert impl.key() is None
    with impl.uow() as look:
        assert look.orders.get(ORDER) is None and look.sagas.get(ORDER) is None


def test_writes_after_a_commit_are_not_stored_without_another(impl: Storage) -> None:
    with impl.uow() as uow:
        uow.inventory.set_on_hand(SKU, 5)
        uow.commit()
    with pytest.raises(Boom), impl.uow() as uow:
        uow.inventory.set_on_hand(SKU, 9)
        uow.idempotency.add(KEY)
        raise Boom

    assert impl.stock() == StockLevel(SKU, 5, 0)
    assert impl.key() is None


# --- concurrency ---------------------------------------------------------------------------


def test_of_two_units_of_work_that_loaded_the_same_saga_the_second_commit_fails_whole(
    impl: Storage,
) -> None:
    place(impl)
    first, second = impl.uow(), impl.uow()
    with first:
        saga = first.sagas.get(ORDER)
        order = first.orders.get(ORDER)
        assert saga is not None and order is not None
    with second:
        fail_prescription(second)
        second.commit()
    stored = impl.stored(SAGA_STREAM)

    with pytest.raises(ConcurrencyError), first:
        # The first goes on with what it loaded before the second committed.
        first.sagas.add(saga)
        first.orders.add(order)
        fail_prescription(first, saga)
        order.cancel("prescription expired", at=at(1))
        first.inventory.set_on_hand(SKU, 5)
        first.idempotency.add(KEY)
        first.commit()

    assert impl.stored(SAGA_STREAM) == stored
    assert types(impl.stored(ORDER_STREAM)) == ["OrderCreated"]
    assert impl.stock() is None
    assert impl.key() is None
    assert impl.job() == SagaJob("create_prescription", "ready")


def test_an_idempotency_key_stored_first_by_another_unit_of_work_fails_the_commit(
    impl: Storage,
) -> None:
    first, second = impl.uow(), impl.uow()
    with first:
        assert first.idempotency.get(KEY.key) is None
    with second:
        second.idempotency.add(KEY)
        second.commit()

    with pytest.raises(ConcurrencyError), first:
        first.orders.add(placed_order(ORDER))
        first.idempotency.add(KEY)
        first.commit()

    assert impl.stored(ORDER_STREAM) == []
    assert impl.key() == KEY


# --- the job being run -------------------------------------------------------------------


def test_a_jobs_commit_turns_its_job_into_the_sagas_next_job(impl: Storage) -> None:
    place(impl)
    job = impl.claim()
    assert (job.saga_id, job.kind) == (ORDER, "create_prescription")
    assert impl.job() == SagaJob("create_prescription", "running")

    with impl.uow(job) as uow:
        create_prescription(uow)
        uow.commit()

    assert types(impl.stored(SAGA_STREAM))[-1] == "PrescriptionCreated"
    assert impl.job() == SagaJob("reserve_inventory", "ready")
    following = impl.claim()
    assert (following.saga_id, following.kind) == (ORDER, "reserve_inventory")


def test_a_jobs_commit_without_a_next_job_consumes_the_job(impl: Storage) -> None:
    place(impl)
    job = impl.claim()

    with impl.uow(job) as uow:
        fail_prescription(uow)
        uow.commit()

    assert types(impl.stored(SAGA_STREAM))[-1] == "SagaCompensationStarted"
    assert impl.job() is None
    assert impl.queue.claim(1, "w2", 30) == []


def test_a_job_whose_unit_of_work_does_not_commit_stays_held_and_can_run_again(
    impl: Storage,
) -> None:
    place(impl)
    job = impl.claim()
    stored = impl.stored(SAGA_STREAM)

    with pytest.raises(Boom), impl.uow(job) as uow:
        create_prescription(uow)
        raise Boom

    assert impl.stored(SAGA_STREAM) == stored
    assert impl.job() == SagaJob("create_prescription", "running")
    with impl.uow(job) as uow:
        create_prescription(uow)
        uow.commit()
    assert impl.job() == SagaJob("reserve_inventory", "ready")


def test_a_commit_under_a_job_whose_lease_was_lost_raises_and_stores_nothing(
    impl: Storage,
) -> None:
    place(impl)
    lost = impl.claim("paused", SHORT)
    impl.expire()
    assert impl.queue.reap_expired() == 1
    taken = impl.claim("healthy")
    stored = impl.stored(SAGA_STREAM)

    with pytest.raises(LeaseLost), impl.uow(lost) as uow:
        create_prescription(uow)
        uow.inventory.set_on_hand(SKU, 5)
        uow.commit()

    assert impl.stored(SAGA_STREAM) == stored
    assert impl.stock() is None
    assert impl.job() == SagaJob("create_prescription", "running")
    # The worker that holds the job now commits as usual.
    with impl.uow(taken) as uow:
        create_prescription(uow)
        uow.commit()
    assert impl.job() == SagaJob("reserve_inventory", "ready")


def test_a_commit_under_a_job_cancelled_meanwhile_raises_lease_lost(impl: Storage) -> None:
    place(impl)
    job = impl.claim()
    with impl.uow() as uow:
        uow.jobs.cancel(ORDER)
        uow.commit()
    stored = impl.stored(SAGA_STREAM)

    with pytest.raises(LeaseLost), impl.uow(job) as uow:
        create_prescription(uow)
        uow.commit()

    assert impl.stored(SAGA_STREAM) == stored
    assert impl.job() is None


# --- the sagas' jobs (the SagaJobs port) --------------------------------------------------


def test_jobs_get_tells_the_kind_and_status_of_a_sagas_job(impl: Storage) -> None:
    assert impl.job() is None
    place(impl)
    assert impl.job() == SagaJob("create_prescription", "ready")

    job = impl.claim()
    assert impl.job() == SagaJob("create_prescription", "running")

    impl.queue.fail(job, "RuntimeError: bug", 0, dead=True)
    dead = impl.job()
    assert dead == SagaJob("create_prescription", "dead") and dead.dead
    assert impl.job("unknown") is None


def test_a_committed_revival_puts_a_dead_job_back_in_line_with_its_counts_reset(
    impl: Storage,
) -> None:
    place(impl)
    impl.queue.fail(impl.claim(), "RuntimeError: bug", 0, dead=True)

    with impl.uow() as uow:
        assert uow.jobs.revive(ORDER) is True
        # Until it commits, nobody else sees the revival.
    assert impl.job() == SagaJob("create_prescription", "dead")

    with impl.uow() as uow:
        assert uow.jobs.revive(ORDER) is True
        uow.commit()

    assert impl.job() == SagaJob("create_prescription", "ready")
    again = impl.claim()
    assert (again.kind, again.claims, again.failures) == ("create_prescription", 1, 0)


def test_only_a_dead_job_can_be_revived(impl: Storage) -> None:
    place(impl)
    with impl.uow() as uow:
        assert uow.jobs.revive(ORDER) is False  # ready
        assert uow.jobs.revive("unknown") is False
        uow.commit()
    impl.claim()
    with impl.uow() as uow:
        assert uow.jobs.revive(ORDER) is False  # running
        uow.commit()
    assert impl.job() == SagaJob("create_prescription", "running")


def test_a_transaction_sees_its_own_revival_and_cancellation(impl: Storage) -> None:
    place(impl)
    impl.queue.fail(impl.claim(), "RuntimeError: bug", 0, dead=True)

    with impl.uow() as uow:
        assert uow.jobs.revive(ORDER) is True
        assert uow.jobs.get(ORDER) == SagaJob("create_prescription", "ready")
        assert uow.jobs.revive(ORDER) is False  # no longer dead
        uow.jobs.cancel(ORDER)
        assert uow.jobs.get(ORDER) is None
        assert uow.jobs.revive(ORDER) is False  # gone
        uow.commit()

    assert impl.job() is None


@pytest.mark.parametrize("state", ["ready", "running", "dead"])
def test_a_committed_cancellation_removes_the_sagas_job_whatever_its_state(
    impl: Storage, state: str
) -> None:
    place(impl)
    if state != "ready":
        job = impl.claim()
    if state == "dead":
        impl.queue.fail(job, "RuntimeError: bug", 0, dead=True)
    assert impl.job() == SagaJob("create_prescription", state)

    with impl.uow() as uow:
        uow.jobs.cancel(ORDER)
    assert impl.job() == SagaJob("create_prescription", state)  # not committed

    with impl.uow() as uow:
        uow.jobs.cancel(ORDER)
        uow.jobs.cancel("unknown")  # no job: nothing to do
        uow.commit()
    assert impl.job() is None


def test_a_cancelled_job_makes_way_for_the_next_job_of_the_same_commit(impl: Storage) -> None:
    """How a signal replaces a wait's timer: cancel the saga's job, record its events."""
    place(impl)

    with impl.uow() as uow:
        uow.jobs.cancel(ORDER)
        create_prescription(uow)
        uow.commit()

    assert types(impl.stored(SAGA_STREAM))[-1] == "PrescriptionCreated"
    assert impl.job() == SagaJob("reserve_inventory", "ready")


def test_a_sagas_next_job_is_refused_while_it_still_has_one(impl: Storage) -> None:
    """One saga, one job: a commit that is not running (or cancelling) the saga's job
    cannot enqueue another one for it."""
    place(impl)
    stored = impl.stored(SAGA_STREAM)

    with pytest.raises(ConcurrencyError), impl.uow() as uow:
        create_prescription(uow)
        uow.commit()

    assert impl.stored(SAGA_STREAM) == stored
    assert impl.job() == SagaJob("create_prescription", "ready")

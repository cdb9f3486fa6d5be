"""The job runner: what happens to a claimed job when its step succeeds, fails or crashes."""

from __future__ import annotations

import pytest

from fulfillment.domain.status import OrderStatus, SagaStatus
from fulfillment.service_layer import commands as c
from fulfillment.service_layer.job_runner import JobOutcome
from fulfillment.service_layer.order_saga import ORDER_SAGA
from fulfillment.service_layer.ports import StockLevel

from .builders import address, lines, prescription
from .fakes import DEAD, READY, FakeApp, JobRow, make_fake_app

ASPIRIN = "ASPIRIN-100"


@pytest.fixture
def app() -> FakeApp:
    app = make_fake_app(max_job_failures=3)
    app.bus.handle(c.SetInventory(ASPIRIN, 10))
    return app


def place_order(app: FakeApp, order_id: str = "o-1") -> None:
    app.bus.handle(
        c.CreateOrder(order_id, "c-1", lines((ASPIRIN, 2)), prescription(), address("NL"))
    )


def ghost_job(app: FakeApp) -> None:
    """A job whose saga does not exist: its handler raises, like a bug would."""
    app.db.jobs[500] = JobRow(500, "ghost", "create_prescription", READY, app.db.now())


def test_every_job_kind_has_a_handler_on_the_bus(app: FakeApp) -> None:
    assert set(ORDER_SAGA.job_kinds) == {
        "create_prescription",
        "verify_prescription",
        "reserve_inventory",
        "initiate_shipment",
        "await_pickup",
        "complete",
        "release_inventory",
        "cancel_prescription",
        "cancel_shipment",
    }
    assert c.RunSagaJob in app.bus.handlers and c.RecordJobFailure in app.bus.handlers


def test_a_job_that_crashes_backs_off_and_keeps_its_place(app: FakeApp) -> None:
    ghost_job(app)
    now = app.db.now()

    assert app.run_next() == ("create_prescription", JobOutcome.JOB_FAILED)

    job = app.db.jobs[500]
    assert (job.status, job.failures, job.claim_token) == (READY, 1, None)
    assert now + 0.5 <= job.run_at <= now + 1.0
    assert job.last_error is not None and job.last_error.startswith("NotFound: saga ghost")
    assert all(commit.finished_job != 500 for commit in app.db.commits), "nothing committed"


def test_a_job_that_keeps_crashing_goes_dead_for_an_operator(app: FakeApp) -> None:
    ghost_job(app)

    ran = app.run_until_idle()

    assert ran == [("create_prescription", JobOutcome.JOB_FAILED)] * 3
    job = app.db.jobs[500]
    assert (job.status, job.failures) == (DEAD, 3)


def test_a_conflict_that_outlasts_the_bus_retries_backs_the_job_off_then_it_succeeds(
    app: FakeApp,
) -> None:
    place_order(app)
    app.db.conflicts_to_raise = app.bus.conflict_retries + 1

    assert app.run_next() == ("create_prescription", JobOutcome.JOB_FAILED)
    assert app.db.saga("o-1").status is SagaStatus.RUNNING
    assert app.db.event_types("saga-o-1") == ["OrderFulfillmentSagaStarted"]

    app.run_until_idle()

    assert app.db.order("o-1").status is OrderStatus.FULFILLED


def test_completion_is_retried_forward_past_its_attempts_never_compensated(app: FakeApp) -> None:
    place_order(app)
    app.db.faults["inventory.consume"] = 5  # more than the 3 attempts a step gets

    ran = app.run_until_idle()

    assert [outcome for kind, outcome in ran if kind == "complete"] == [
        *[JobOutcome.RETRY_SCHEDULED] * 5,
        JobOutcome.DONE,
    ]
    assert app.db.event_types("saga-o-1").count("SagaStepAttemptFailed") == 5
    assert "SagaCompensationStarted" not in app.db.event_types("saga-o-1")
    assert app.db.order("o-1").status is OrderStatus.FULFILLED
    assert app.db.inventory[ASPIRIN] == StockLevel(ASPIRIN, 8, 0)


def test_a_worker_that_lost_its_lease_mid_step_commits_nothing(app: FakeApp) -> None:
    place_order(app)
    app.run_next()
    app.run_next()
    (mine,) = app.queue.claim(1, "slow-worker", 30.0)
    outcomes = []

    def another_worker_takes_over() -> None:
        app.clock.advance(31)
        assert app.queue.reap_expired() == 1
        (theirs,) = app.queue.claim(1, "fast-worker", 30.0)
        outcomes.append(app.runner.run(theirs))

    app.carrier.during_next_call.append(another_worker_takes_over)

    assert app.runner.run(mine) is JobOutcome.LEASE_LOST

    assert outcomes == [JobOutcome.DONE]
    assert app.db.event_types("saga-o-1").count("ShipmentInitiated") == 1
    assert len(app.carrier.bookings) == 1, "the carrier booked one shipment for both calls"
    assert [j.kind for j in app.db.jobs.values()] == ["complete"]


def test_a_crashed_job_whose_lease_was_lost_is_left_to_its_new_holder(app: FakeApp) -> None:
    ghost_job(app)
    (stale,) = app.queue.claim(1, "slow-worker", 30.0)
    app.clock.advance(31)
    app.queue.reap_expired()
    (fresh,) = app.queue.claim(1, "fast-worker", 30.0)

    assert app.runner.run(stale) is JobOutcome.LEASE_LOST

    job = app.db.jobs[500]
    assert (job.claim_token, job.failures) == (fresh.claim_token, 0)

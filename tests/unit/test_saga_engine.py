"""The saga engine on a second saga (tests/approval_saga.py), declared only through the
public definition API: steps, a wait with signals and a timer, compensations, a pivot,
per-step retry policies, and two versions side by side. On the in-memory fakes."""

from __future__ import annotations

from typing import Any

import approval_saga as appr
import pytest

from fulfillment.domain.saga import SignalNotExpected
from fulfillment.domain.status import SagaStatus, StepStatus
from fulfillment.service_layer import commands as c
from fulfillment.service_layer.job_runner import JobOutcome
from fulfillment.service_layer.saga_engine import (
    IdempotencyKeyReused,
    InvalidSignalPayload,
    NotFound,
    UnknownSignal,
    signal_idempotency,
)

from .fakes import FakeApp, make_fake_app

SAGA = "saga-a-1"


@pytest.fixture
def app() -> FakeApp:
    return make_fake_app()


def start(app: FakeApp, saga_id: str = "a-1", amount: int = 100, room: str = "b-12") -> None:
    app.bus.handle(c.StartSaga(saga_id, appr.NAME, {"amount": amount, "room": room}, version=1))


def signal(
    app: FakeApp, name: str, payload: dict[str, Any], saga_id: str = "a-1", key: str | None = None
) -> Any:
    record = (
        signal_idempotency(saga_id, name, key, str(sorted(payload.items())), sender="key:tester")
        if key
        else None
    )
    return app.bus.handle(c.SignalSaga(saga_id, name, payload, "key:tester", record))


def types(app: FakeApp, stream: str = SAGA) -> list[str]:
    return app.db.event_types(stream)


def run(app: FakeApp, jobs: int) -> list[str]:
    """Run exactly `jobs` jobs (the next would be a timer, due much later)."""
    return [step[0] for step in (app.run_next() for _ in range(jobs)) if step is not None]


def waiting_app(app: FakeApp) -> FakeApp:
    start(app)
    assert run(app, 2) == ["hold_funds", "book_room"]  # then the timer waits an hour
    return app


def test_the_saga_runs_its_steps_then_waits_for_a_signal_with_its_timer_due(app: FakeApp) -> None:
    start(app)
    assert run(app, 2) == ["hold_funds", "book_room"]

    saga = app.db.saga("a-1")
    assert saga.waiting is appr.AWAIT and saga.status is SagaStatus.RUNNING
    assert saga.steps["await_approval"].status is StepStatus.WAITING
    (timer,) = app.db.jobs.values()
    assert timer.kind == "await_approval"
    assert timer.run_at == pytest.approx(app.db.now() + appr.TIMEOUT_SECONDS)
    assert types(app)[-1] == "SagaWaitStarted"


def test_an_approving_signal_moves_the_saga_on_to_its_pivot_and_records_the_sender(
    app: FakeApp,
) -> None:
    waiting_app(app)

    accepted = signal(app, "approve", {"approver": "ann"})

    assert accepted.outcome == "continue"
    assert [j.kind for j in app.db.jobs.values()] == ["capture"], "the timer made way"
    assert app.run_until_idle() == [("capture", JobOutcome.DONE)]
    assert types(app) == [
        "ApprovalRequested",
        "FundsHeld",
        "RoomBooked",
        "SagaWaitStarted",
        "SagaSignalReceived",
        "FundsCaptured",
    ]
    received = next(e for e in app.db.stream(SAGA) if e.type == "SagaSignalReceived")
    assert received.metadata["sender"] == "key:tester"
    assert received.data["payload"] == {"approver": "ann"}
    assert app.db.saga("a-1").status is SagaStatus.COMPLETED
    assert app.db.jobs == {}


def test_a_rejection_compensates_last_in_first_out(app: FakeApp) -> None:
    waiting_app(app)

    signal(app, "reject", {"reason": "too dear"})
    app.run_until_idle()

    assert types(app)[4:] == [
        "SagaSignalReceived",
        "SagaCompensationStarted",
        "RoomCancelled",
        "FundsReleased",
    ]
    saga = app.db.saga("a-1")
    assert saga.status is SagaStatus.COMPENSATED
    assert (saga.failed_step, saga.failure_reason) == ("await_approval", "rejected")


def test_a_comment_keeps_the_saga_waiting_with_its_timer_unmoved(app: FakeApp) -> None:
    waiting_app(app)
    (timer,) = app.db.jobs.values()
    app.clock.advance(60)

    assert signal(app, "comment", {"text": "which room?"}).outcome == "wait"

    (again,) = app.db.jobs.values()
    assert (again.kind, again.run_at) == ("await_approval", pytest.approx(timer.run_at))
    assert app.db.saga("a-1").waiting is appr.AWAIT
    signal(app, "approve", {"approver": "ann"})
    app.run_until_idle()
    assert app.db.saga("a-1").status is SagaStatus.COMPLETED


def test_the_timer_fires_once_and_a_late_signal_changes_nothing(app: FakeApp) -> None:
    waiting_app(app)

    ran = app.run_until_idle()  # the fake clock jumps to the timer's due time

    assert [kind for kind, _ in ran] == ["await_approval", "cancel_room", "release_funds"]
    assert types(app).count("SagaWaitTimedOut") == 1
    saga = app.db.saga("a-1")
    assert (saga.status, saga.failure_reason) == (SagaStatus.COMPENSATED, "approval_timeout")
    before = len(app.db.events)
    with pytest.raises(SignalNotExpected, match="not expected now"):
        signal(app, "approve", {"approver": "late"})
    assert len(app.db.events) == before and app.db.jobs == {}


def test_a_signal_while_the_saga_runs_a_step_is_not_expected(app: FakeApp) -> None:
    start(app)
    before = (len(app.db.events), dict(app.db.jobs))

    with pytest.raises(SignalNotExpected):
        signal(app, "approve", {"approver": "ann"})

    assert (len(app.db.events), dict(app.db.jobs)) == before


@pytest.mark.parametrize(
    ("name", "payload", "error"),
    [
        ("approve", {}, InvalidSignalPayload),
        ("approve", {"approver": ""}, InvalidSignalPayload),
        ("approve", {"approver": "ann", "extra": 1}, InvalidSignalPayload),
        ("reject", {"reason": 3}, InvalidSignalPayload),
        ("teleport", {}, UnknownSignal),
    ],
)
def test_bad_signals_are_refused_and_change_nothing(
    app: FakeApp, name: str, payload: dict[str, Any], error: type[Exception]
) -> None:
    waiting_app(app)
    before = (len(app.db.events), dict(app.db.jobs))

    with pytest.raises(error):
        signal(app, name, payload)

    assert (len(app.db.events), dict(app.db.jobs)) == before


def test_a_signal_to_a_saga_that_does_not_exist_is_not_found(app: FakeApp) -> None:
    with pytest.raises(NotFound):
        signal(app, "approve", {"approver": "ann"}, saga_id="nope")


def test_the_same_idempotency_key_delivers_a_signal_once(app: FakeApp) -> None:
    waiting_app(app)

    first = signal(app, "comment", {"text": "hi"}, key="k-1")
    second = signal(app, "comment", {"text": "hi"}, key="k-1")

    assert (first.replayed, second.replayed) == (False, True)
    assert types(app).count("SagaSignalReceived") == 1
    with pytest.raises(IdempotencyKeyReused):
        signal(app, "comment", {"text": "other"}, key="k-1")


def test_a_business_failure_of_the_first_step_compensates_nothing(app: FakeApp) -> None:
    start(app, amount=appr.LIMIT + 1)
    app.run_until_idle()

    assert types(app) == ["ApprovalRequested", "FundsHoldFailed", "SagaCompensationStarted"]
    assert app.db.saga("a-1").failure_reason == "over_limit"


def test_an_error_a_step_declares_not_retried_fails_it_at_once(app: FakeApp) -> None:
    start(app, room="b-down")
    ran = app.run_until_idle()

    assert ran[1] == ("book_room", JobOutcome.STEP_FAILED)
    saga = app.db.saga("a-1")
    assert (saga.failed_step, saga.failure_reason) == ("book_room", "not_retried")
    assert types(app)[-1] == "FundsReleased"


def test_a_step_gets_the_attempts_its_retry_policy_declares(app: FakeApp) -> None:
    start(app, amount=-1)  # the bank is away, every time
    ran = app.run_until_idle()

    assert ran == [
        ("hold_funds", JobOutcome.RETRY_SCHEDULED),
        ("hold_funds", JobOutcome.STEP_FAILED),  # 2 attempts, not the default 3
    ]
    (retry,) = [e for e in app.db.stream(SAGA) if e.type == "SagaStepAttemptFailed"]
    assert retry.data["retry_in_seconds"] <= 0.02, "capped by the step's backoff cap"
    assert app.db.saga("a-1").failure_reason == "retries_exhausted"


def test_sagas_keep_the_version_they_started_under(app: FakeApp) -> None:
    start(app, "old")
    run(app, 2)
    appr.register_v2()
    app.bus.handle(c.StartSaga("new", appr.NAME, {"amount": 5, "room": "b-1"}))

    assert run(app, 3) == ["hold_funds", "book_room", "screen"]
    signal(app, "approve", {"approver": "ann"}, saga_id="old")
    signal(app, "approve", {"approver": "ann"}, saga_id="new")
    app.run_until_idle()

    old, new = app.db.saga("old"), app.db.saga("new")
    assert (old.spec.version, new.spec.version) == (1, 2)
    assert "Screened" not in types(app, "saga-old")
    assert "Screened" in types(app, "saga-new")
    assert old.status is new.status is SagaStatus.COMPLETED

"""The Saga aggregate: every legal transition, every illegal one, and replay."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import pytest

from fulfillment.domain.errors import IllegalTransition
from fulfillment.domain.events import (
    CompensationAttemptFailed,
    DomainEvent,
    InventoryReleased,
    InventoryReservationFailed,
    InventoryReserved,
    OrderFulfillmentSagaCompleted,
    OrderFulfillmentSagaStarted,
    PrescriptionCancelled,
    PrescriptionCreated,
    PrescriptionCreationFailed,
    SagaCompensationFailed,
    SagaCompensationRetried,
    SagaCompensationStarted,
    SagaStepAttemptFailed,
    ShipmentInitiated,
    ShipmentInitiationFailed,
)
from fulfillment.domain.saga import Saga
from fulfillment.domain.status import SagaStatus, StepStatus
from fulfillment.service_layer import order_saga
from fulfillment.service_layer.order_saga import ORDER_SAGA_V1 as ORDER_SAGA
from fulfillment.service_layer.order_saga import Compensation, Step

from .builders import T0, address, at, lines, order_created, prescription, started_saga
from .saga_model import (
    ALL_COMMANDS,
    COMPLETE,
    IDS,
    REASON,
    RETRY_COMPENSATION,
    STEPS,
    TRACKING,
    UNDO,
    Command,
    SagaModel,
    attempt_failed,
    compensated,
    compensation_attempt_failed,
    fail,
    park,
    state,
    succeed,
)

CP, RI, CS = (
    Compensation.CANCEL_PRESCRIPTION,
    Compensation.RELEASE_INVENTORY,
    Compensation.CANCEL_SHIPMENT,
)
ALL_STEPS_SUCCEED = tuple(succeed(s) for s in STEPS)


def run(saga: Saga, *commands: Command) -> list[DomainEvent]:
    """Apply the commands one second apart; return the events they recorded."""
    before = len(saga.pending_events)
    for command in commands:
        command.apply(saga, at(saga.version))
    return saga.pending_events[before:]


def saga_after(*commands: Command) -> Saga:
    saga = started_saga()
    run(saga, *commands)
    return saga


def due(saga: Saga) -> tuple[SagaStatus | None, Compensation | None]:
    """The saga's status and the compensation it awaits (read afresh, not narrowed)."""
    return saga.status, saga.next_compensation


def assert_refused(saga: Saga, command: Command) -> None:
    """The command raises IllegalTransition and leaves no trace."""
    before, recorded = state(saga), saga.pending_events
    with pytest.raises(IllegalTransition):
        command.apply(saga, at(99))
    assert state(saga) == before
    assert saga.pending_events == recorded


def assert_replays_to_same_state(saga: Saga) -> None:
    replayed = Saga.replay(saga.id, saga.pending_events)
    assert state(replayed) == state(saga)


# --- legal transitions ------------------------------------------------------------------


def test_a_new_saga_copies_the_order_and_awaits_the_prescription() -> None:
    saga = started_saga("o-7")

    order = order_saga.started(saga)
    assert saga.id == order.order_id == "o-7"
    assert saga.stream_id == "saga-o-7"
    assert saga.status is SagaStatus.RUNNING
    assert saga.next_step is Step.CREATE_PRESCRIPTION
    assert saga.definition is ORDER_SAGA
    assert (order.items, order.prescription, order.shipping_address) == (
        lines(),
        prescription(),
        address(),
    )
    assert saga.deadline_at == at(3600)
    assert saga.pending_events == [
        OrderFulfillmentSagaStarted(
            occurred_at=T0,
            saga_id="o-7",
            order_id="o-7",
            definition_version=ORDER_SAGA.version,
            customer_id="c-1",
            items=lines(),
            prescription=prescription(),
            shipping_address=address(),
            deadline_at=at(3600),
        )
    ]


def test_the_happy_path_runs_the_three_steps_in_order_then_completes() -> None:
    saga = started_saga()
    next_steps = []
    for command in ALL_STEPS_SUCCEED:
        next_steps.append(saga.next_step)
        run(saga, command)

    assert next_steps == list(STEPS)
    assert saga.next_step is Step.COMPLETE
    run(saga, COMPLETE)

    assert [type(e) for e in saga.pending_events] == [
        OrderFulfillmentSagaStarted,
        PrescriptionCreated,
        InventoryReserved,
        ShipmentInitiated,
        OrderFulfillmentSagaCompleted,
    ]
    assert saga.pending_events[-1] == OrderFulfillmentSagaCompleted(
        occurred_at=at(4), saga_id="o-1", tracking_number=TRACKING
    )
    assert saga.status is SagaStatus.COMPLETED and saga.status.is_terminal
    assert saga.finished_at == at(4)
    created = saga.result(PrescriptionCreated)
    reserved = saga.result(InventoryReserved)
    shipped = saga.result(ShipmentInitiated)
    assert created and reserved and shipped
    ids = (created.prescription_id, reserved.reservation_id, shipped.shipment_id)
    assert ids == tuple(IDS[s] for s in STEPS)
    assert all((s.status, s.attempts) == (StepStatus.SUCCEEDED, 1) for s in saga.steps.values())
    assert saga.compensation_stack == [CP, RI, CS]
    assert saga.next_step is None


def test_each_steps_deadline_clock_starts_when_the_previous_step_succeeded() -> None:
    saga = saga_after(succeed(Step.CREATE_PRESCRIPTION))

    assert saga.step_started_at(Step.CREATE_PRESCRIPTION) == T0
    assert saga.step_started_at(Step.RESERVE_INVENTORY) == at(1)
    assert saga.step_started_at(Step.INITIATE_SHIPMENT) is None


FAILED_EVENT = {
    Step.CREATE_PRESCRIPTION: PrescriptionCreationFailed,
    Step.RESERVE_INVENTORY: InventoryReservationFailed,
    Step.INITIATE_SHIPMENT: ShipmentInitiationFailed,
}
UNDONE_EVENT: dict[Compensation, type[DomainEvent]] = {
    CP: PrescriptionCancelled,
    RI: InventoryReleased,
}


@pytest.mark.parametrize("failing", STEPS)
def test_a_step_failing_for_good_undoes_the_steps_before_it_last_in_first_out(
    failing: Step,
) -> None:
    before = ALL_STEPS_SUCCEED[: STEPS.index(failing)]
    saga = saga_after(*before)
    expected_undo = tuple(UNDO[s] for s in reversed(STEPS[: STEPS.index(failing)]))

    failure = run(saga, fail(failing))
    t = at(len(before) + 1)

    assert failure == [
        FAILED_EVENT[failing](
            occurred_at=t, saga_id="o-1", reason=REASON[failing], error=f"{failing} failed"
        ),
        SagaCompensationStarted(
            occurred_at=t,
            saga_id="o-1",
            failed_step=failing,
            reason=REASON[failing],
            compensations=expected_undo,
        ),
    ]
    assert saga.steps[failing].status is StepStatus.FAILED
    assert (saga.failed_step, saga.failure_reason) == (failing, REASON[failing])

    undone = []
    while saga.next_compensation is not None:
        undone.append(saga.next_compensation)
        assert saga.status is SagaStatus.COMPENSATING
        run(saga, compensated(saga.next_compensation))

    assert tuple(undone) == expected_undo
    events = saga.pending_events[-len(expected_undo) :] if expected_undo else []
    assert [type(e) for e in events] == [UNDONE_EVENT[c] for c in expected_undo]
    assert saga.status is SagaStatus.COMPENSATED
    assert all(saga.steps[s].status is StepStatus.COMPENSATED for s in before_steps(failing))
    assert_replays_to_same_state(saga)


def before_steps(step: Step) -> tuple[Step, ...]:
    return STEPS[: STEPS.index(step)]


def test_undo_events_name_what_they_undo() -> None:
    saga = saga_after(*ALL_STEPS_SUCCEED[:2], fail(Step.INITIATE_SHIPMENT))

    v = saga.version

    events = run(saga, compensated(RI), compensated(CP))

    assert events == [
        InventoryReleased(occurred_at=at(v), saga_id="o-1", reservation_id="res-1"),
        PrescriptionCancelled(occurred_at=at(v + 1), saga_id="o-1", prescription_id="rx-1"),
    ]


def test_a_failure_at_the_first_step_compensates_nothing_and_ends_at_once() -> None:
    saga = saga_after(fail(Step.CREATE_PRESCRIPTION))

    assert saga.status is SagaStatus.COMPENSATED
    assert saga.finished_at == at(1)
    assert saga.next_compensation is None
    last = saga.pending_events[-1]
    assert isinstance(last, SagaCompensationStarted) and last.compensations == ()


def test_transient_failures_are_counted_as_attempts_and_the_step_runs_again() -> None:
    saga = started_saga()

    events = run(saga, attempt_failed(Step.CREATE_PRESCRIPTION))
    assert events == [
        SagaStepAttemptFailed(
            occurred_at=at(1),
            saga_id="o-1",
            step=Step.CREATE_PRESCRIPTION,
            attempt=1,
            error="carrier down",
            retry_in_seconds=1.5,
        )
    ]
    events = run(saga, attempt_failed(Step.CREATE_PRESCRIPTION))
    assert [e.attempt for e in events if isinstance(e, SagaStepAttemptFailed)] == [2]
    assert saga.status is SagaStatus.RUNNING
    assert saga.next_step is Step.CREATE_PRESCRIPTION
    assert saga.attempts(Step.CREATE_PRESCRIPTION) == 2

    run(saga, succeed(Step.CREATE_PRESCRIPTION))

    assert saga.attempts(Step.CREATE_PRESCRIPTION) == 3
    assert saga.steps[Step.CREATE_PRESCRIPTION].errors == ["carrier down", "carrier down"]
    assert saga.awaits(Step.RESERVE_INVENTORY)
    assert saga.attempts(Step.RESERVE_INVENTORY) == 0


def test_a_step_failing_after_transient_failures_counts_every_attempt() -> None:
    saga = saga_after(
        *ALL_STEPS_SUCCEED[:2],
        attempt_failed(Step.INITIATE_SHIPMENT),
        attempt_failed(Step.INITIATE_SHIPMENT),
        fail(Step.INITIATE_SHIPMENT),
    )

    shipment = saga.steps[Step.INITIATE_SHIPMENT]
    assert (shipment.status, shipment.attempts) == (StepStatus.FAILED, 3)
    assert saga.status is SagaStatus.COMPENSATING


def test_failed_compensation_attempts_are_counted_and_the_compensation_runs_again() -> None:
    saga = saga_after(*ALL_STEPS_SUCCEED[:2], fail(Step.INITIATE_SHIPMENT))
    v = saga.version

    events = run(saga, compensation_attempt_failed(RI), compensation_attempt_failed(RI))

    assert events == [
        CompensationAttemptFailed(
            occurred_at=at(v + n),
            saga_id="o-1",
            compensation=RI,
            attempt=n + 1,
            error="service away",
            retry_in_seconds=2.5,
        )
        for n in range(2)
    ]
    assert saga.status is SagaStatus.COMPENSATING
    assert saga.next_compensation is RI
    assert saga.compensation_attempts(RI) == 2

    run(saga, compensated(RI))

    assert saga.compensation_attempts(RI) == 3
    assert saga.next_compensation is CP
    assert saga.compensation_attempts(CP) == 0


def test_a_compensation_that_keeps_failing_parks_the_saga_until_an_operator_retries() -> None:
    saga = saga_after(
        *ALL_STEPS_SUCCEED[:2],
        fail(Step.INITIATE_SHIPMENT),
        compensation_attempt_failed(RI),
        compensation_attempt_failed(RI),
    )

    v = saga.version

    events = run(saga, park(RI))

    assert events == [
        SagaCompensationFailed(
            occurred_at=at(v), saga_id="o-1", compensation=RI, error="still away"
        )
    ]
    assert saga.status is SagaStatus.COMPENSATION_FAILED
    assert not saga.status.is_terminal
    assert saga.parked_error == "still away"
    assert saga.steps[Step.RESERVE_INVENTORY].status is StepStatus.COMPENSATION_FAILED
    assert saga.compensation_attempts(RI) == 3
    assert saga.next_compensation is None
    assert saga.compensation_stack == [CP, RI]

    events = run(saga, RETRY_COMPENSATION)

    assert events == [
        SagaCompensationRetried(occurred_at=at(v + 1), saga_id="o-1", compensation=RI)
    ]
    assert due(saga) == (SagaStatus.COMPENSATING, RI)
    assert saga.parked_error is None
    assert saga.compensation_attempts(RI) == 0, "a retried compensation gets all its attempts"

    run(saga, compensated(RI), compensated(CP))

    assert saga.status is SagaStatus.COMPENSATED
    assert_replays_to_same_state(saga)


# --- illegal transitions: the examples the business cares about ---------------------------


def test_inventory_cannot_be_reserved_before_the_prescription_exists() -> None:
    assert_refused(started_saga(), succeed(Step.RESERVE_INVENTORY))


def test_a_shipment_cannot_be_initiated_before_the_reservation() -> None:
    assert_refused(started_saga(), succeed(Step.INITIATE_SHIPMENT))
    assert_refused(saga_after(succeed(Step.CREATE_PRESCRIPTION)), succeed(Step.INITIATE_SHIPMENT))


def test_a_step_cannot_succeed_twice() -> None:
    assert_refused(saga_after(succeed(Step.CREATE_PRESCRIPTION)), succeed(Step.CREATE_PRESCRIPTION))


@pytest.mark.parametrize("done", range(3), ids=lambda n: f"{n} steps done")
def test_a_saga_cannot_complete_before_all_its_steps_succeeded(done: int) -> None:
    assert_refused(saga_after(*ALL_STEPS_SUCCEED[:done]), COMPLETE)


def test_a_completed_saga_cannot_complete_again_nor_fail() -> None:
    saga = saga_after(*ALL_STEPS_SUCCEED, COMPLETE)

    assert_refused(saga, COMPLETE)
    assert_refused(saga, fail(Step.INITIATE_SHIPMENT))


@pytest.mark.parametrize("failing", STEPS)
def test_a_compensated_saga_cannot_complete_nor_go_on(failing: Step) -> None:
    saga = saga_after(*ALL_STEPS_SUCCEED[: STEPS.index(failing)], fail(failing))
    while saga.next_compensation is not None:
        run(saga, compensated(saga.next_compensation))

    assert_refused(saga, COMPLETE)
    for step in STEPS:
        assert_refused(saga, succeed(step))


def test_a_compensating_saga_takes_no_forward_step() -> None:
    saga = saga_after(*ALL_STEPS_SUCCEED[:2], fail(Step.INITIATE_SHIPMENT))

    for command in (COMPLETE, *(c(s) for s in STEPS for c in (succeed, attempt_failed, fail))):
        assert_refused(saga, command)


def test_compensations_run_only_from_the_top_of_the_stack() -> None:
    saga = saga_after(*ALL_STEPS_SUCCEED[:2], fail(Step.INITIATE_SHIPMENT))
    assert saga.next_compensation is RI

    for command in (compensated, compensation_attempt_failed, park):
        assert_refused(saga, command(CP))
        assert_refused(saga, command(CS))


@pytest.mark.parametrize(
    "commands",
    [
        (),
        ALL_STEPS_SUCCEED,
        (*ALL_STEPS_SUCCEED, COMPLETE),
        (succeed(Step.CREATE_PRESCRIPTION), fail(Step.RESERVE_INVENTORY)),
        (fail(Step.CREATE_PRESCRIPTION),),
    ],
    ids=["running", "ready to complete", "completed", "compensating", "compensated"],
)
def test_only_a_parked_saga_can_retry_its_compensation(commands: Sequence[Command]) -> None:
    assert_refused(saga_after(*commands), RETRY_COMPENSATION)


def test_a_parked_saga_waits_for_the_operator() -> None:
    saga = saga_after(succeed(Step.CREATE_PRESCRIPTION), fail(Step.RESERVE_INVENTORY), park(CP))

    for command in (compensated(CP), compensation_attempt_failed(CP), park(CP), COMPLETE):
        assert_refused(saga, command)


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=str)
def test_a_saga_never_started_accepts_no_command(command: Command) -> None:
    assert_refused(Saga("o-1"), command)


def test_a_saga_refuses_to_replay_an_event_of_another_stream() -> None:
    with pytest.raises(LookupError, match="starts no registered saga"):
        Saga.replay("o-1", [order_created()])


# --- every command in every reachable state ------------------------------------------------


def reachable_states() -> list[tuple[SagaModel, tuple[Command, ...]]]:
    """Each distinct state of the model, with the shortest path of commands that reaches it."""
    found: dict[SagaModel, tuple[Command, ...]] = {SagaModel(): ()}
    queue = deque([SagaModel()])
    while queue:
        model = queue.popleft()
        for command in model.legal():
            nxt = model.after(command)
            if nxt not in found:
                found[nxt] = (*found[model], command)
                queue.append(nxt)
    return list(found.items())


STATES = reachable_states()


def test_the_model_reaches_every_phase() -> None:
    assert {m.phase for m, _ in STATES} == {
        "running",
        "compensating",
        "parked",
        "completed",
        "compensated",
    }


STATE_IDS = [" > ".join(map(str, p)) or "started" for _, p in STATES]


@pytest.mark.parametrize(("model", "path"), STATES, ids=STATE_IDS)
def test_the_saga_tells_what_is_due_in_every_reachable_state(
    model: SagaModel, path: tuple[Command, ...]
) -> None:
    saga = saga_after(*path)
    running = model.phase == "running"
    remaining = STEPS[len(model.succeeded) :]

    assert saga.status is model.status
    due = (remaining[0] if remaining else Step.COMPLETE) if running else None
    assert saga.next_step is due
    assert saga.next_compensation is (model.to_undo[0] if model.phase == "compensating" else None)
    assert all(saga.awaits(s) is (s is saga.next_step) for s in STEPS)
    assert saga.status.is_terminal is (model.phase in ("completed", "compensated"))


@pytest.mark.parametrize("command", ALL_COMMANDS, ids=str)
@pytest.mark.parametrize(("model", "path"), STATES, ids=STATE_IDS)
def test_every_command_is_accepted_exactly_when_the_rules_allow_it(
    model: SagaModel, path: tuple[Command, ...], command: Command
) -> None:
    saga = saga_after(*path)
    assert saga.status is model.status

    if command in model.legal():
        events = run(saga, command)
        assert events, f"{command} recorded nothing"
        assert saga.status is model.after(command).status
        assert_replays_to_same_state(saga)
    else:
        assert_refused(saga, command)

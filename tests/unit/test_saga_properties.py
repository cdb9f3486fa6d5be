"""Properties of the saga over arbitrary legal histories (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from fulfillment.domain.errors import IllegalTransition
from fulfillment.domain.events import (
    InventoryReleased,
    InventoryReserved,
    PrescriptionCancelled,
    PrescriptionCreated,
    SagaCompensationStarted,
    SagaStepAttemptFailed,
    ShipmentCancelled,
    ShipmentInitiated,
)
from fulfillment.domain.saga import Saga
from fulfillment.service_layer.order_saga import Compensation

from .builders import at, started_saga
from .saga_model import ALL_COMMANDS, STEPS, Command, SagaModel, state

SUCCESS_UNDONE_BY = {
    PrescriptionCreated: Compensation.CANCEL_PRESCRIPTION,
    InventoryReserved: Compensation.RELEASE_INVENTORY,
    ShipmentInitiated: Compensation.CANCEL_SHIPMENT,
}
UNDO_EVENT = {
    PrescriptionCancelled: Compensation.CANCEL_PRESCRIPTION,
    InventoryReleased: Compensation.RELEASE_INVENTORY,
    ShipmentCancelled: Compensation.CANCEL_SHIPMENT,
}


@st.composite
def histories(draw: st.DrawFn) -> tuple[Saga, SagaModel, list[Command]]:
    """A started saga driven by up to 40 legal commands, with illegal ones tried in between."""
    saga, model, applied = started_saga(), SagaModel(), []
    for _ in range(draw(st.integers(0, 40))):
        legal = model.legal()
        if not legal:
            break
        if draw(st.booleans()):
            illegal = [c for c in ALL_COMMANDS if c not in legal]
            command = draw(st.sampled_from(illegal))
            before = state(saga)
            try:
                command.apply(saga, at(saga.version))
            except IllegalTransition:
                pass
            else:
                raise AssertionError(f"{command} accepted in {model}")
            assert state(saga) == before
        command = draw(st.sampled_from(legal))
        command.apply(saga, at(saga.version))
        model = model.after(command)
        applied.append(command)
        assert saga.status is model.status
    return saga, model, applied


@settings(max_examples=300, deadline=None)
@given(histories())
def test_replaying_the_recorded_events_gives_the_live_state(
    history: tuple[Saga, SagaModel, list[Command]],
) -> None:
    saga, _, _ = history

    replayed = Saga.replay(saga.id, saga.pending_events)

    assert state(replayed) == state(saga)


@settings(max_examples=300, deadline=None)
@given(histories(), st.data())
def test_a_saga_reloaded_at_any_point_goes_on_exactly_like_the_live_one(
    history: tuple[Saga, SagaModel, list[Command]], data: st.DataObject
) -> None:
    saga, _, applied = history
    cut = data.draw(st.integers(0, len(applied)))
    before_reload = started_saga()
    for command in applied[:cut]:
        command.apply(before_reload, at(before_reload.version))

    reloaded = Saga.replay(saga.id, before_reload.pending_events)
    assert reloaded.stored_version == before_reload.version
    for command in applied[cut:]:
        command.apply(reloaded, at(reloaded.version))

    assert state(reloaded) == state(saga)
    assert reloaded.pending_events == saga.pending_events[before_reload.version :]


@settings(max_examples=300, deadline=None)
@given(histories())
def test_compensations_always_undo_the_succeeded_steps_in_reverse_order(
    history: tuple[Saga, SagaModel, list[Command]],
) -> None:
    saga, _, _ = history
    events = saga.pending_events
    done = [SUCCESS_UNDONE_BY[type(e)] for e in events if type(e) in SUCCESS_UNDONE_BY]
    undone = [UNDO_EVENT[type(e)] for e in events if type(e) in UNDO_EVENT]
    started = [e for e in events if isinstance(e, SagaCompensationStarted)]

    assert len(started) <= 1
    if started:
        assert list(started[0].compensations) == done[::-1]
        assert undone == done[::-1][: len(undone)]
        assert all(
            events.index(started[0]) < events.index(e) for e in events if type(e) in UNDO_EVENT
        )
    else:
        assert undone == []


@settings(max_examples=200, deadline=None)
@given(histories())
def test_every_attempt_of_a_step_is_counted(
    history: tuple[Saga, SagaModel, list[Command]],
) -> None:
    saga, _, applied = history
    for step in STEPS:
        retries = sum(
            1
            for e in saga.pending_events
            if isinstance(e, SagaStepAttemptFailed) and e.step is step
        )
        outcomes = sum(1 for c in applied if c.target is step and c.name in ("succeed", "fail"))
        assert saga.attempts(step) == retries + outcomes

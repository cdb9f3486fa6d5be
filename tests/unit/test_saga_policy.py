"""The saga policy: which job follows the events a transaction recorded."""

from __future__ import annotations

import pytest

from fulfillment.domain.saga import Saga
from fulfillment.service_layer.jobs import JobSpec
from fulfillment.service_layer.order_saga import COMPLETE, Compensation, Step
from fulfillment.service_layer.order_saga import ORDER_SAGA_V1 as ORDER_SAGA
from fulfillment.service_layer.saga_policy import next_job

from .builders import at, started_saga
from .saga_model import (
    COMPLETE as COMPLETE_SAGA,
)
from .saga_model import (
    RETRY_COMPENSATION,
    Command,
    attempt_failed,
    compensated,
    compensation_attempt_failed,
    fail,
    park,
    succeed,
)

RX, RES, SHIP = Step.CREATE_PRESCRIPTION, Step.RESERVE_INVENTORY, Step.INITIATE_SHIPMENT
CP, RI = Compensation.CANCEL_PRESCRIPTION, Compensation.RELEASE_INVENTORY
TWO_STEPS = (succeed(RX), succeed(RES))


def policy_after(
    before: tuple[Command, ...], command: Command | None
) -> tuple[Saga, JobSpec | None]:
    """Run `before` (already stored), then `command` in a new transaction: what job follows?"""
    saga = started_saga()
    for c in before:
        c.apply(saga, at(saga.version))
    if command is None:
        return saga, next_job(saga, saga.pending_events)
    saga.collect_pending()
    command.apply(saga, at(saga.version))
    return saga, next_job(saga, saga.pending_events)


@pytest.mark.parametrize(
    ("before", "command", "kind"),
    [
        ((), None, RX.value),
        ((), succeed(RX), RES.value),
        ((succeed(RX),), succeed(RES), SHIP.value),
        (TWO_STEPS, succeed(SHIP), COMPLETE),
        ((*TWO_STEPS, succeed(SHIP)), COMPLETE_SAGA, None),
        (TWO_STEPS, fail(SHIP), RI.value),
        ((succeed(RX),), fail(RES), CP.value),
        ((), fail(RX), None),
        ((*TWO_STEPS, fail(SHIP)), compensated(RI), CP.value),
        ((*TWO_STEPS, fail(SHIP), compensated(RI)), compensated(CP), None),
        ((*TWO_STEPS, fail(SHIP)), park(RI), None),
        ((*TWO_STEPS, fail(SHIP), park(RI)), RETRY_COMPENSATION, RI.value),
    ],
    ids=[
        "saga started -> create_prescription",
        "prescription created -> reserve_inventory",
        "inventory reserved -> initiate_shipment",
        "shipment initiated -> complete",
        "saga completed -> nothing",
        "shipment failed -> release_inventory",
        "reservation failed -> cancel_prescription",
        "prescription failed -> nothing to undo",
        "inventory released -> cancel_prescription",
        "prescription cancelled, stack empty -> nothing",
        "compensation parked -> nothing until an operator acts",
        "compensation retried -> the parked compensation",
    ],
)
def test_each_event_is_followed_by_the_job_of_the_table(
    before: tuple[Command, ...], command: Command | None, kind: str | None
) -> None:
    saga, job = policy_after(before, command)

    if kind is None:
        assert job is None
    else:
        assert job == JobSpec(saga.id, kind, 0.0)
        assert kind in ORDER_SAGA.job_kinds


def test_a_transient_step_failure_runs_the_same_step_again_after_the_backoff() -> None:
    _, job = policy_after((succeed(RX),), attempt_failed(RES))

    assert job == JobSpec("o-1", RES.value, 1.5)


def test_a_failed_compensation_attempt_runs_the_same_compensation_after_the_backoff() -> None:
    _, job = policy_after((*TWO_STEPS, fail(SHIP)), compensation_attempt_failed(RI))

    assert job == JobSpec("o-1", RI.value, 2.5)


def test_no_new_events_means_no_job() -> None:
    assert next_job(started_saga(), []) is None

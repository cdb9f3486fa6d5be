"""A saga declared once (domain/saga_definition.py): its lookups, and the mistakes a
definition refuses."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from fulfillment.domain.events import DomainEvent
from fulfillment.domain.order_saga import COMPLETE, ORDER_SAGA
from fulfillment.domain.saga_definition import CompensationSpec, SagaDefinition, StepSpec
from fulfillment.service_layer.commands import JOB_COMMANDS


@dataclass(frozen=True, kw_only=True)
class Booked(DomainEvent):
    pass


@dataclass(frozen=True, kw_only=True)
class BookingFailed(DomainEvent):
    pass


@dataclass(frozen=True, kw_only=True)
class Unbooked(DomainEvent):
    pass


@dataclass(frozen=True, kw_only=True)
class Paid(DomainEvent):
    pass


def book(**changes: object) -> StepSpec:
    values: dict[str, object] = {
        "name": "book",
        "succeeded": Booked,
        "failed": BookingFailed,
        "compensation": CompensationSpec("unbook", recorded_by=Unbooked),
    }
    values.update(changes)
    return StepSpec(**values)  # type: ignore[arg-type]


def test_a_definition_answers_which_step_an_event_records_and_what_follows() -> None:
    trip = SagaDefinition("trip", 1, (book(), StepSpec("pay", succeeded=Paid, pivot=True)))

    assert trip.succeeded_by("Booked") is trip.step("book")
    assert trip.failed_by("BookingFailed") is trip.step("book")
    assert trip.compensated_by("Unbooked") is trip.step("book")
    assert trip.succeeded_by("Unbooked") is None
    assert trip.undone_by("unbook").name == "book"
    assert trip.step_after("book") is trip.step("pay")
    assert trip.step_after("pay") is None
    assert [s.name for s in trip.forward] == ["book"]
    assert trip.pivot is trip.step("pay")
    assert trip.job_kinds == ("book", "pay", "unbook")


@pytest.mark.parametrize(
    ("steps", "complaint"),
    [
        ((book(), book()), "unique"),
        ((book(), book(name="again", compensation=None, failed=Unbooked)), "one outcome"),
        ((book(failed=None),), "needs its event"),
        ((StepSpec("pay", succeeded=Paid, failed=BookingFailed, pivot=True),), "pivot"),
        ((StepSpec("pay", succeeded=Paid, pivot=True), book()), "after the pivot"),
        (
            (
                StepSpec("pay", succeeded=Paid, pivot=True),
                StepSpec("x", succeeded=Booked, pivot=True),
            ),
            "one pivot",
        ),
    ],
)
def test_a_definition_refuses_what_could_not_run(
    steps: tuple[StepSpec, ...], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        SagaDefinition("broken", 1, steps)


def test_the_order_saga_runs_its_three_steps_then_completes() -> None:
    assert [str(s.name) for s in ORDER_SAGA.forward] == [
        "create_prescription",
        "reserve_inventory",
        "initiate_shipment",
    ]
    assert ORDER_SAGA.pivot is not None and ORDER_SAGA.pivot.name == COMPLETE
    assert [str(c.name) for c in ORDER_SAGA.compensations] == [
        "cancel_prescription",
        "release_inventory",
        "cancel_shipment",
    ]


def test_every_job_kind_of_the_order_saga_has_its_command_and_no_other() -> None:
    assert set(JOB_COMMANDS) == {str(kind) for kind in ORDER_SAGA.job_kinds}

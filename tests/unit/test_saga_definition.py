"""A saga declared once (domain/saga_definition.py): its lookups, the mistakes a
definition refuses, and the registry of definitions by name and version."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest

from fulfillment.domain.events import DomainEvent
from fulfillment.domain.saga_definition import (
    CONTINUE,
    REGISTRY,
    CompensationSpec,
    SagaDefinition,
    SagaRegistry,
    SignalSpec,
    StepSpec,
    UnknownSagaDefinition,
    WaitSpec,
    fail,
)
from fulfillment.service_layer.order_saga import COMPLETE, ORDER_SAGA


@dataclass(frozen=True, kw_only=True)
class TripBooked(DomainEvent):
    saga_id: str
    definition_version: int


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


class Go(pydantic.BaseModel):
    pass


def act(ctx: Any) -> DomainEvent:
    raise NotImplementedError


def book(**changes: object) -> StepSpec:
    values: dict[str, object] = {
        "name": "book",
        "action": act,
        "succeeded": Booked,
        "failed": BookingFailed,
        "compensation": CompensationSpec("unbook", recorded_by=Unbooked, action=act),
    }
    values.update(changes)
    return StepSpec(**values)  # type: ignore[arg-type]


def pay(**changes: object) -> StepSpec:
    values: dict[str, object] = {"name": "pay", "action": act, "succeeded": Paid, "pivot": True}
    values.update(changes)
    return StepSpec(**values)  # type: ignore[arg-type]


def hold(**changes: object) -> WaitSpec:
    values: dict[str, object] = {
        "name": "hold",
        "signals": (SignalSpec("go", Go, CONTINUE),),
        "timeout_seconds": 5.0,
    }
    values.update(changes)
    return WaitSpec(**values)  # type: ignore[arg-type]


def trip(*steps: StepSpec | WaitSpec, version: int = 1) -> SagaDefinition:
    return SagaDefinition("trip", version, TripBooked, steps)


def test_a_definition_answers_which_step_an_event_records_and_what_kind_a_job_is() -> None:
    d = trip(book(), hold(), pay())

    assert d.succeeded_by("Booked") is d.step("book")
    assert d.failed_by("BookingFailed") is d.step("book")
    assert d.compensated_by("Unbooked") is d.step("book")
    assert d.succeeded_by("Unbooked") is None
    assert d.undone_by("unbook").name == "book"
    assert d.pivot is d.step("pay")
    assert [d.forward_only(n) for n in ("book", "hold", "pay")] == [False, False, True]
    assert d.job_kinds == ("book", "hold", "pay", "unbook")
    kinds = [d.kind_of(k) for k in ("book", "hold", "pay", "unbook", "x")]
    assert kinds == ["step", "wait", "step", "compensation", None]
    assert d.event_types == (TripBooked, Booked, BookingFailed, Unbooked, Paid)
    assert d.wait("hold").signal("go") is not None and d.wait("hold").signal("stop") is None


@pytest.mark.parametrize(
    ("steps", "complaint"),
    [
        ((), "no steps"),
        ((book(), book()), "unique"),
        ((book(), book(name="again", compensation=None, failed=Unbooked)), "one outcome"),
        ((book(failed=None),), "needs its event"),
        ((book(action=None),), "no action"),
        ((book(name="x" * 41),), "characters"),
        ((pay(failed=BookingFailed),), "nothing fails"),
        ((pay(), book()), "nothing fails or is undone"),
        ((pay(), pay(name="again", succeeded=Booked)), "one pivot"),
        ((pay(), hold(on_timeout=fail("late"))), "nothing fails after the pivot"),
        ((hold(signals=()),), "no signal"),
        (
            (book(compensation=CompensationSpec("unbook", recorded_by=Unbooked)),),
            "compensation unbook: no action",
        ),
    ],
)
def test_a_definition_refuses_what_could_not_run(
    steps: tuple[StepSpec | WaitSpec, ...], complaint: str
) -> None:
    with pytest.raises(ValueError, match=complaint):
        trip(*steps)


def test_a_start_event_must_name_its_saga_and_version() -> None:
    with pytest.raises(ValueError, match="saga_id and definition_version"):
        SagaDefinition("trip", 1, Paid, (book(),))


def test_the_registry_keeps_every_version_and_finds_a_sagas_own() -> None:
    registry = SagaRegistry()
    v1 = registry.register(trip(book(), pay()))
    v2 = registry.register(trip(book(), hold(), pay(), version=2))

    assert registry.get("trip") is v2
    assert registry.get("trip", 1) is v1
    started = TripBooked(occurred_at=datetime.now(UTC), saga_id="t", definition_version=1)
    assert registry.for_start(started) is v1
    assert registry.prepares("book") is False
    with pytest.raises(UnknownSagaDefinition, match="v3"):
        registry.get("trip", 3)
    with pytest.raises(UnknownSagaDefinition, match="no saga named"):
        registry.get("cruise")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(trip(book(), version=2))


def test_the_order_saga_runs_its_steps_and_waits_then_completes() -> None:
    assert [s.name for s in ORDER_SAGA.steps] == [
        "create_prescription",
        "verify_prescription",
        "reserve_inventory",
        "initiate_shipment",
        "await_pickup",
        "complete",
    ]
    assert ORDER_SAGA.version == 2 and ORDER_SAGA.cancellation is not None
    assert [s.name for s in REGISTRY.get("order_fulfillment", 1).steps] == [
        "create_prescription",
        "reserve_inventory",
        "initiate_shipment",
        "complete",
    ]
    assert ORDER_SAGA.pivot is not None and ORDER_SAGA.pivot.name == COMPLETE
    assert [str(c.name) for c in ORDER_SAGA.compensations] == [
        "cancel_prescription",
        "release_inventory",
        "cancel_shipment",
    ]
    assert ORDER_SAGA.step("initiate_shipment").prepare is not None

"""A reference model of the saga's rules, written from docs/architecture.md and
docs/api.md, not from the aggregate.

`SagaModel.legal()` says which commands the business allows in a state; the tests drive
the real `Saga` with every command in every reachable state and check it
agrees: the legal ones record events, the others raise `IllegalTransition`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from datetime import datetime

from fulfillment.domain import events as ev
from fulfillment.domain.saga import Saga
from fulfillment.domain.status import FailureReason, SagaStatus
from fulfillment.service_layer.order_saga import Compensation, Step

from .builders import lines

STEPS = (Step.CREATE_PRESCRIPTION, Step.RESERVE_INVENTORY, Step.INITIATE_SHIPMENT)
UNDO = {
    Step.CREATE_PRESCRIPTION: Compensation.CANCEL_PRESCRIPTION,
    Step.RESERVE_INVENTORY: Compensation.RELEASE_INVENTORY,
    Step.INITIATE_SHIPMENT: Compensation.CANCEL_SHIPMENT,
}
REASON = {
    Step.CREATE_PRESCRIPTION: FailureReason.PRESCRIPTION_EXPIRED.value,
    Step.RESERVE_INVENTORY: FailureReason.INSUFFICIENT_STOCK.value,
    Step.INITIATE_SHIPMENT: FailureReason.UNSUPPORTED_DESTINATION.value,
}
IDS = {
    Step.CREATE_PRESCRIPTION: "rx-1",
    Step.RESERVE_INVENTORY: "res-1",
    Step.INITIATE_SHIPMENT: "shp-1",
}
TRACKING = "TRK-1"


@dataclass(frozen=True)
class Command:
    """One thing a handler may ask of the saga."""

    name: str
    target: Step | Compensation | None = None

    def __str__(self) -> str:
        return f"{self.name}({self.target})" if self.target is not None else self.name

    def apply(self, saga: Saga, at: datetime) -> None:
        step = self.target if isinstance(self.target, Step) else None
        compensation = self.target if isinstance(self.target, Compensation) else None
        match self.name:
            case "succeed" if step is not None:
                saga.succeed(step, success_event(step, saga.id, at))
            case "attempt_failed" if step is not None:
                saga.record_attempt_failed(step, "carrier down", retry_in_seconds=1.5, at=at)
            case "fail" if step is not None:
                saga.fail_step(step, REASON[step], f"{step} failed", at=at)
            case "complete":
                saga.succeed(
                    Step.COMPLETE,
                    ev.OrderFulfillmentSagaCompleted(
                        occurred_at=at, saga_id=saga.id, tracking_number=TRACKING
                    ),
                )
            case "compensated" if compensation is not None:
                saga.record_compensated(compensation, compensation_event(compensation, saga.id, at))
            case "compensation_attempt_failed" if compensation is not None:
                saga.record_compensation_attempt_failed(
                    compensation, "service away", retry_in_seconds=2.5, at=at
                )
            case "park" if compensation is not None:
                saga.park(compensation, "still away", at=at)
            case "retry_compensation":
                saga.retry_compensation(at=at)
            case _:
                raise AssertionError(f"unknown command {self}")


def success_event(step: Step, saga_id: str, at: datetime) -> ev.DomainEvent:
    """What the step's action returns (the order saga's events)."""
    if step is Step.CREATE_PRESCRIPTION:
        return ev.PrescriptionCreated(occurred_at=at, saga_id=saga_id, prescription_id=IDS[step])
    if step is Step.RESERVE_INVENTORY:
        return ev.InventoryReserved(
            occurred_at=at, saga_id=saga_id, reservation_id=IDS[step], lines=lines()
        )
    return ev.ShipmentInitiated(
        occurred_at=at,
        saga_id=saga_id,
        shipment_id=IDS[step],
        carrier="simulated-post",
        tracking_number=TRACKING,
    )


def compensation_event(compensation: Compensation, saga_id: str, at: datetime) -> ev.DomainEvent:
    if compensation is Compensation.CANCEL_PRESCRIPTION:
        return ev.PrescriptionCancelled(
            occurred_at=at, saga_id=saga_id, prescription_id=IDS[Step.CREATE_PRESCRIPTION]
        )
    if compensation is Compensation.RELEASE_INVENTORY:
        return ev.InventoryReleased(
            occurred_at=at, saga_id=saga_id, reservation_id=IDS[Step.RESERVE_INVENTORY]
        )
    return ev.ShipmentCancelled(
        occurred_at=at,
        saga_id=saga_id,
        shipment_id=IDS[Step.INITIATE_SHIPMENT],
        tracking_number=TRACKING,
    )


def succeed(step: Step) -> Command:
    return Command("succeed", step)


def attempt_failed(step: Step) -> Command:
    return Command("attempt_failed", step)


def fail(step: Step) -> Command:
    return Command("fail", step)


def compensated(compensation: Compensation) -> Command:
    return Command("compensated", compensation)


def compensation_attempt_failed(compensation: Compensation) -> Command:
    return Command("compensation_attempt_failed", compensation)


def park(compensation: Compensation) -> Command:
    return Command("park", compensation)


COMPLETE = Command("complete")
RETRY_COMPENSATION = Command("retry_compensation")

ALL_COMMANDS: tuple[Command, ...] = (
    *(c(s) for c in (succeed, attempt_failed, fail) for s in STEPS),
    COMPLETE,
    *(c(u) for c in (compensated, compensation_attempt_failed, park) for u in Compensation),
    RETRY_COMPENSATION,
)

PHASE_STATUS = {
    "running": SagaStatus.RUNNING,
    "compensating": SagaStatus.COMPENSATING,
    "parked": SagaStatus.COMPENSATION_FAILED,
    "completed": SagaStatus.COMPLETED,
    "compensated": SagaStatus.COMPENSATED,
}


@dataclass(frozen=True)
class SagaModel:
    """Where a started saga is: its phase, the steps that succeeded, what is left to undo."""

    phase: str = "running"
    succeeded: tuple[Step, ...] = ()
    to_undo: tuple[Compensation, ...] = ()  # next compensation first

    @property
    def status(self) -> SagaStatus:
        return PHASE_STATUS[self.phase]

    def legal(self) -> list[Command]:
        if self.phase == "running" and len(self.succeeded) < len(STEPS):
            step = STEPS[len(self.succeeded)]
            return [succeed(step), attempt_failed(step), fail(step)]
        if self.phase == "running":
            return [COMPLETE]
        if self.phase == "compensating":
            top = self.to_undo[0]
            return [compensated(top), compensation_attempt_failed(top), park(top)]
        if self.phase == "parked":
            return [RETRY_COMPENSATION]
        return []

    def after(self, command: Command) -> SagaModel:
        assert command in self.legal(), (command, self)
        match command.name:
            case "succeed":
                assert isinstance(command.target, Step)
                return replace(self, succeeded=(*self.succeeded, command.target))
            case "fail":
                undo = tuple(UNDO[s] for s in reversed(self.succeeded))
                return replace(self, phase="compensating" if undo else "compensated", to_undo=undo)
            case "complete":
                return replace(self, phase="completed")
            case "compensated":
                rest = self.to_undo[1:]
                return replace(self, phase="compensating" if rest else "compensated", to_undo=rest)
            case "park":
                return replace(self, phase="parked")
            case "retry_compensation":
                return replace(self, phase="compensating")
        return self  # attempt failures change counters, not the phase


def state(saga: Saga) -> dict[str, object]:
    """A deep snapshot of everything the saga knows, minus unsaved-event bookkeeping."""
    return copy.deepcopy(
        {k: v for k, v in vars(saga).items() if k not in ("_pending", "stored_version")}
    )

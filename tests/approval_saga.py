"""A second saga, declared only through the public definition API
(`fulfillment.domain.saga_definition`), to show the engine is not the order saga's.

    hold funds       -> FundsHeld      | FundsHoldFailed     undone by release_funds
    book room        -> RoomBooked     | RoomBookingFailed   undone by cancel_room
    await approval   (a wait) approve: go on; reject: fail, compensate; comment: wait again;
                     no decision within APPROVAL_TIMEOUT_SECONDS: fail (approval_timeout)
    capture (pivot)  -> FundsCaptured: only forward from here

Version 2 (`register_v2`) adds a step, `screen`, before the wait. A worker process loads
this module through FULFILLMENT_SAGA_MODULES=approval_saga (tests/ on its PYTHONPATH).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pydantic

from fulfillment.domain.errors import BusinessRuleViolation, TransientFailure
from fulfillment.domain.events import DomainEvent
from fulfillment.domain.saga_definition import (
    CONTINUE,
    REGISTRY,
    WAIT_AGAIN,
    CompensationSpec,
    RetrySpec,
    SagaDefinition,
    SignalSpec,
    StepSpec,
    WaitSpec,
    fail,
    register,
)
from fulfillment.service_layer.saga_engine import StepContext

NAME = "approval"
#: Amounts above this fail the first step for good (nothing to undo yet).
LIMIT = 1000
TIMEOUT_SECONDS = float(os.environ.get("APPROVAL_TIMEOUT_SECONDS", "3600"))


@dataclass(frozen=True, kw_only=True)
class ApprovalRequested(DomainEvent):
    saga_id: str
    definition_version: int
    amount: int
    room: str


@dataclass(frozen=True, kw_only=True)
class FundsHeld(DomainEvent):
    saga_id: str
    amount: int


@dataclass(frozen=True, kw_only=True)
class FundsHoldFailed(DomainEvent):
    saga_id: str
    reason: str
    error: str


@dataclass(frozen=True, kw_only=True)
class FundsReleased(DomainEvent):
    saga_id: str
    amount: int


@dataclass(frozen=True, kw_only=True)
class RoomBooked(DomainEvent):
    saga_id: str
    room: str


@dataclass(frozen=True, kw_only=True)
class RoomBookingFailed(DomainEvent):
    saga_id: str
    reason: str
    error: str


@dataclass(frozen=True, kw_only=True)
class RoomCancelled(DomainEvent):
    saga_id: str
    room: str


@dataclass(frozen=True, kw_only=True)
class Screened(DomainEvent):
    saga_id: str


@dataclass(frozen=True, kw_only=True)
class ScreeningFailed(DomainEvent):
    saga_id: str
    reason: str
    error: str


@dataclass(frozen=True, kw_only=True)
class FundsCaptured(DomainEvent):
    saga_id: str
    amount: int


class Approve(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    approver: str = pydantic.Field(min_length=1, max_length=200)


class Reject(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    reason: str = pydantic.Field(min_length=1, max_length=200)


class Comment(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    text: str = pydantic.Field(min_length=1, max_length=2000)


class RoomSystemDown(Exception):
    """A room "b-down" answers this: an error `book_room` declares not retried."""


def _request(ctx: StepContext) -> ApprovalRequested:
    started = ctx.saga.started
    assert isinstance(started, ApprovalRequested)
    return started


def hold_funds(ctx: StepContext) -> FundsHeld:
    request = _request(ctx)
    if request.amount > LIMIT:
        raise BusinessRuleViolation("over_limit", f"{request.amount} is over {LIMIT}")
    if request.amount < 0:
        raise TransientFailure("the bank is away")  # retried, then retries_exhausted
    return FundsHeld(occurred_at=ctx.now, saga_id=request.saga_id, amount=request.amount)


def release_funds(ctx: StepContext) -> FundsReleased:
    request = _request(ctx)
    return FundsReleased(occurred_at=ctx.now, saga_id=request.saga_id, amount=request.amount)


def book_room(ctx: StepContext) -> RoomBooked:
    request = _request(ctx)
    if request.room == "b-down":
        raise RoomSystemDown("room system down")
    return RoomBooked(occurred_at=ctx.now, saga_id=request.saga_id, room=request.room)


def cancel_room(ctx: StepContext) -> RoomCancelled:
    request = _request(ctx)
    return RoomCancelled(occurred_at=ctx.now, saga_id=request.saga_id, room=request.room)


def screen(ctx: StepContext) -> Screened:
    return Screened(occurred_at=ctx.now, saga_id=_request(ctx).saga_id)


def capture(ctx: StepContext) -> FundsCaptured:
    request = _request(ctx)
    return FundsCaptured(occurred_at=ctx.now, saga_id=request.saga_id, amount=request.amount)


HOLD = StepSpec(
    "hold_funds",
    action=hold_funds,
    succeeded=FundsHeld,
    failed=FundsHoldFailed,
    compensation=CompensationSpec("release_funds", action=release_funds, recorded_by=FundsReleased),
    retry=RetrySpec(attempts=2, backoff_base_seconds=0.01, backoff_cap_seconds=0.02),
)
BOOK = StepSpec(
    "book_room",
    action=book_room,
    succeeded=RoomBooked,
    failed=RoomBookingFailed,
    compensation=CompensationSpec("cancel_room", action=cancel_room, recorded_by=RoomCancelled),
    retry=RetrySpec(not_retried=(RoomSystemDown,)),
)
AWAIT = WaitSpec(
    "await_approval",
    signals=(
        SignalSpec("approve", Approve, CONTINUE),
        SignalSpec("reject", Reject, fail("rejected")),
        SignalSpec("comment", Comment, WAIT_AGAIN),
    ),
    timeout_seconds=TIMEOUT_SECONDS,
    on_timeout=fail("approval_timeout"),
)
CAPTURE = StepSpec("capture", action=capture, succeeded=FundsCaptured, pivot=True)

V1 = SagaDefinition(
    name=NAME, version=1, started=ApprovalRequested, steps=(HOLD, BOOK, AWAIT, CAPTURE)
)
V2 = SagaDefinition(
    name=NAME,
    version=2,
    started=ApprovalRequested,
    steps=(
        HOLD,
        BOOK,
        StepSpec("screen", action=screen, succeeded=Screened, failed=ScreeningFailed),
        AWAIT,
        CAPTURE,
    ),
)

register(V1)


def register_v2() -> SagaDefinition:
    """Deploy version 2: new sagas start under it, those started under v1 stay on v1."""
    return register(V2)


def newest() -> int:
    return REGISTRY.get(NAME).version


if os.environ.get("APPROVAL_SAGA_V2") == "1":
    register_v2()

"""The saga engine: the handlers that run any saga's jobs, signals and timers, reading
what to do from the saga's definition (`fulfillment.domain.saga_definition`).

Each handler checks the saga's state before acting, so a late or duplicate job is
harmless: it finds nothing to do and only consumes its job. A step's action runs in the
transaction that records its event, that consumes its job and that enqueues the next
one (docs/architecture.md, rule 1); its `prepare`, when it has one, runs before, outside
any transaction, and only when the step is due.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

import pydantic

from fulfillment.domain.errors import (
    BusinessRuleViolation,
    DeadlineExceeded,
    DomainError,
    IllegalTransition,
    TransientFailure,
)
from fulfillment.domain.events import DomainEvent
from fulfillment.domain.saga import CancellationAccepted, Saga
from fulfillment.domain.saga_definition import (
    REGISTRY,
    Outcome,
    SagaDefinition,
    SignalSpec,
    StepSpec,
    WaitSpec,
)
from fulfillment.domain.status import FailureReason, SagaStatus
from fulfillment.service_layer import commands as c
from fulfillment.service_layer.messagebus import ConcurrencyError
from fulfillment.service_layer.ports import Carrier, Clock, IdempotencyRecord
from fulfillment.service_layer.retry import RetryPolicy
from fulfillment.service_layer.unit_of_work import AbstractUnitOfWork

T = TypeVar("T")


class NotFound(DomainError):
    """The order or saga does not exist."""


class IdempotencyKeyReused(DomainError):
    """An `Idempotency-Key` already stored for a request with a different body."""


class InvalidSignalPayload(DomainError):
    """A signal's body does not match its schema: nothing changes (422)."""

    def __init__(self, message: str, errors: list[dict[str, Any]]) -> None:
        super().__init__(message)
        self.errors = errors


class UnknownSignal(NotFound):
    """No wait of the saga's definition declares a signal of that name."""


class Forbidden(DomainError):
    """The sender's role may not send this signal (403)."""


@dataclass(frozen=True)
class Timeouts:
    step_seconds: float = 900.0
    saga_seconds: float = 3600.0
    #: Configured timeouts of waits, by wait name (else each wait's own).
    waits: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EngineDeps:
    """What the engine and the steps' actions are given (wired once, by bootstrap)."""

    clock: Clock
    carrier: Carrier
    retry: RetryPolicy
    timeouts: Timeouts = Timeouts()
    #: Which orders a pharmacist verifies: `controlled` (a line's SKU has a DEA
    #: schedule), `all` or `none` (FULFILLMENT_VERIFICATION_REQUIRED_FOR).
    verification_required_for: str = "controlled"
    min_shelf_life_days: int = 30


@dataclass
class StepContext:
    """What an action (or a `prepare`, or a definition's `settle`) is given: the saga
    as it is, the unit of work whose transaction records the step (its service ports),
    the time, the outside world, and what `prepare` returned."""

    saga: Saga
    uow: AbstractUnitOfWork
    now: datetime
    deps: EngineDeps
    prepared: Any = None
    #: A signal's validated payload (its schema's model) and who sent it, for its `record`.
    payload: Any = None
    sender: str | None = None

    def skip(self, wait: WaitSpec) -> DomainEvent | None:
        """The wait's `skip` in this context (what the saga asks as it reaches a wait)."""
        return wait.skip(self) if wait.skip is not None else None

    @property
    def today(self) -> date:
        return self.now.date()

    @property
    def carrier(self) -> Carrier:
        return self.deps.carrier


class FailureHandled(StrEnum):
    """What recording a job's failure did."""

    FAILED = "failed"  # the step failed for good: compensating
    RETRYING = "retrying"  # the attempt is recorded; the job runs again after a backoff
    IGNORED = "ignored"  # the saga had moved on (a late or duplicate job)


def load(uow: AbstractUnitOfWork, saga_id: str) -> Saga:
    saga = uow.sagas.get(saga_id)
    if saga is None:
        raise NotFound(f"saga {saga_id} not found")
    return saga


def settle_if_ended(ctx: StepContext) -> None:
    """A saga that this transaction ended lets its definition settle, in it."""
    saga = ctx.saga
    settle = saga.spec.settle
    ended = saga.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED)
    if settle is not None and ended and saga.pending_events:
        settle(ctx)


def step_deadline_seconds(step: StepSpec, timeouts: Timeouts) -> float:
    """The step's own deadline, else the configured one (FULFILLMENT_STEP_TIMEOUT_SECONDS)."""
    return step.deadline_seconds if step.deadline_seconds is not None else timeouts.step_seconds


def check_deadlines(saga: Saga, step: StepSpec, now: datetime, timeouts: Timeouts) -> None:
    # The saga's deadline bounds its own work: time spent waiting for the outside world
    # (a pharmacist, the carrier's pickup) has its own timeouts and does not count.
    if saga.deadline_at is not None and now > saga.deadline_at + saga.waited:
        raise DeadlineExceeded(
            FailureReason.SAGA_TIMEOUT, f"saga deadline {saga.deadline_at + saga.waited} passed"
        )
    seconds = step_deadline_seconds(step, timeouts)
    started = saga.step_started_at(step.name)
    if started is not None and now > started + timedelta(seconds=seconds):
        raise DeadlineExceeded(
            FailureReason.STEP_TIMEOUT, f"step {step.name} exceeded {seconds:g}s"
        )


def _guarded(step: StepSpec, call: Any, ctx: StepContext) -> Any:
    """Run the step's prepare or action; an error it declares not retried fails it."""
    try:
        return call(ctx)
    except (BusinessRuleViolation, TransientFailure):
        raise
    except step.retry.not_retried as exc:
        raise BusinessRuleViolation(
            FailureReason.NOT_RETRIED, f"{type(exc).__name__}: {exc}"
        ) from exc


# --- running a job ----------------------------------------------------------------------


def run_saga_job(cmd: c.RunSagaJob, uow: AbstractUnitOfWork, deps: EngineDeps) -> None:
    """Run the job `cmd.kind` of the saga: a step, a wait's timer or a compensation.

    One transaction, unless the job's step or compensation has a `prepare`: then a look
    first decides whether it is due, and the outside call runs between the two.
    """
    prepared: Any = None
    prepare_ran = False
    if REGISTRY.prepares(cmd.kind):
        with uow.read_only():
            prepare = _due_prepare(load(uow, cmd.saga_id), cmd.kind, uow, deps)
        # The outside call happens outside any transaction: it may be slow, and it is
        # idempotent by key, so a crash between the call and the commit does it once.
        if prepare is not None:
            prepared, prepare_ran = prepare(), True
    # Not due (a late or duplicate job, or a stale look): the transaction reads the saga
    # afresh, finds nothing to do and consumes the job; a stale cache fails its commit.
    with uow:
        saga = load(uow, cmd.saga_id)
        definition = saga.spec
        kind = definition.kind_of(cmd.kind)
        now = deps.clock.now()
        ctx = StepContext(saga, uow, now, deps, prepared)
        if kind == "step":
            step = definition.step(cmd.kind)
            if not saga.awaits(step.name):
                pass
            elif step.prepare is None and saga.honour_cancellation(now):
                pass  # cancelled before this step began: it does not run
            elif prepare_ran or step.prepare is None:
                if not prepare_ran:
                    check_deadlines(saga, step, now, deps.timeouts)
                assert step.action is not None
                event = _guarded(step, step.action, ctx)
                # A step with an outside call always records it, even when a
                # cancellation came first (a crash or a conflict may have hidden that
                # the call was made): the cancellation then takes effect after the step,
                # and its compensation undoes the call. The call is idempotent by key.
                saga.succeed(step.name, event, timeouts=deps.timeouts.waits, skip=ctx.skip)
        elif kind == "compensation":
            compensation = definition.compensation(cmd.kind)
            # Recorded only if this job made the outside call (a late duplicate records
            # nothing).
            due = saga.next_compensation == compensation.name
            if due and (prepare_ran or compensation.prepare is None):
                assert compensation.action is not None
                saga.record_compensated(compensation.name, compensation.action(ctx))
        elif kind == "wait":
            # The job row's due time is the timer: its timeout outcome applies, once; a
            # saga that has left the wait changes nothing.
            current = saga.waiting
            if current is not None and current.name == cmd.kind:
                saga.time_out(cmd.kind, at=now, timeouts=deps.timeouts.waits, skip=ctx.skip)
        else:
            raise LookupError(f"saga {definition.name} v{definition.version} has no job {cmd.kind}")
        settle_if_ended(ctx)
        uow.commit()


def _due_prepare(
    saga: Saga, kind: str, uow: AbstractUnitOfWork, deps: EngineDeps
) -> Callable[[], Any] | None:
    """The call to make before the job's transaction, if the job is due and has one."""
    definition = saga.spec
    what = definition.kind_of(kind)
    now = deps.clock.now()
    ctx = StepContext(saga, uow, now, deps)
    if what == "step" and saga.awaits(kind):
        step = definition.step(kind)
        step_prepare = step.prepare
        if step_prepare is None:
            return None
        check_deadlines(saga, step, now, deps.timeouts)
        return lambda: _guarded(step, step_prepare, ctx)
    if what == "compensation" and saga.next_compensation == kind:
        prepare = definition.compensation(kind).prepare
        return (lambda: prepare(ctx)) if prepare is not None else None
    return None


# --- failures ---------------------------------------------------------------------------


def record_job_failure(
    cmd: c.RecordJobFailure, uow: AbstractUnitOfWork, deps: EngineDeps
) -> FailureHandled:
    """A step or compensation raised: retry it after a backoff, fail it for good (a step
    before the pivot), or park the saga (a compensation out of attempts)."""
    with uow:
        saga = load(uow, cmd.saga_id)
        kind = saga.spec.kind_of(cmd.kind)
        handled = FailureHandled.IGNORED
        now = deps.clock.now()
        if kind == "step" and saga.awaits(cmd.kind):
            step = saga.spec.step(cmd.kind)
            # (A step with an outside call is retried: whether the failed attempt's call
            # took effect is unknown, and only its recorded success gets it undone.)
            if step.prepare is None and saga.honour_cancellation(now):
                # The attempt ended; the requested cancellation takes effect instead of
                # a retry.
                handled = FailureHandled.FAILED
            else:
                handled = _step_failed(saga, step, cmd, now, deps)
        elif kind == "compensation" and saga.next_compensation == cmd.kind:
            handled = _compensation_failed(saga, cmd, now, deps)
        settle_if_ended(StepContext(saga, uow, now, deps))
        uow.commit()
    return handled


def _policy(step: StepSpec, default: RetryPolicy) -> RetryPolicy:
    """The step's retry policy: its own declarations over the configured default."""
    spec = step.retry
    declared = (spec.attempts, spec.backoff_base_seconds, spec.backoff_cap_seconds)
    if all(value is None for value in declared):
        return default
    return RetryPolicy(
        max_attempts=_or(spec.attempts, default.max_attempts),
        base_seconds=_or(spec.backoff_base_seconds, default.base_seconds),
        cap_seconds=_or(spec.backoff_cap_seconds, default.cap_seconds),
        rng=default.rng,
    )


def _or(value: T | None, default: T) -> T:
    return value if value is not None else default


def _step_failed(
    saga: Saga, step: StepSpec, cmd: c.RecordJobFailure, now: datetime, deps: EngineDeps
) -> FailureHandled:
    retry = _policy(step, deps.retry)
    attempt = saga.attempts(step.name) + 1
    forward_only = saga.spec.forward_only(step.name)
    if not forward_only and (cmd.reason is not None or retry.exhausted(attempt)):
        reason = cmd.reason or FailureReason.RETRIES_EXHAUSTED.value
        saga.fail_step(step.name, reason, cmd.error, at=now)
        return FailureHandled.FAILED
    delay = retry.delay(attempt, at_least=cmd.retry_after_seconds)
    # A step's deadline is a due time too: the retry runs no later than it, and fails.
    started = saga.step_started_at(step.name)
    seconds = step_deadline_seconds(step, deps.timeouts)
    if not forward_only and started is not None:
        delay = max(0.0, min(delay, (started + timedelta(seconds=seconds) - now).total_seconds()))
    saga.record_attempt_failed(step.name, cmd.error, retry_in_seconds=delay, at=now)
    return FailureHandled.RETRYING


def _compensation_failed(
    saga: Saga, cmd: c.RecordJobFailure, now: datetime, deps: EngineDeps
) -> FailureHandled:
    attempt = saga.compensation_attempts(cmd.kind) + 1
    retry = _policy(saga.spec.undone_by(cmd.kind), deps.retry)
    if retry.exhausted(attempt):
        saga.park(cmd.kind, cmd.error, at=now)
    else:
        saga.record_compensation_attempt_failed(
            cmd.kind,
            cmd.error,
            retry_in_seconds=retry.delay(attempt, at_least=cmd.retry_after_seconds),
            at=now,
        )
    return FailureHandled.RETRYING


# --- signals ----------------------------------------------------------------------------


def signal_spec(definition: SagaDefinition, saga: Saga | None, name: str) -> SignalSpec:
    """The signal `name` as the saga's current wait declares it, else as the first wait
    of its definition that does; UnknownSignal when none does."""
    waiting = saga.waiting if saga is not None else None
    found = waiting.signal(name) if waiting is not None else None
    if found is None:
        found = next(
            (
                s
                for w in definition.steps
                if isinstance(w, WaitSpec)
                for s in w.signals
                if s.name == name
            ),
            None,
        )
    if found is None:
        raise UnknownSignal(f"saga {definition.name} has no signal named {name!r}")
    return found


def validate_payload(signal: SignalSpec, payload: Any) -> Any:
    """The payload as the signal's pydantic model (InvalidSignalPayload otherwise)."""
    try:
        return signal.schema.model_validate(payload)
    except pydantic.ValidationError as exc:
        # Without the input: it may be large, or a patient's name.
        errors = [
            {"loc": ["body", *e["loc"]], "message": e["msg"], "type": e["type"]}
            for e in exc.errors()
        ]
        raise InvalidSignalPayload(f"invalid payload for signal {signal.name}", errors) from exc


@dataclass(frozen=True)
class SignalAccepted:
    """A delivered signal: where it led (`continue`, `fail`, `wait`); `replayed` when an
    `Idempotency-Key` had delivered it already (this is the first delivery's answer)."""

    saga_id: str
    signal: str
    outcome: str
    replayed: bool = False

    def as_dict(self) -> dict[str, str]:
        return {"saga_id": self.saga_id, "signal": self.signal, "outcome": self.outcome}


def replayed(
    uow: AbstractUnitOfWork, idempotency: IdempotencyRecord | None
) -> IdempotencyRecord | None:
    """The record an `Idempotency-Key` already stored (a replay), or None (a first
    request); IdempotencyKeyReused when it was stored for another request body."""
    if idempotency is None:
        return None
    stored = uow.idempotency.get(idempotency.key)
    if stored is not None and stored.request_hash != idempotency.request_hash:
        raise IdempotencyKeyReused(
            "this Idempotency-Key was already used with a different request body"
        )
    return stored


def signal_saga(cmd: c.SignalSaga, uow: AbstractUnitOfWork, deps: EngineDeps) -> SignalAccepted:
    """Deliver a signal to the saga's wait, in one transaction: its event (with the
    sender in the metadata), the outcome, and the saga's next job, which replaces the
    wait's timer. SignalNotExpected (409) when the saga does not wait for it."""
    with uow:
        stored = replayed(uow, cmd.idempotency)
        if stored is not None:
            first = stored.response
            return SignalAccepted(first["saga_id"], first["signal"], first["outcome"], True)
        saga = load(uow, cmd.saga_id)
        outcome = deliver_signal(
            saga, uow, deps, cmd.signal, cmd.payload, sender=cmd.sender, role=cmd.role
        )
        accepted = SignalAccepted(saga.id, cmd.signal, outcome.kind)
        if cmd.idempotency is not None:
            uow.idempotency.add(dataclasses.replace(cmd.idempotency, response=accepted.as_dict()))
        uow.commit()
    return accepted


def deliver_signal(
    saga: Saga,
    uow: AbstractUnitOfWork,
    deps: EngineDeps,
    signal: str,
    payload: Any,
    *,
    sender: str,
    role: str = "admin",
) -> Outcome:
    """Deliver a signal to the saga's wait inside the caller's transaction: checked
    (role, payload, the saga waits for it), recorded with the event its `record`
    returns, the wait's timer cancelled; the saga settles if this ended it."""
    spec = signal_spec(saga.spec, saga, signal)
    if spec.roles is not None and role not in spec.roles:
        allowed = " or ".join(sorted(spec.roles))
        raise Forbidden(f"only a key with the role {allowed} may send {signal!r}")
    model = validate_payload(spec, payload)
    saga.check_signal(signal)
    outcome = spec.decide(model)
    now = deps.clock.now()
    ctx = StepContext(saga, uow, now, deps, payload=model, sender=sender)
    recorded = spec.record(ctx) if spec.record is not None else None
    saga.receive_signal(
        signal,
        model.model_dump(mode="json"),
        outcome,
        at=now,
        timeouts=deps.timeouts.waits,
        recorded=recorded,
        skip=ctx.skip,
    )
    # The wait's timer (if any) makes way for the job the signal leads to.
    uow.jobs.cancel(saga.id)
    uow.sender = sender
    settle_if_ended(ctx)
    return outcome


def _scoped(kind: str, sender: str, *parts: str) -> str:
    """The stored form of a client's `Idempotency-Key`: scoped to its sender (the API
    key's name, or `anonymous`) and to what it names, hashed (it fits the keys' column,
    one kind never meets another's, and no client's key is kept as sent)."""
    return f"{kind}:" + hashlib.sha256("\x00".join((sender, *parts)).encode()).hexdigest()


def order_idempotency(
    sender: str, key: str, body_hash: str, order_id: str, response: dict[str, Any]
) -> IdempotencyRecord:
    """The stored form of an order's `Idempotency-Key`, scoped to its sender: one key
    sent under two API keys is two keys."""
    return IdempotencyRecord(_scoped("order", sender, key), body_hash, order_id, response)


def cancel_idempotency(saga_id: str, key: str, body_hash: str, *, sender: str) -> IdempotencyRecord:
    """The stored form of a cancellation's `Idempotency-Key`, scoped to its sender and
    the saga."""
    return IdempotencyRecord(_scoped("cancel", sender, saga_id, key), body_hash, saga_id, {})


def signal_idempotency(
    saga_id: str, signal: str, key: str, body_hash: str, *, sender: str
) -> IdempotencyRecord:
    """The stored form of a signal's `Idempotency-Key`: scoped to its sender, the saga
    and the signal."""
    return IdempotencyRecord(
        _scoped("signal", sender, saga_id, signal, key), body_hash, saga_id, {}
    )


# --- cancellation -----------------------------------------------------------------------


def cancel_saga(
    cmd: c.CancelSaga, uow: AbstractUnitOfWork, deps: EngineDeps
) -> CancellationAccepted:
    """Record the request to stop, in one transaction. When the saga waits, or no job of
    it is in progress (none, or dead), it compensates at once: its job makes way for the
    first compensation. Otherwise the job of its step in progress honours the request
    when that step ends. TooLateToCancel (409) after the pivot or once the saga ended.
    With an `Idempotency-Key` already stored: `REPLAYED`, nothing done."""
    with uow:
        if replayed(uow, cmd.idempotency) is not None:
            return CancellationAccepted.REPLAYED
        saga = load(uow, cmd.saga_id)
        job = uow.jobs.get(saga.id) if saga.waiting is None else None
        idle = saga.waiting is not None or job is None or job.dead
        now = deps.clock.now()
        accepted = saga.request_cancellation(
            cmd.reason, by=cmd.sender, note=cmd.note, at=now, now=idle
        )
        if accepted is CancellationAccepted.NOW:
            uow.jobs.cancel(saga.id)
        if cmd.idempotency is not None:
            uow.idempotency.add(cmd.idempotency)
        uow.sender = cmd.sender
        settle_if_ended(StepContext(saga, uow, now, deps))
        uow.commit()
    return accepted


# --- starting ---------------------------------------------------------------------------


def start_saga(cmd: c.StartSaga, uow: AbstractUnitOfWork, deps: EngineDeps) -> str:
    """Start a saga of the registered definition `cmd.name` (its newest version) with
    `cmd.data` as its start event's fields."""
    definition = REGISTRY.get(cmd.name, cmd.version)
    with uow:
        if uow.sagas.get(cmd.saga_id) is not None:
            raise DomainError(f"saga {cmd.saga_id} already exists")
        now = deps.clock.now()
        fields: dict[str, Any] = {
            "occurred_at": now,
            "saga_id": cmd.saga_id,
            "definition_version": definition.version,
        }
        if "deadline_at" in {f.name for f in dataclasses.fields(definition.started)}:
            fields["deadline_at"] = now + timedelta(seconds=deps.timeouts.saga_seconds)
        try:
            started: DomainEvent = definition.started(**fields, **cmd.data)
        except TypeError as exc:
            raise DomainError(f"cannot start saga {definition.name}: {exc}") from exc
        uow.sagas.add(Saga.start(definition, started, timeouts=deps.timeouts.waits))
        uow.commit()
    return cmd.saga_id


# --- operators --------------------------------------------------------------------------


@dataclass(frozen=True)
class Resumed:
    """What `ResumeSaga` did: revived the dead job `name` (`what="job"`), or retried the
    parked compensation `name` (`what="compensation"`)."""

    what: str
    name: str


class NothingToResume(IllegalTransition):
    """The saga waits for no operator: it runs, or has ended."""


def resume_saga(cmd: c.ResumeSaga, uow: AbstractUnitOfWork, deps: EngineDeps) -> Resumed:
    with uow:
        saga = load(uow, cmd.saga_id)
        job = uow.jobs.get(saga.id)
        if job is not None and job.dead:
            if not uow.jobs.revive(saga.id):
                raise ConcurrencyError(f"the dead job of saga {saga.id} changed meanwhile")
            resumed = Resumed("job", job.kind)
        elif saga.status is SagaStatus.COMPENSATION_FAILED:
            saga.retry_compensation(at=deps.clock.now())
            resumed = Resumed("compensation", saga.compensation_stack[-1])
        else:
            status = saga.status.value if saga.status else "not started"
            with_job = f" with its job {job.status}" if job is not None else ""
            raise NothingToResume(f"saga {saga.id} is {status}{with_job}: nothing to retry")
        uow.commit()
    return resumed

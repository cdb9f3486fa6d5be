"""The saga aggregate: which steps ran, what must be undone, and how it ends, for any
saga type (`fulfillment.domain.saga_definition`).

Its state is derived only from its events, read through the definition the saga
started under (its first event names it, with its version). Each step that succeeds
pushes its compensation on a stack; when a step or a wait fails for good, or a
cancellation takes effect, the stack is popped last in, first out. A saga whose steps
and waits have all succeeded is completed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, TypeVar

from fulfillment.domain.aggregate import Aggregate
from fulfillment.domain.errors import IllegalTransition
from fulfillment.domain.events import (
    CompensationAttemptFailed,
    DomainEvent,
    SagaCompensationFailed,
    SagaCompensationRetried,
    SagaCompensationStarted,
    SagaSignalReceived,
    SagaStepAttemptFailed,
    SagaWaitStarted,
    SagaWaitTimedOut,
)
from fulfillment.domain.saga_definition import (
    REGISTRY,
    Outcome,
    SagaDefinition,
    StepSpec,
    WaitSpec,
    at_or_none,
    resolve_timeout,
)
from fulfillment.domain.status import SagaStatus, StepStatus

E = TypeVar("E", bound=DomainEvent)
#: Configured wait timeouts by wait name (FULFILLMENT_*_TIMEOUT_SECONDS), or None.
WaitTimeouts = Mapping[str, float] | None
#: What the saga asks as it reaches a wait: an event that passes it at once (its
#: `skip` said there is nothing to wait for), or None. Given by the engine, which has
#: the wait's context.
Skip = Callable[[WaitSpec], DomainEvent | None] | None


class SignalNotExpected(IllegalTransition):
    """The saga is not waiting for this signal (any more): nothing changes (409)."""


class TooLateToCancel(IllegalTransition):
    """The saga has passed its pivot (the parcel was picked up) or has ended (409)."""


class CancellationAccepted(StrEnum):
    """What a cancellation request did."""

    NOW = "now"  # the saga compensates from this transaction on
    AFTER_STEP = "after_step"  # recorded: the saga compensates after its step in progress
    ALREADY = "already"  # a request was recorded before, or the saga compensates already
    REPLAYED = "replayed"  # the same Idempotency-Key again: its first answer stands


@dataclass
class StepState:
    """A step's or a wait's progress (a wait: `waiting`, then `succeeded` or `failed`)."""

    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    errors: list[str] = field(default_factory=list)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    #: When the next attempt is due (after a transient failure), or the wait's timeout.
    due_at: datetime | None = None
    compensation_attempts: int = 0
    compensated_at: datetime | None = None
    compensation_due_at: datetime | None = None
    signals: list[str] = field(default_factory=list)


class Saga(Aggregate):
    stream_prefix = "saga"

    def __init__(self, aggregate_id: str) -> None:
        super().__init__(aggregate_id)
        self.definition: SagaDefinition | None = None
        self.status: SagaStatus | None = None
        self.started: DomainEvent | None = None
        self.started_at: datetime | None = None
        self.deadline_at: datetime | None = None
        self.finished_at: datetime | None = None
        self.steps: dict[str, StepState] = {}
        self.results: dict[str, DomainEvent] = {}
        self.compensation_stack: list[str] = []
        self.compensated: list[DomainEvent] = []
        self.failed_step: str | None = None
        self.failure_reason: str | None = None
        self.parked_error: str | None = None
        #: The request to stop that the saga honours at its next step boundary, if any.
        self.cancellation: DomainEvent | None = None
        #: Events of the definition recorded at its waits (a skip's, a signal's), by type.
        self.recorded: dict[str, DomainEvent] = {}
        self._current = 0  # index of the first element not succeeded
        self._elements: tuple[StepSpec | WaitSpec, ...] = ()  # the definition's steps

    # --- starting -------------------------------------------------------------

    @classmethod
    def start(
        cls, definition: SagaDefinition, started: DomainEvent, *, timeouts: WaitTimeouts = None
    ) -> Saga:
        """A saga of `definition`, started by its `started` event (its saga_id is the id)."""
        if not isinstance(started, definition.started):
            raise TypeError(f"saga {definition.name} starts with {definition.started.__name__}")
        if getattr(started, "definition_version") != definition.version:  # noqa: B009
            raise ValueError(f"{type(started).__name__} names another version")
        saga = cls(getattr(started, "saga_id"))  # noqa: B009
        saga._record(started)
        saga._enter(started.occurred_at, timeouts)
        return saga

    # --- queries --------------------------------------------------------------

    @property
    def spec(self) -> SagaDefinition:
        assert self.definition is not None, "a saga is defined by its first event"
        return self.definition

    @property
    def current(self) -> StepSpec | WaitSpec | None:
        """The step to run, or the wait the saga is in, while it runs; else None."""
        if self.status is not SagaStatus.RUNNING or self._current >= len(self._elements):
            return None
        return self._elements[self._current]

    @property
    def next_step(self) -> str | None:
        """The step to run now (not a wait), or None."""
        current = self.current
        return current.name if isinstance(current, StepSpec) else None

    @property
    def waiting(self) -> WaitSpec | None:
        """The wait the saga is in, or None."""
        current = self.current
        return current if isinstance(current, WaitSpec) else None

    @property
    def next_compensation(self) -> str | None:
        if self.status is not SagaStatus.COMPENSATING or not self.compensation_stack:
            return None
        return self.compensation_stack[-1]

    @property
    def next_job(self) -> tuple[str, datetime | None] | None:
        """The job this saga needs now, with when it is due (None: at once), or None
        (ended, parked, or waiting without a timeout)."""
        current = self.current
        if current is not None:
            state = self.steps[current.name]
            if isinstance(current, WaitSpec) and state.due_at is None:
                return None
            return current.name, state.due_at
        compensation = self.next_compensation
        if compensation is not None:
            step = self.spec.undone_by(compensation)
            return compensation, self.steps[step.name].compensation_due_at
        return None

    def awaits(self, step: str) -> bool:
        return self.next_step == step

    def attempts(self, step: str) -> int:
        return self.steps[step].attempts

    def compensation_attempts(self, compensation: str) -> int:
        return self.steps[self.spec.undone_by(compensation).name].compensation_attempts

    def attempt_of(self, job_kind: str) -> int | None:
        """Which try a job of this kind is (1 for the first), None for an unknown kind."""
        kind = self.spec.kind_of(job_kind)
        if kind == "compensation":
            return self.compensation_attempts(job_kind) + 1
        return self.attempts(job_kind) + 1 if kind is not None else None

    def step_started_at(self, step: str) -> datetime | None:
        return self.steps[step].started_at

    def result(self, event_type: type[E]) -> E | None:
        """The success event of that type this saga recorded (a step's, or one recorded
        at a wait), if any."""
        for event in self.results.values():
            if isinstance(event, event_type):
                return event
        found = self.recorded.get(event_type.__name__)
        return found if isinstance(found, event_type) else None

    @property
    def waited(self) -> timedelta:
        """How long the saga has spent in its waits (ended ones)."""
        total = timedelta()
        for element in self._elements:
            state = self.steps[element.name]
            if isinstance(element, WaitSpec) and state.started_at and state.finished_at:
                total += state.finished_at - state.started_at
        return total

    @property
    def cancellation_reason(self) -> str | None:
        return getattr(self.cancellation, "reason", None) if self.cancellation else None

    def was_compensated(self, event_type: type[DomainEvent]) -> bool:
        return any(isinstance(e, event_type) for e in self.compensated)

    # --- guards ---------------------------------------------------------------

    def check_awaits(self, step: str) -> None:
        if not self.awaits(step):
            raise IllegalTransition(
                f"saga {self.id} does not await {step} "
                f"(status {self.status}, next {self.next_step})"
            )

    def check_compensating(self, compensation: str) -> None:
        if self.next_compensation != compensation:
            raise IllegalTransition(
                f"saga {self.id} is not compensating {compensation} "
                f"(status {self.status}, stack {self.compensation_stack})"
            )

    def check_signal(self, signal: str) -> WaitSpec:
        wait = self.waiting
        if wait is not None and wait.signal(signal) is not None:
            return wait
        if wait is not None:
            expected = ", ".join(s.name for s in wait.signals)
            where = f"waits at {wait.name} for {expected}"
        elif self.next_step is not None:
            where = f"is running its step {self.next_step}, waiting for no signal"
        else:
            where = f"is {self.status or 'not started'}, waiting for no signal"
        raise SignalNotExpected(f"saga {self.id} {where}: {signal!r} is not expected now")

    # --- forward steps --------------------------------------------------------

    def succeed(
        self, step: str, event: DomainEvent, *, timeouts: WaitTimeouts = None, skip: Skip = None
    ) -> None:
        """Record the step's success event (what its action returned)."""
        self.check_awaits(step)
        expected = self.spec.step(step).succeeded
        if not isinstance(event, expected):
            raise TypeError(f"step {step} succeeds with {expected.__name__}")
        self._record(event)
        self._enter(event.occurred_at, timeouts, skip)

    def record_attempt_failed(
        self, step: str, error: str, *, retry_in_seconds: float, at: datetime
    ) -> None:
        """A transient failure: the step will be tried again."""
        self.check_awaits(step)
        self._record(
            SagaStepAttemptFailed(
                occurred_at=at,
                saga_id=self.id,
                step=step,
                attempt=self.attempts(step) + 1,
                error=error,
                retry_in_seconds=retry_in_seconds,
            )
        )

    def fail_step(self, step: str, reason: str, error: str, *, at: datetime) -> None:
        """The step failed for good: record it and start compensating, LIFO."""
        self.check_awaits(step)
        failed = self.spec.step(step).failed
        if failed is None:
            raise IllegalTransition(f"step {step} only goes forward: it cannot fail")
        self._record(failed(occurred_at=at, saga_id=self.id, reason=reason, error=error))  # type: ignore[call-arg]
        self._start_compensating(step, reason, at)

    def _start_compensating(self, step: str, reason: str, at: datetime) -> None:
        self._record(
            SagaCompensationStarted(
                occurred_at=at,
                saga_id=self.id,
                failed_step=step,
                reason=reason,
                compensations=tuple(reversed(self.compensation_stack)),
            )
        )

    def _enter(self, at: datetime, timeouts: WaitTimeouts, skip: Skip = None) -> None:
        """The saga reached its next element: a cancellation requested meanwhile takes
        effect; a wait is passed at once when `skip` gives its event, else entering it
        is recorded, with its timeout."""
        if self.honour_cancellation(at):
            return
        wait = self.waiting
        while wait is not None and self.steps[wait.name].status is StepStatus.PENDING:
            passed = skip(wait) if skip is not None and wait.skip is not None else None
            if passed is not None:
                self._record(passed)  # applying it passes the wait
                wait = self.waiting
                continue
            timeout_at = at_or_none(at, resolve_timeout(wait, timeouts))
            self._record(
                SagaWaitStarted(
                    occurred_at=at, saga_id=self.id, wait=wait.name, timeout_at=timeout_at
                )
            )
            return

    # --- cancellation ---------------------------------------------------------

    @property
    def cancellable(self) -> bool:
        """Running before its pivot (or compensating already)."""
        if self.status is SagaStatus.COMPENSATING:
            return True
        current = self.current
        return current is not None and not self.spec.forward_only(current.name)

    def request_cancellation(
        self, reason: str, *, by: str, note: str | None, at: datetime, now: bool
    ) -> CancellationAccepted:
        """Ask the saga to stop. It takes effect at once when `now` (the saga waits, or
        no job of it is in progress) or at its next step boundary; TooLateToCancel after
        the pivot or once it ended. A second request changes nothing."""
        cancellation = self.spec.cancellation
        if cancellation is None:
            raise TooLateToCancel(f"saga {self.spec.name} cannot be cancelled")
        if not self.cancellable:
            status = self.status.value if self.status else "not started"
            where = f"has ended ({status})"
            current = self.current
            if current is not None:
                where = f"is past its point of no return (at {current.name})"
            raise TooLateToCancel(f"too late to cancel: saga {self.id} {where}")
        if self.status is SagaStatus.COMPENSATING or self.cancellation is not None:
            return CancellationAccepted.ALREADY
        self._record(
            cancellation(occurred_at=at, saga_id=self.id, reason=reason, by=by, note=note)  # type: ignore[call-arg]
        )
        if now or self.waiting is not None:
            self.honour_cancellation(at)
            return CancellationAccepted.NOW
        return CancellationAccepted.AFTER_STEP

    def honour_cancellation(self, at: datetime) -> bool:
        """A requested cancellation takes effect here, before the saga's current element
        (still before the pivot): the saga compensates. False when there is none."""
        reason = self.cancellation_reason
        current = self.current
        if reason is None or current is None or self.spec.forward_only(current.name):
            return False
        self._start_compensating(current.name, reason, at)
        return True

    # --- waits ----------------------------------------------------------------

    def receive_signal(
        self,
        signal: str,
        payload: dict[str, Any],
        outcome: Outcome,
        *,
        at: datetime,
        timeouts: WaitTimeouts = None,
        recorded: DomainEvent | None = None,
        skip: Skip = None,
    ) -> None:
        """A signal the wait accepts (SignalNotExpected otherwise), its outcome, and the
        event of the definition's own the signal records (its `record`), if any."""
        wait = self.check_signal(signal)
        if recorded is not None and type(recorded) not in wait.records:
            raise TypeError(f"wait {wait.name} records no {type(recorded).__name__}")
        self._record(
            SagaSignalReceived(
                occurred_at=at,
                saga_id=self.id,
                wait=wait.name,
                signal=signal,
                payload=payload,
                outcome=outcome.kind,
                reason=outcome.reason,
            )
        )
        if recorded is not None:
            self._record(recorded)
        self._after_wait(wait, outcome, at, timeouts, skip)

    def time_out(
        self, wait: str, *, at: datetime, timeouts: WaitTimeouts = None, skip: Skip = None
    ) -> None:
        """The wait's timer fired: its timeout outcome applies."""
        current = self.waiting
        if current is None or current.name != wait:
            raise IllegalTransition(f"saga {self.id} does not wait at {wait}")
        outcome = current.on_timeout
        self._record(
            SagaWaitTimedOut(
                occurred_at=at,
                saga_id=self.id,
                wait=wait,
                outcome=outcome.kind,
                reason=outcome.reason,
            )
        )
        self._after_wait(current, outcome, at, timeouts, skip)

    def _after_wait(
        self, wait: WaitSpec, outcome: Outcome, at: datetime, timeouts: WaitTimeouts, skip: Skip
    ) -> None:
        if outcome.kind == "fail":
            assert outcome.reason is not None
            self._start_compensating(wait.name, outcome.reason, at)
        elif outcome.kind == "continue":
            self._enter(at, timeouts, skip)

    # --- compensations --------------------------------------------------------

    def record_compensated(self, compensation: str, event: DomainEvent) -> None:
        """Record the compensation's event (what its action returned)."""
        self.check_compensating(compensation)
        expected = self.spec.compensation(compensation).recorded_by
        if not isinstance(event, expected):
            raise TypeError(f"compensation {compensation} is recorded by {expected.__name__}")
        self._record(event)

    def record_compensation_attempt_failed(
        self, compensation: str, error: str, *, retry_in_seconds: float, at: datetime
    ) -> None:
        self.check_compensating(compensation)
        self._record(
            CompensationAttemptFailed(
                occurred_at=at,
                saga_id=self.id,
                compensation=compensation,
                attempt=self.compensation_attempts(compensation) + 1,
                error=error,
                retry_in_seconds=retry_in_seconds,
            )
        )

    def park(self, compensation: str, error: str, *, at: datetime) -> None:
        """Compensation keeps failing: stop and wait for an operator."""
        self.check_compensating(compensation)
        self._record(
            SagaCompensationFailed(
                occurred_at=at, saga_id=self.id, compensation=compensation, error=error
            )
        )

    def retry_compensation(self, *, at: datetime) -> None:
        if self.status is not SagaStatus.COMPENSATION_FAILED or not self.compensation_stack:
            raise IllegalTransition(f"saga {self.id} is not parked (status {self.status})")
        self._record(
            SagaCompensationRetried(
                occurred_at=at, saga_id=self.id, compensation=self.compensation_stack[-1]
            )
        )

    # --- state ----------------------------------------------------------------

    def _apply(self, event: DomainEvent) -> None:
        """The engine's own events by type, then what the definition says an event
        records: the saga's start, a step's success or failure, or a compensation."""
        if self.definition is None:
            self._started(event)
            return
        own = _ENGINE_EVENTS.get(type(event))
        if own is not None:
            own(self, event)
            return
        name = type(event).__name__
        spec = self.definition
        if (step := spec.succeeded_by(name)) is not None:
            self._step_succeeded(step.name, event)
        elif (step := spec.failed_by(name)) is not None:
            self._step_failed(step.name, event)
        elif (step := spec.compensated_by(name)) is not None:
            self._compensated(step, event)
        elif (wait := spec.recorded_at_wait(name)) is not None:
            self._recorded_at_wait(wait, event)
        elif spec.cancellation is not None and isinstance(event, spec.cancellation):
            self.cancellation = event
        else:
            raise TypeError(f"saga {spec.name} v{spec.version} cannot apply {name}")

    def _started(self, event: DomainEvent) -> None:
        self.definition = REGISTRY.for_start(event)
        self._elements = self.definition.steps
        self.steps = {s.name: StepState() for s in self._elements}
        self.status = SagaStatus.RUNNING
        self.started = event
        self.started_at = event.occurred_at
        self.deadline_at = getattr(event, "deadline_at", None)
        self.steps[self.definition.steps[0].name].started_at = event.occurred_at

    def _advance(self, at: datetime) -> None:
        """The current element is done: the next one starts, or the saga completes."""
        self._current += 1
        if self._current < len(self._elements):
            self.steps[self._elements[self._current].name].started_at = at
        else:
            self.status = SagaStatus.COMPLETED
            self.finished_at = at

    def _step_succeeded(self, step: str, event: DomainEvent) -> None:
        state = self.steps[step]
        state.status = StepStatus.SUCCEEDED
        state.attempts += 1
        state.finished_at = event.occurred_at
        state.due_at = None
        self.results[step] = event
        spec = self.definition
        assert spec is not None
        compensation = spec.step(step).compensation
        if compensation is not None:
            self.compensation_stack.append(compensation.name)
        self._advance(event.occurred_at)

    def _step_failed(self, step: str, event: DomainEvent) -> None:
        state = self.steps[step]
        state.status = StepStatus.FAILED
        state.attempts += 1
        state.errors.append(getattr(event, "error", ""))
        state.finished_at = event.occurred_at
        self.failed_step = step
        self.failure_reason = getattr(event, "reason", None)

    def _recorded_at_wait(self, wait: WaitSpec, event: DomainEvent) -> None:
        """A signal's event (the wait has moved already), or a skip's: the saga reached
        the wait and passes it without waiting."""
        self.recorded[type(event).__name__] = event
        current = self.current
        state = self.steps[wait.name]
        if current is wait and state.status is StepStatus.PENDING:
            state.status = StepStatus.SUCCEEDED
            state.finished_at = event.occurred_at
            self.results[wait.name] = event
            self._advance(event.occurred_at)

    def _compensated(self, step: StepSpec, event: DomainEvent) -> None:
        assert step.compensation is not None
        popped = self.compensation_stack.pop()
        assert popped == step.compensation.name, (popped, step.compensation.name)
        state = self.steps[step.name]
        state.status = StepStatus.COMPENSATED
        state.compensation_attempts += 1
        state.compensated_at = event.occurred_at
        state.compensation_due_at = None
        self.compensated.append(event)
        self._after_compensation_progress(event.occurred_at)

    def _after_compensation_progress(self, at: datetime) -> None:
        if self.compensation_stack:
            self.status = SagaStatus.COMPENSATING
        else:
            self.status = SagaStatus.COMPENSATED
            self.finished_at = at

    def _when_attempt_failed(self, event: SagaStepAttemptFailed) -> None:
        state = self.steps[event.step]
        state.attempts += 1
        state.errors.append(event.error)
        state.due_at = at_or_none(event.occurred_at, event.retry_in_seconds)

    def _when_compensation_started(self, event: SagaCompensationStarted) -> None:
        self.failed_step = event.failed_step
        self.failure_reason = event.reason
        stopped = self.steps.get(event.failed_step)
        if stopped is not None and stopped.status is StepStatus.WAITING:
            # A cancellation that stopped the saga at a wait ends it.
            stopped.status = StepStatus.FAILED
            stopped.finished_at = event.occurred_at
            stopped.due_at = None
        self._after_compensation_progress(event.occurred_at)

    def _when_compensation_attempt_failed(self, event: CompensationAttemptFailed) -> None:
        state = self.steps[self.spec.undone_by(event.compensation).name]
        state.compensation_attempts += 1
        state.errors.append(event.error)
        state.compensation_due_at = at_or_none(event.occurred_at, event.retry_in_seconds)

    def _when_compensation_failed(self, event: SagaCompensationFailed) -> None:
        self.status = SagaStatus.COMPENSATION_FAILED
        self.parked_error = event.error
        state = self.steps[self.spec.undone_by(event.compensation).name]
        state.status = StepStatus.COMPENSATION_FAILED
        state.compensation_attempts += 1
        state.errors.append(event.error)

    def _when_compensation_retried(self, event: SagaCompensationRetried) -> None:
        self.status = SagaStatus.COMPENSATING
        self.parked_error = None
        state = self.steps[self.spec.undone_by(event.compensation).name]
        state.status = StepStatus.SUCCEEDED
        state.compensation_attempts = 0
        state.compensation_due_at = None

    def _when_wait_started(self, event: SagaWaitStarted) -> None:
        state = self.steps[event.wait]
        state.status = StepStatus.WAITING
        state.started_at = event.occurred_at
        state.due_at = event.timeout_at

    def _when_signal_received(self, event: SagaSignalReceived) -> None:
        self.steps[event.wait].signals.append(event.signal)
        self._wait_outcome(event.wait, event.outcome, event.reason, event)

    def _when_wait_timed_out(self, event: SagaWaitTimedOut) -> None:
        self._wait_outcome(event.wait, event.outcome, event.reason, event)

    def _wait_outcome(
        self, wait: str, outcome: str, reason: str | None, event: DomainEvent
    ) -> None:
        state = self.steps[wait]
        state.attempts += 1
        if outcome == "continue":
            state.status = StepStatus.SUCCEEDED
            state.finished_at = event.occurred_at
            state.due_at = None
            self.results[wait] = event
            self._advance(event.occurred_at)
        elif outcome == "fail":
            state.status = StepStatus.FAILED
            state.finished_at = event.occurred_at
            state.due_at = None
            self.failed_step = wait
            self.failure_reason = reason


_ENGINE_EVENTS: dict[type[DomainEvent], Any] = {
    SagaStepAttemptFailed: Saga._when_attempt_failed,
    SagaCompensationStarted: Saga._when_compensation_started,
    CompensationAttemptFailed: Saga._when_compensation_attempt_failed,
    SagaCompensationFailed: Saga._when_compensation_failed,
    SagaCompensationRetried: Saga._when_compensation_retried,
    SagaWaitStarted: Saga._when_wait_started,
    SagaSignalReceived: Saga._when_signal_received,
    SagaWaitTimedOut: Saga._when_wait_timed_out,
}

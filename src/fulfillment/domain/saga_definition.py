"""Declaring a saga: its steps in order, the events that record each outcome, and what
undoes each step. Pure data, no I/O: the aggregate, the policy that picks the next job,
the job kinds, the metrics' step labels, the dashboard's step cards and the terminal
timeline all read one `SagaDefinition` instead of keeping maps of their own.

A step succeeds when its `succeeded` event is recorded; it fails for good with its
`failed` event, and then the compensations of the steps that had succeeded run last in,
first out, each recorded by its own event. The **pivot** is the step after which the
saga only goes forward: it has no failure event and no compensation, and a failure of it
is retried until it succeeds (the order saga's `complete`: stock leaves the shelf).

The order saga's definition is `fulfillment.domain.order_saga.ORDER_SAGA`; the steps'
actions (the handlers run as jobs) are in `fulfillment.service_layer.handlers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from fulfillment.domain.events import DomainEvent


@dataclass(frozen=True)
class RetrySpec:
    """How a step's transient failures are retried. None: the configured default
    (`FULFILLMENT_MAX_ATTEMPTS`, `FULFILLMENT_RETRY_BACKOFF_SECONDS`)."""

    attempts: int | None = None
    backoff_base_seconds: float | None = None
    backoff_cap_seconds: float | None = None


@dataclass(frozen=True)
class CompensationSpec:
    """What undoes a step: the compensation's job kind and the event that records it."""

    name: str
    recorded_by: type[DomainEvent]


@dataclass(frozen=True)
class StepSpec:
    """One step of a saga, run as one durable job of kind `name`."""

    name: str
    succeeded: type[DomainEvent]
    failed: type[DomainEvent] | None = None
    compensation: CompensationSpec | None = None
    retry: RetrySpec = RetrySpec()
    #: The step's own deadline, from when it became due (None: the configured default).
    deadline_seconds: float | None = None
    pivot: bool = False
    #: A short name for narrow displays (the terminal timeline); the name by default.
    label: str = ""

    @property
    def short(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class SagaDefinition:
    """A saga type: a name, a version, and its steps in order (at most one pivot, last
    among the steps that can fail)."""

    name: str
    version: int
    steps: tuple[StepSpec, ...]

    def __post_init__(self) -> None:
        names = [s.name for s in self.steps] + [
            s.compensation.name for s in self.steps if s.compensation
        ]
        if len(set(names)) != len(names):
            raise ValueError(f"saga {self.name}: step and compensation names must be unique")
        events = [
            e.__name__
            for s in self.steps
            for e in (
                s.succeeded,
                s.failed,
                s.compensation.recorded_by if s.compensation is not None else None,
            )
            if e is not None
        ]
        if len(set(events)) != len(events):
            raise ValueError(f"saga {self.name}: each event records one outcome only")
        pivots = [i for i, s in enumerate(self.steps) if s.pivot]
        if len(pivots) > 1:
            raise ValueError(f"saga {self.name}: at most one pivot")
        for step in self.steps:
            if step.pivot and (step.failed is not None or step.compensation is not None):
                raise ValueError(f"step {step.name}: a pivot is never failed nor undone")
            if not step.pivot and step.failed is None:
                raise ValueError(f"step {step.name}: a step that can fail needs its event")
        if pivots and any(s.compensation for s in self.steps[pivots[0] + 1 :]):
            raise ValueError(f"saga {self.name}: nothing after the pivot is undone")

    # --- lookups (computed once per definition) -------------------------------------

    @cached_property
    def forward(self) -> tuple[StepSpec, ...]:
        """The steps that can fail (and be undone), in order: those before the pivot."""
        return tuple(s for s in self.steps if not s.pivot)

    @cached_property
    def pivot(self) -> StepSpec | None:
        return next((s for s in self.steps if s.pivot), None)

    def step(self, name: str) -> StepSpec:
        return self._by_name[name]

    def step_after(self, name: str) -> StepSpec | None:
        """The step that follows `name`, or None after the last."""
        index = self.steps.index(self._by_name[name])
        return self.steps[index + 1] if index + 1 < len(self.steps) else None

    def undone_by(self, compensation: str) -> StepSpec:
        """The step a compensation undoes."""
        return self._by_compensation[compensation]

    def succeeded_by(self, event_type: str) -> StepSpec | None:
        """The step whose success `event_type` records, if any."""
        return self._outcomes[0].get(event_type)

    def failed_by(self, event_type: str) -> StepSpec | None:
        """The step whose failure for good `event_type` records, if any."""
        return self._outcomes[1].get(event_type)

    def compensated_by(self, event_type: str) -> StepSpec | None:
        """The step whose compensation `event_type` records, if any."""
        return self._outcomes[2].get(event_type)

    @cached_property
    def compensations(self) -> tuple[CompensationSpec, ...]:
        return tuple(s.compensation for s in self.steps if s.compensation is not None)

    @cached_property
    def job_kinds(self) -> tuple[str, ...]:
        """Every job kind the saga runs: its steps, then its compensations."""
        return tuple(s.name for s in self.steps) + tuple(c.name for c in self.compensations)

    @cached_property
    def _by_name(self) -> dict[str, StepSpec]:
        return {s.name: s for s in self.steps}

    @cached_property
    def _by_compensation(self) -> dict[str, StepSpec]:
        return {s.compensation.name: s for s in self.steps if s.compensation is not None}

    @cached_property
    def _outcomes(self) -> tuple[dict[str, StepSpec], ...]:
        succeeded = {s.succeeded.__name__: s for s in self.steps}
        failed = {s.failed.__name__: s for s in self.steps if s.failed is not None}
        compensated = {
            s.compensation.recorded_by.__name__: s for s in self.steps if s.compensation is not None
        }
        return succeeded, failed, compensated

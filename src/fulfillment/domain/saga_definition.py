"""Declaring a saga: its steps and waits in order, the events that record each outcome,
and what undoes each step. No I/O: the saga aggregate (`fulfillment.domain.saga`), the
policy that picks the next job, the job kinds, the metrics' step labels, the logs'
and traces' step names, the dashboard's step cards and the terminal timeline all read
one `SagaDefinition`. How to write one: docs/sagas.md.

* A **step** runs its `action` as one durable job. The action returns the step's
  `succeeded` event; it raises a `BusinessRuleViolation` to fail for good (the
  `failed` event is recorded, then the compensations of the steps that had succeeded
  run last in, first out, each recorded by its own event), or a `TransientFailure` to be
  tried again after a backoff (`RetrySpec`). A slow call to the outside world (a
  carrier) goes in `prepare`, which runs outside any transaction, before the action, and
  must be idempotent.
* The **pivot** is the step after which the saga only goes forward: neither it nor any
  step after it has a failure event or a compensation, and their failures are retried
  until they succeed (the order saga's `complete`: stock leaves the shelf).
* A **wait** holds the saga until one of its signals arrives (`POST
  /sagas/{id}/signals/{name}`) or its timeout fires (a job row due at that time). Each
  signal leads to an `Outcome`: go on, fail with a reason and compensate, or wait again.
  A signal may also `record` an event of the definition's own (a pharmacist's
  decision), and be restricted to some `roles`. A wait's `skip` decides, as the saga
  reaches it, that there is nothing to wait for: the event it returns passes the wait in
  the same transaction as the step before (no job, no transaction of its own).
* A definition with `cancellation` accepts a request to stop (that event) while it runs
  before its pivot: the saga compensates after the step in progress, at once when it
  waits.

A definition is registered under its name and version (`register`); a saga keeps
running under the version it started with, so old and new versions run side by side.
Actions receive a `fulfillment.service_layer.saga_engine.StepContext`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, Literal

from fulfillment.domain.events import DomainEvent, register_event_types

#: A step's or a compensation's action: StepContext -> the event that records it.
Action = Callable[[Any], DomainEvent]
#: A call made before the action, outside any transaction: StepContext -> a value the
#: action finds in `context.prepared`.
Prepare = Callable[[Any], Any]

MAX_NAME_LENGTH = 40  # the job queue's `kind` column


def title_of(name: str) -> str:
    """`reserve_inventory` -> `Reserve inventory`."""
    return name.replace("_", " ").capitalize()


def _short(element: StepSpec | WaitSpec) -> str:
    """A short name for narrow displays (the terminal timeline): the label, or the name."""
    return element.label or element.name


def _title(element: StepSpec | WaitSpec) -> str:
    """The name for people: `reserve_inventory` -> `Reserve inventory`."""
    return title_of(element.name)


@dataclass(frozen=True)
class RetrySpec:
    """How a step's transient failures are retried. None: the configured default
    (`FULFILLMENT_MAX_ATTEMPTS`, `FULFILLMENT_RETRY_BACKOFF_SECONDS`, no cap).
    `not_retried`: exception types that fail the step for good at once
    (reason `not_retried`), as a `BusinessRuleViolation` does."""

    attempts: int | None = None
    backoff_base_seconds: float | None = None
    backoff_cap_seconds: float | None = None
    not_retried: tuple[type[Exception], ...] = ()


@dataclass(frozen=True)
class CompensationSpec:
    """What undoes a step: its name (the job kind), its action and the event that
    records it (the action returns it)."""

    name: str
    recorded_by: type[DomainEvent]
    action: Action | None = None
    prepare: Prepare | None = None
    #: What it does, in a few words, for the dashboard.
    description: str = ""
    #: It writes rows that many sagas share (stock): see `StepSpec.shared_rows`.
    shared_rows: bool = False


@dataclass(frozen=True)
class StepSpec:
    """One step of a saga, run as one durable job of kind `name`."""

    name: str
    succeeded: type[DomainEvent]
    action: Action | None = None
    failed: type[DomainEvent] | None = None
    compensation: CompensationSpec | None = None
    retry: RetrySpec = RetrySpec()
    prepare: Prepare | None = None
    #: The step's own deadline, from when it became due (None: the configured default).
    deadline_seconds: float | None = None
    pivot: bool = False
    #: A short name for narrow displays (the terminal timeline); the name by default.
    label: str = ""
    #: What it does, in a few words, for the dashboard's step card.
    description: str = ""
    #: It writes rows that many sagas share (stock). On PostgreSQL and MariaDB such a
    #: step takes its turn in the worker's stock group, which the stock groups of other
    #: workers take turns with, not in its main group: the main groups then hold no row
    #: another worker's group waits for, and run side by side without deadlocking
    #: (``adapters/group_commit.py``).
    shared_rows: bool = False

    short = property(_short)
    title = property(_title)


OutcomeKind = Literal["continue", "fail", "wait"]


@dataclass(frozen=True)
class Outcome:
    """Where a signal or a timeout leads: `continue` past the wait, `fail` (with
    `reason`: the saga compensates), or `wait` again."""

    kind: OutcomeKind
    reason: str | None = None

    def __post_init__(self) -> None:
        if (self.kind == "fail") != (self.reason is not None):
            raise ValueError("an outcome has a reason exactly when it fails")


CONTINUE = Outcome("continue")
WAIT_AGAIN = Outcome("wait")


def fail(reason: str) -> Outcome:
    return Outcome("fail", reason)


@dataclass(frozen=True)
class SignalSpec:
    """A signal a wait accepts: its name (the URL's), the pydantic model its JSON body
    must match, and its outcome, fixed or decided from the validated payload.

    `record`: StepContext (with `payload`, the validated model, and `sender`) -> an
    event of the definition's own, recorded after the signal (one of the wait's
    `records`). `roles`: the API roles that may send it (None: any that may signal)."""

    name: str
    schema: type[Any]
    outcome: Outcome | Callable[[Any], Outcome] = CONTINUE
    record: Action | None = None
    roles: frozenset[str] | None = None

    def decide(self, payload: Any) -> Outcome:
        return self.outcome if isinstance(self.outcome, Outcome) else self.outcome(payload)


@dataclass(frozen=True)
class WaitSpec:
    """A point where the saga waits for the outside world, run as a timer job of kind
    `name` when it has a timeout."""

    name: str
    signals: tuple[SignalSpec, ...]
    timeout_seconds: float | None = None
    on_timeout: Outcome = field(default_factory=lambda: fail("timeout"))
    #: StepContext -> an event that passes the wait at once (nothing to wait for), or
    #: None: the saga waits. Runs in the transaction that reaches the wait.
    skip: Callable[[Any], DomainEvent | None] | None = None
    #: The events of the definition's own that `skip` and the signals' `record` return.
    records: tuple[type[DomainEvent], ...] = ()
    label: str = ""
    description: str = ""

    short = property(_short)
    title = property(_title)

    def signal(self, name: str) -> SignalSpec | None:
        return next((s for s in self.signals if s.name == name), None)


Element = StepSpec | WaitSpec


@dataclass(frozen=True)
class SagaDefinition:
    """A saga type: a name, a version, the event that starts it and its steps and
    waits in order.

    `started` must carry `saga_id` and `definition_version` (and may carry
    `deadline_at`, the saga's deadline). `settle` runs in the transaction in which a
    saga of this type ends, completed or compensated (the order saga settles its order).
    """

    name: str
    version: int
    started: type[DomainEvent]
    steps: tuple[Element, ...]
    settle: Callable[[Any], None] | None = None
    #: The event that records a request to stop the saga (None: it cannot be cancelled).
    #: It carries `saga_id`, `reason`, `by` and `note`.
    cancellation: type[DomainEvent] | None = None

    def __post_init__(self) -> None:
        _check(self)

    # --- lookups (computed once per definition) -------------------------------------

    @cached_property
    def pivot_index(self) -> int | None:
        return next((i for i, s in enumerate(self.steps) if _is_pivot(s)), None)

    @cached_property
    def pivot(self) -> StepSpec | None:
        index = self.pivot_index
        step = self.steps[index] if index is not None else None
        return step if isinstance(step, StepSpec) else None

    def element(self, name: str) -> Element:
        return self._by_name[name]

    def step(self, name: str) -> StepSpec:
        step = self._by_name[name]
        assert isinstance(step, StepSpec), name
        return step

    def wait(self, name: str) -> WaitSpec:
        wait = self._by_name[name]
        assert isinstance(wait, WaitSpec), name
        return wait

    def index(self, name: str) -> int:
        return self._index[name]

    def forward_only(self, name: str) -> bool:
        """Whether `name` is the pivot or comes after it: retried, never failed."""
        return self.pivot_index is not None and self._index[name] >= self.pivot_index

    def undone_by(self, compensation: str) -> StepSpec:
        """The step a compensation undoes."""
        return self._by_compensation[compensation]

    def compensation(self, name: str) -> CompensationSpec:
        compensation = self._by_compensation[name].compensation
        assert compensation is not None
        return compensation

    def kind_of(self, job_kind: str) -> str | None:
        """What a job kind of this saga runs: step, wait (its timer) or compensation."""
        if job_kind in self._by_compensation:
            return "compensation"
        element = self._by_name.get(job_kind)
        if element is None:
            return None
        return "wait" if isinstance(element, WaitSpec) else "step"

    def succeeded_by(self, event_type: str) -> StepSpec | None:
        """The step whose success `event_type` records, if any."""
        return self._outcomes[0].get(event_type)

    def failed_by(self, event_type: str) -> StepSpec | None:
        """The step whose failure for good `event_type` records, if any."""
        return self._outcomes[1].get(event_type)

    def compensated_by(self, event_type: str) -> StepSpec | None:
        """The step whose compensation `event_type` records, if any."""
        return self._outcomes[2].get(event_type)

    def recorded_at_wait(self, event_type: str) -> WaitSpec | None:
        """The wait whose skip or signals record `event_type`, if any."""
        return self._wait_records.get(event_type)

    @cached_property
    def _wait_records(self) -> dict[str, WaitSpec]:
        return {e.__name__: w for w in self.steps if isinstance(w, WaitSpec) for e in w.records}

    @cached_property
    def compensations(self) -> tuple[CompensationSpec, ...]:
        return tuple(
            s.compensation for s in self.steps if isinstance(s, StepSpec) and s.compensation
        )

    @cached_property
    def job_kinds(self) -> tuple[str, ...]:
        """Every job kind the saga runs: its steps and waits, then its compensations."""
        return tuple(s.name for s in self.steps) + tuple(c.name for c in self.compensations)

    @cached_property
    def event_types(self) -> tuple[type[DomainEvent], ...]:
        """The events this definition declares (its own: the engine's are shared)."""
        found: list[type[DomainEvent]] = [self.started]
        for s in self.steps:
            if isinstance(s, StepSpec):
                found += [s.succeeded] + ([s.failed] if s.failed else [])
                if s.compensation is not None:
                    found.append(s.compensation.recorded_by)
            else:
                found += s.records
        if self.cancellation is not None:
            found.append(self.cancellation)
        return tuple(found)

    @cached_property
    def _by_name(self) -> dict[str, Element]:
        return {s.name: s for s in self.steps}

    @cached_property
    def _index(self) -> dict[str, int]:
        return {s.name: i for i, s in enumerate(self.steps)}

    @cached_property
    def _by_compensation(self) -> dict[str, StepSpec]:
        return {
            s.compensation.name: s
            for s in self.steps
            if isinstance(s, StepSpec) and s.compensation is not None
        }

    @cached_property
    def _outcomes(self) -> tuple[dict[str, StepSpec], ...]:
        steps = [s for s in self.steps if isinstance(s, StepSpec)]
        succeeded = {s.succeeded.__name__: s for s in steps}
        failed = {s.failed.__name__: s for s in steps if s.failed is not None}
        compensated = {
            s.compensation.recorded_by.__name__: s for s in steps if s.compensation is not None
        }
        return succeeded, failed, compensated


def _is_pivot(element: Element) -> bool:
    return isinstance(element, StepSpec) and element.pivot


def _check(d: SagaDefinition) -> None:
    """The rules a definition must keep (ValueError, saying which and where)."""
    if not d.steps:
        raise ValueError(f"saga {d.name}: no steps")
    names = [s.name for s in d.steps] + [c.name for c in d.compensations]
    if len(set(names)) != len(names):
        raise ValueError(f"saga {d.name}: step, wait and compensation names must be unique")
    if any(not n or len(n) > MAX_NAME_LENGTH for n in names):
        raise ValueError(f"saga {d.name}: names are 1..{MAX_NAME_LENGTH} characters")
    events = [e.__name__ for e in d.event_types]
    if len(set(events)) != len(events):
        raise ValueError(f"saga {d.name}: each event records one outcome only")
    fields = {f.name for f in dataclasses.fields(d.started)}
    if not {"saga_id", "definition_version"} <= fields:
        raise ValueError(f"saga {d.name}: its start event needs saga_id and definition_version")
    if d.cancellation is not None:
        needed = {"saga_id", "reason", "by", "note"}
        if not needed <= {f.name for f in dataclasses.fields(d.cancellation)}:
            raise ValueError(f"saga {d.name}: its cancellation event needs {sorted(needed)}")
    pivots = [i for i, s in enumerate(d.steps) if _is_pivot(s)]
    if len(pivots) > 1:
        raise ValueError(f"saga {d.name}: at most one pivot")
    after_pivot = pivots[0] if pivots else len(d.steps)
    for i, element in enumerate(d.steps):
        forward_only = i >= after_pivot
        if isinstance(element, WaitSpec):
            outcomes = [element.on_timeout] + [
                s.outcome for s in element.signals if isinstance(s.outcome, Outcome)
            ]
            if forward_only and any(o.kind == "fail" for o in outcomes):
                raise ValueError(f"wait {element.name}: nothing fails after the pivot")
            if not element.signals:
                raise ValueError(f"wait {element.name}: waits for no signal")
            if any(s.record is not None for s in element.signals) and not element.records:
                raise ValueError(f"wait {element.name}: declare the events its signals record")
            continue
        if element.action is None:
            raise ValueError(f"step {element.name}: no action")
        if forward_only and (element.failed is not None or element.compensation is not None):
            raise ValueError(f"step {element.name}: from the pivot on, nothing fails or is undone")
        if not forward_only and element.failed is None:
            raise ValueError(f"step {element.name}: a step that can fail needs its event")
        if element.compensation is not None and element.compensation.action is None:
            raise ValueError(f"compensation {element.compensation.name}: no action")


class UnknownSagaDefinition(LookupError):
    """No definition is registered under that name and version."""


class SagaRegistry:
    """The definitions this process runs, by name and version, and by start event.

    `builtin` modules register their definitions when imported; they are imported on
    the first lookup (the order saga's). Others are loaded with `load` (bootstrap loads
    those of `FULFILLMENT_SAGA_MODULES`).
    """

    def __init__(self, builtin: tuple[str, ...] = ()) -> None:
        self._by_version: dict[tuple[str, int], SagaDefinition] = {}
        self._by_start: dict[str, str] = {}
        self._prepares: set[str] = set()
        self._shared_rows: set[str] = set()
        self._builtin = builtin
        self._loaded = not builtin

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self._loaded = True
            self.load(self._builtin)

    def load(self, modules: Iterable[str]) -> None:
        """Import modules that register definitions (`module.path`)."""
        for module in modules:
            importlib.import_module(module)

    def register(self, definition: SagaDefinition) -> SagaDefinition:
        key = (definition.name, definition.version)
        known = self._by_version.get(key)
        if known is not None and known is not definition:
            raise ValueError(f"saga {definition.name} v{definition.version} already registered")
        start = definition.started.__name__
        if self._by_start.setdefault(start, definition.name) != definition.name:
            raise ValueError(f"{start} already starts saga {self._by_start[start]}")
        self._by_version[key] = definition
        register_event_types(*definition.event_types)
        for element in definition.steps:
            if isinstance(element, StepSpec) and element.prepare is not None:
                self._prepares.add(element.name)
        self._prepares.update(c.name for c in definition.compensations if c.prepare)
        self._shared_rows.update(
            e.name for e in definition.steps if isinstance(e, StepSpec) and e.shared_rows
        )
        self._shared_rows.update(c.name for c in definition.compensations if c.shared_rows)
        return definition

    def writes_shared_rows(self, job_kind: str) -> bool:
        """Whether some definition declares a job of this kind `shared_rows`."""
        if not self._loaded:
            self._ensure_loaded()
        return job_kind in self._shared_rows

    def prepares(self, job_kind: str) -> bool:
        """Whether some definition runs a job of this kind with a `prepare` first."""
        if not self._loaded:
            self._ensure_loaded()
        return job_kind in self._prepares

    def get(self, name: str, version: int | None = None) -> SagaDefinition:
        """The definition `name` at `version`, or its newest."""
        self._ensure_loaded()
        if version is None:
            versions = [v for (n, v) in self._by_version if n == name]
            if not versions:
                raise UnknownSagaDefinition(f"no saga named {name!r} is registered")
            version = max(versions)
        try:
            return self._by_version[(name, version)]
        except KeyError:
            raise UnknownSagaDefinition(f"saga {name} v{version} is not registered") from None

    def for_start(self, event: DomainEvent) -> SagaDefinition:
        """The definition a saga's first event started it under."""
        if not self._loaded:
            self._ensure_loaded()
        name = self._by_start.get(type(event).__name__)
        if name is None:
            raise UnknownSagaDefinition(f"{type(event).__name__} starts no registered saga")
        version: int = getattr(event, "definition_version")  # noqa: B009
        found = self._by_version.get((name, version))
        return found if found is not None else self.get(name, version)

    def names(self) -> list[str]:
        self._ensure_loaded()
        return sorted({n for n, _ in self._by_version})

    def all(self) -> list[SagaDefinition]:
        """Every registered definition, each version."""
        self._ensure_loaded()
        return list(self._by_version.values())


#: The definitions of this process (the order saga registers itself on import).
REGISTRY = SagaRegistry(builtin=("fulfillment.service_layer.order_saga",))


def register(definition: SagaDefinition) -> SagaDefinition:
    """Register `definition` in this process's registry; returns it."""
    return REGISTRY.register(definition)


def resolve_timeout(wait: WaitSpec, overrides: Mapping[str, float] | None) -> float | None:
    """The wait's timeout: the configured override by its name, or its own."""
    if overrides and wait.name in overrides:
        return overrides[wait.name]
    return wait.timeout_seconds


def at_or_none(at: datetime, seconds: float | None) -> datetime | None:
    """`seconds` after `at`, or None."""
    return at + timedelta(seconds=seconds) if seconds is not None else None

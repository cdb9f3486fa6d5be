"""The unit of work: one database transaction that commits everything a step did, or nothing.

On commit it stores the new events of every aggregate it saw (with their expected versions),
enqueues the job the saga policy derives from them, and removes the job being run:
docs/architecture.md, rule 1. It rolls back unless told to commit.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from fulfillment.domain.aggregate import Aggregate
from fulfillment.domain.events import DomainEvent
from fulfillment.domain.saga import Saga
from fulfillment.service_layer import ports
from fulfillment.service_layer.jobs import ClaimedJob, JobSpec
from fulfillment.service_layer.saga_policy import next_job


@dataclass(frozen=True)
class StreamAppend:
    stream_id: str
    expected_version: int
    events: list[DomainEvent]
    correlation_id: str
    #: Who asked for these events (an API key's name, `cli`, `anonymous`), kept in
    #: their metadata; None for the system's own steps.
    sender: str | None = None


class AbstractUnitOfWork(abc.ABC):
    orders: ports.OrderRepository
    sagas: ports.SagaRepository
    prescriptions: ports.PrescriptionService
    inventory: ports.InventoryReservationService
    shipments: ports.ShipmentService
    idempotency: ports.IdempotencyKeys
    jobs: ports.SagaJobs

    def __init__(self, job: ClaimedJob | None = None, causation_id: str | None = None) -> None:
        self.job = job
        self.causation_id = causation_id or (f"job:{job.id}" if job else None)
        #: When the job's run began, kept in the metadata of its events.
        self.job_started_at = job.started_at if job else None
        self.read_only_mode = False  # of the transaction in progress
        self._next_read_only = False
        self.committed_events: list[DomainEvent] = []
        #: What the last commit handed over: its saga's next job, still claimed by this
        #: worker and due now, for the same thread to run (None: nothing to chain).
        self.handed_over: ClaimedJob | None = None
        #: Who asked for this transaction's events (their metadata's `sender`), if anyone.
        self.sender: str | None = None
        self._seen: dict[str, Aggregate] = {}

    def __enter__(self) -> Self:
        self._seen = {}
        self.read_only_mode, self._next_read_only = self._next_read_only, False
        self._begin()
        return self

    def read_only(self) -> Self:
        """Use as `with uow.read_only():` to look without taking the write lock (SQLite)."""
        self._next_read_only = True
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.rollback()

    def track(self, aggregate: Aggregate) -> None:
        self._seen[aggregate.stream_id] = aggregate

    def commit(self) -> ClaimedJob | None:
        """Commit; returns the job handed over (also kept as `handed_over`)."""
        if self.read_only_mode:
            raise RuntimeError("a read-only unit of work cannot commit")
        appends: list[StreamAppend] = []
        jobs: list[JobSpec] = []
        for aggregate in self._seen.values():
            expected = aggregate.stored_version
            if not aggregate.pending_events:
                continue
            events = aggregate.pending_events
            correlation = aggregate.id
            appends.append(
                StreamAppend(aggregate.stream_id, expected, events, correlation, self.sender)
            )
            if isinstance(aggregate, Saga):
                spec = next_job(aggregate, events)
                if spec is not None:
                    jobs.append(spec)
        # Only the commit that consumed the job can hand its successor over.
        self.handed_over = self._commit(appends, jobs) or self.handed_over
        for aggregate in self._seen.values():
            self.committed_events.extend(aggregate.collect_pending())
        return self.handed_over

    @abc.abstractmethod
    def _begin(self) -> None: ...

    @abc.abstractmethod
    def _commit(self, appends: list[StreamAppend], jobs: list[JobSpec]) -> ClaimedJob | None:
        """Atomically: finish (or advance) the current job, enqueue `jobs`, append the
        events; returns the current job's successor when it stays claimed (chained)."""

    @abc.abstractmethod
    def rollback(self) -> None: ...

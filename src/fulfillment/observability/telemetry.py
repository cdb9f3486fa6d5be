"""What watches each saga job: its log fields, its tracing span, how it ended.

`JobTelemetry` is the `JobObserver` that bootstrap gives the `JobRunner`. While a job
runs, every log line on its thread carries order_id, saga_id, job_id, step (the job's
kind: a step, a compensation, or `complete`), attempt and correlation_id, plus trace_id
and span_id when tracing is on; and the job runs inside a span of the saga's trace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from fulfillment.domain.events import DomainEvent
from fulfillment.domain.saga import Saga
from fulfillment.observability.logging import job_context
from fulfillment.observability.tracing import NO_TRACING, SpanHandle, Tracing
from fulfillment.service_layer.job_runner import JobOutcome, JobWatch
from fulfillment.service_layer.jobs import ClaimedJob
from fulfillment.service_layer.unit_of_work import AbstractUnitOfWork

log = logging.getLogger("fulfillment.jobs")

UnitOfWorkFactory = Callable[[ClaimedJob | None], AbstractUnitOfWork]
#: The events of a saga this process knows, by saga id (its stream cache), or ().
CachedSaga = Callable[[str], Sequence[DomainEvent]]
#: Outcomes that mark the span as failed (a retry is not a failure of the saga yet).
_FAILED = (JobOutcome.STEP_FAILED, JobOutcome.JOB_FAILED)


def job_type(saga: Saga | None, kind: str) -> str:
    """step, wait (its timer), compensation, or completion (the pivot, after which the
    saga only goes forward: the order saga's `complete`), from the saga's definition."""
    if saga is None or saga.definition is None:
        return "unknown"
    pivot = saga.definition.pivot
    if pivot is not None and pivot.name == kind:
        return "completion"
    return saga.definition.kind_of(kind) or "unknown"


class _Watch:
    def __init__(self, job: ClaimedJob, span: SpanHandle) -> None:
        self.job = job
        self.span = span
        self.started = time.perf_counter()
        log.debug("job %s started", job.kind)

    def finished(self, outcome: JobOutcome, error: str | None) -> None:
        self.span.set("outcome", outcome.value)
        if error is not None:
            self.span.set("error", error[:500])
        if outcome in _FAILED:
            self.span.fail(error or outcome.value)
        elapsed_ms = (time.perf_counter() - self.started) * 1000
        log.debug("job %s %s in %.1f ms", self.job.kind, outcome.value, elapsed_ms)


class JobTelemetry:
    """Binds a job's log fields and opens its span (see the module docstring).

    `cached_saga` (the process's stream cache) spares a database read for the attempt:
    the worker reads each saga into it when it claims the saga's job, and a chained job
    follows a commit of its own thread.
    """

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        tracing: Tracing = NO_TRACING,
        cached_saga: CachedSaga | None = None,
    ) -> None:
        self.uow_factory = uow_factory
        self.tracing = tracing
        self.cached_saga = cached_saga

    def _saga(self, job: ClaimedJob) -> Saga | None:
        # The worker reads a saga into the cache when it claims its job, and a
        # continuation follows a commit of this thread: the cache holds the saga as it is.
        if self.cached_saga is not None:
            events = self.cached_saga(job.saga_id)
            if events:
                return Saga.replay(job.saga_id, events)
        try:
            uow = self.uow_factory(None)
            with uow.read_only():
                return uow.sagas.get(job.saga_id)
        except Exception:  # the job itself meets the same error and reports it
            log.debug("attempt of job %s unknown", job.id, exc_info=True)
            return None

    def attempt_of(self, saga: Saga | None, job: ClaimedJob) -> int:
        """Which try of its step (or compensation) this job is, 1 for the first: from
        the saga's events, else from the job's own failures."""
        attempt = saga.attempt_of(job.kind) if saga is not None else None
        return attempt if attempt is not None else job.failures + 1

    @contextmanager
    def watch(self, job: ClaimedJob) -> Iterator[JobWatch]:
        """Run the block with the job's log fields bound and inside its span."""
        saga = self._saga(job)
        fields: dict[str, Any] = {
            "order_id": job.saga_id,  # saga id == order id
            "saga_id": job.saga_id,
            "job_id": job.id,
            "step": job.kind,
            "attempt": self.attempt_of(saga, job),
            "correlation_id": job.saga_id,
        }
        attributes = {**fields, "job_type": job_type(saga, job.kind)}

        with (
            self.tracing.span(job.kind, job.saga_id, attributes) as span,
            job_context(**fields, **self.tracing.current_ids()),
        ):
            yield _Watch(job, span)

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
from fulfillment.domain.order_saga import ORDER_SAGA
from fulfillment.domain.saga import OrderFulfillmentSaga
from fulfillment.domain.status import Compensation, Step
from fulfillment.observability.logging import job_context
from fulfillment.observability.tracing import NO_TRACING, SpanHandle, Tracing
from fulfillment.service_layer.job_runner import JobOutcome, JobWatch
from fulfillment.service_layer.jobs import ClaimedJob
from fulfillment.service_layer.unit_of_work import AbstractUnitOfWork

log = logging.getLogger("fulfillment.jobs")

UnitOfWorkFactory = Callable[[ClaimedJob | None], AbstractUnitOfWork]
#: The events of a saga this process knows, by saga id (its stream cache), or ().
CachedSaga = Callable[[str], Sequence[DomainEvent]]
_STEPS = {str(s.name): Step(s.name) for s in ORDER_SAGA.forward}
_COMPENSATIONS = {str(x.name): Compensation(x.name) for x in ORDER_SAGA.compensations}
#: Outcomes that mark the span as failed (a retry is not a failure of the saga yet).
_FAILED = (JobOutcome.STEP_FAILED, JobOutcome.JOB_FAILED)


def job_type(kind: str) -> str:
    """step, compensation, or completion (the job that settles a fulfilled order)."""
    if kind in _STEPS:
        return "step"
    if kind in _COMPENSATIONS:
        return "compensation"
    return "completion"


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

    def _saga(self, job: ClaimedJob) -> OrderFulfillmentSaga | None:
        # The worker reads a saga into the cache when it claims its job, and a
        # continuation follows a commit of this thread: the cache holds the saga as it is.
        if self.cached_saga is not None:
            events = self.cached_saga(job.saga_id)
            if events:
                return OrderFulfillmentSaga.replay(job.saga_id, events)
        try:
            uow = self.uow_factory(None)
            with uow.read_only():
                return uow.sagas.get(job.saga_id)
        except Exception:  # the job itself meets the same error and reports it
            log.debug("attempt of job %s unknown", job.id, exc_info=True)
            return None

    def attempt_of(self, job: ClaimedJob) -> int:
        """Which try of its step (or compensation) this job is, 1 for the first.

        From the saga's events; `complete`, which only the queue retries, counts the
        job's own failures.
        """
        step, compensation = _STEPS.get(job.kind), _COMPENSATIONS.get(job.kind)
        saga = self._saga(job) if step is not None or compensation is not None else None
        if saga is None:
            return job.failures + 1
        if step is not None:
            return saga.attempts(step) + 1
        assert compensation is not None
        return saga.compensation_attempts(compensation) + 1

    @contextmanager
    def watch(self, job: ClaimedJob) -> Iterator[JobWatch]:
        """Run the block with the job's log fields bound and inside its span."""
        fields: dict[str, Any] = {
            "order_id": job.saga_id,  # saga id == order id
            "saga_id": job.saga_id,
            "job_id": job.id,
            "step": job.kind,
            "attempt": self.attempt_of(job),
            "correlation_id": job.saga_id,
        }
        attributes = {**fields, "job_type": job_type(job.kind)}

        with (
            self.tracing.span(job.kind, job.saga_id, attributes) as span,
            job_context(**fields, **self.tracing.current_ids()),
        ):
            yield _Watch(job, span)

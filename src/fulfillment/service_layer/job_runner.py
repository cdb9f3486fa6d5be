"""Runs one claimed job: the step's command, then the right kind of failure handling.

* success: the handler's transaction consumed the job and enqueued the next one;
* a business rule failed (expired prescription, no stock, bad destination, deadline):
  the step fails for good and compensation starts;
* a transient failure (carrier down): the attempt is recorded and the step retried
  with backoff until its attempts run out;
* anything else (a bug, the database away): the job itself backs off, and after
  `max_job_failures` it is parked as `dead` for an operator to inspect.

An optional `JobObserver` watches each run (bootstrap wires the log context and tracing
span of ``fulfillment.observability.telemetry``); by default nothing watches.
"""

from __future__ import annotations

import abc
import logging
import random
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol

from fulfillment.domain.errors import BusinessRuleViolation, TransientFailure
from fulfillment.service_layer import commands as c
from fulfillment.service_layer.jobs import ClaimedJob, LeaseLost
from fulfillment.service_layer.messagebus import DatabaseBusy, MessageBus
from fulfillment.service_layer.ports import Clock
from fulfillment.service_layer.retry import RetryPolicy
from fulfillment.service_layer.saga_engine import FailureHandled

log = logging.getLogger("fulfillment.jobs")


class JobOutcome(StrEnum):
    DONE = "done"
    STEP_FAILED = "step_failed"
    RETRY_SCHEDULED = "retry_scheduled"
    JOB_FAILED = "job_failed"
    LEASE_LOST = "lease_lost"
    #: The database was busy (a lock wait ran out): the job went back, due shortly.
    POSTPONED = "postponed"


@dataclass(frozen=True)
class JobResult:
    """How a job run ended, and the saga's next job when the run's commit handed it over
    still claimed by this worker and due now (the same thread runs it next)."""

    outcome: JobOutcome
    next_job: ClaimedJob | None = None


class JobWatch(Protocol):
    """Told how the watched job ended."""

    def finished(self, outcome: JobOutcome, error: str | None) -> None: ...


class JobObserver(Protocol):
    """Wraps each job run (log context, tracing span): `with observer.watch(job) as w:`."""

    def watch(self, job: ClaimedJob) -> AbstractContextManager[JobWatch]: ...


class _Unwatched:
    def finished(self, outcome: JobOutcome, error: str | None) -> None:
        pass


class NullObserver:
    """Watches nothing."""

    @contextmanager
    def watch(self, job: ClaimedJob) -> Iterator[JobWatch]:
        yield _Unwatched()


class AbstractJobQueue(abc.ABC):
    @abc.abstractmethod
    def claim(
        self, limit: int, worker_id: str, lease_seconds: float, chain: bool = False
    ) -> list[ClaimedJob]:
        """Lease up to `limit` due jobs; `chain`: let steps hand their next job to this worker."""

    @abc.abstractmethod
    def heartbeat(self, jobs: list[ClaimedJob], lease_seconds: float) -> int: ...

    @abc.abstractmethod
    def reap_expired(self) -> int: ...

    @abc.abstractmethod
    def fail(self, job: ClaimedJob, error: str, delay_seconds: float, dead: bool) -> None: ...

    @abc.abstractmethod
    def release(self, job: ClaimedJob, delay_seconds: float = 0.0) -> None:
        """Hand the job back unrun (no failure counted), due after `delay_seconds`."""


class JobRunner:
    def __init__(
        self,
        bus: MessageBus,
        queue: AbstractJobQueue,
        retry: RetryPolicy,
        max_job_failures: int = 10,
        observer: JobObserver | None = None,
        busy_delay_seconds: float = 0.5,
        clock: Clock | None = None,
    ) -> None:
        #: Stamps when each run begins (`ClaimedJob.started_at`); None: no stamp.
        self.clock = clock
        self.busy_delay_seconds = busy_delay_seconds
        self.bus = bus
        self.queue = queue
        self.retry = retry
        self.max_job_failures = max_job_failures
        self.observer: JobObserver = observer or NullObserver()

    def run(self, job: ClaimedJob) -> JobOutcome:
        """Run the job; how it ended."""
        return self.run_step(job).outcome

    def run_step(self, job: ClaimedJob) -> JobResult:
        """Run the job; how it ended, and the next job it handed over, if any."""
        if self.clock is not None:
            job = replace(job, started_at=self.clock.now())
        with self.observer.watch(job) as watch:
            result, error = self._run(job)
            watch.finished(result.outcome, error)
        return result

    def _run(self, job: ClaimedJob) -> tuple[JobResult, str | None]:
        """The job's result, and the error that led to it, if any."""
        command = c.RunSagaJob(saga_id=job.saga_id, kind=job.kind)
        try:
            try:
                _, handed_over = self.bus.handle_job(command, job)
                return JobResult(JobOutcome.DONE, handed_over), None
            except BusinessRuleViolation as exc:
                reason = exc.reason
                return self._record_failure(job, str(exc), reason), f"{reason}: {exc}"
            except TransientFailure as exc:
                error = str(exc) or type(exc).__name__
                return self._record_failure(job, error, None, exc.retry_after_seconds), error
        except LeaseLost:
            log.warning("lease lost on job %s (%s %s)", job.id, job.kind, job.saga_id)
            return JobResult(JobOutcome.LEASE_LOST), None
        except DatabaseBusy as exc:
            # Not the job's fault (a lock held by a paused process): back to the queue
            # for a moment, no failure counted. (Deadlocks were retried by the bus.)
            return JobResult(self._postpone(job, exc)), f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            return JobResult(self._fail_job(job, exc)), f"{type(exc).__name__}: {exc}"

    def _record_failure(
        self,
        job: ClaimedJob,
        error: str,
        reason: str | None,
        retry_after_seconds: float | None = None,
    ) -> JobResult:
        # A transient failure on the last attempt fails the step too (retries_exhausted).
        failure = c.RecordJobFailure(
            saga_id=job.saga_id,
            kind=job.kind,
            error=error,
            reason=reason,
            retry_after_seconds=retry_after_seconds,
        )
        handled, handed_over = self.bus.handle_job(failure, job)
        if handled is FailureHandled.FAILED:
            # A business outcome, not a fault of the system: info, with the reason.
            why = reason or "retries_exhausted"
            log.info("step %s failed (%s): %s; compensating", job.kind, why, error)
            return JobResult(JobOutcome.STEP_FAILED, handed_over)
        if handled is FailureHandled.IGNORED:  # the saga had moved on: the job is gone
            return JobResult(JobOutcome.DONE, handed_over)
        log.info("%s attempt failed, retrying after a backoff: %s", job.kind, error)
        return JobResult(JobOutcome.RETRY_SCHEDULED, handed_over)

    def _postpone(self, job: ClaimedJob, exc: Exception) -> JobOutcome:
        delay = self.busy_delay_seconds * random.uniform(0.5, 1.5)
        log.warning("job %s (%s) postponed %.2fs, database busy: %s", job.id, job.kind, delay, exc)
        try:
            self.queue.release(job, delay)
        except Exception as release_error:
            # Busy too (SQLite's write lock still held): the lease runs out instead, and
            # the reaper hands the job back.
            log.warning("job %s not handed back (%s); its lease will expire", job.id, release_error)
        return JobOutcome.POSTPONED

    def _fail_job(self, job: ClaimedJob, exc: Exception) -> JobOutcome:
        failures = job.failures + 1
        dead = failures >= self.max_job_failures
        log.exception("job %s (%s %s) failed (%d)", job.id, job.kind, job.saga_id, failures)
        try:
            self.queue.fail(
                job, f"{type(exc).__name__}: {exc}"[:2000], self.retry.delay(failures), dead
            )
        except LeaseLost:
            return JobOutcome.LEASE_LOST
        return JobOutcome.JOB_FAILED

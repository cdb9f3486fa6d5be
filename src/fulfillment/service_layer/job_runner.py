"""Runs one claimed job: the step's command, then the right kind of failure handling.

* success: the handler's transaction consumed the job and enqueued the next one;
* a business rule failed (expired prescription, no stock, bad destination, deadline):
  the step fails for good and compensation starts;
* a transient failure (carrier down): the attempt is recorded and the step retried
  with backoff until its attempts run out;
* anything else (a bug, the database away): the job itself backs off, and after
  `max_job_failures` it is parked as `dead` for an operator to inspect.
"""

from __future__ import annotations

import abc
import logging
from enum import StrEnum

from fulfillment.domain.errors import BusinessRuleViolation, TransientFailure
from fulfillment.domain.status import Compensation, Step
from fulfillment.service_layer import commands as c
from fulfillment.service_layer.jobs import ClaimedJob, LeaseLost
from fulfillment.service_layer.messagebus import MessageBus
from fulfillment.service_layer.retry import RetryPolicy

log = logging.getLogger("fulfillment.jobs")

STEPS = {s.value: s for s in Step}
COMPENSATIONS = {c.value: c for c in Compensation}


class JobOutcome(StrEnum):
    DONE = "done"
    STEP_FAILED = "step_failed"
    RETRY_SCHEDULED = "retry_scheduled"
    JOB_FAILED = "job_failed"
    LEASE_LOST = "lease_lost"


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
    def release(self, job: ClaimedJob) -> None: ...


class JobRunner:
    def __init__(
        self,
        bus: MessageBus,
        queue: AbstractJobQueue,
        retry: RetryPolicy,
        max_job_failures: int = 10,
    ) -> None:
        self.bus = bus
        self.queue = queue
        self.retry = retry
        self.max_job_failures = max_job_failures

    def run(self, job: ClaimedJob) -> JobOutcome:
        command = c.JOB_COMMANDS[job.kind](saga_id=job.saga_id)
        try:
            try:
                self.bus.handle(command, job=job)
                return JobOutcome.DONE
            except BusinessRuleViolation as exc:
                return self._record_failure(job, str(exc), exc.reason.value)
            except TransientFailure as exc:
                return self._record_failure(job, str(exc) or type(exc).__name__, None)
        except LeaseLost:
            log.warning("lease lost on job %s (%s %s)", job.id, job.kind, job.saga_id)
            return JobOutcome.LEASE_LOST
        except Exception as exc:
            return self._fail_job(job, exc)

    def _record_failure(self, job: ClaimedJob, error: str, reason: str | None) -> JobOutcome:
        if job.kind in STEPS:
            # A transient failure on the last attempt fails the step too (retries_exhausted).
            failed = self.bus.handle(
                c.RecordStepFailure(
                    saga_id=job.saga_id, step=STEPS[job.kind], error=error, reason=reason
                ),
                job=job,
            )
            return JobOutcome.STEP_FAILED if failed else JobOutcome.RETRY_SCHEDULED
        if job.kind in COMPENSATIONS:
            self.bus.handle(
                c.RecordCompensationFailure(
                    saga_id=job.saga_id, compensation=COMPENSATIONS[job.kind], error=error
                ),
                job=job,
            )
            return JobOutcome.RETRY_SCHEDULED
        raise RuntimeError(f"job {job.kind} failed: {error}")

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

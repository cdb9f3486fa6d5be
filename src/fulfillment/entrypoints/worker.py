"""The worker: claims jobs from the durable queue and runs each on a job thread.

One process keeps up to `concurrency` sagas in flight, each on one of up to
`concurrency` job threads: a thread waiting on the carrier (or the database) releases
the GIL, so slow carrier calls overlap. Leases are renewed by a heartbeat thread; each
loop also reaps expired leases of workers that died, and about once a minute deletes a
batch of expired idempotency keys and one of access-log rows past their retention.
On stop (SIGTERM), the worker claims nothing new, lets running jobs finish for a grace
period, and hands back whatever is still unfinished. Job threads are daemons, so a job
stuck past the grace period does not keep the process from exiting.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from fulfillment.adapters import access_log, idempotency
from fulfillment.bootstrap import App
from fulfillment.observability.logging import job_context
from fulfillment.service_layer.job_runner import JobOutcome
from fulfillment.service_layer.jobs import ClaimedJob

log = logging.getLogger("fulfillment.worker")

OutcomeHook = Callable[[ClaimedJob, JobOutcome], None]
T = TypeVar("T")
#: How soon a ready job must be due for `run(until_idle=True)` to wait for it.
IDLE_HORIZON_SECONDS = 5.0
#: Seconds between two batches of expired idempotency keys (or of old access-log rows)
#: deleted (sooner while a batch comes back full: a backlog drains, a batch at a time).
PRUNE_INTERVAL_SECONDS = 60.0
PRUNE_BACKLOG_SECONDS = 1.0


class Worker:
    def __init__(
        self,
        app: App,
        concurrency: int = 8,
        *,
        worker_id: str | None = None,
        lease_seconds: float | None = None,
        poll_interval: float | None = None,
        grace_seconds: float = 20.0,
        on_outcome: OutcomeHook | None = None,
    ) -> None:
        self.app = app
        self.concurrency = max(1, concurrency)
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.lease_seconds = lease_seconds or app.settings.job_lease_seconds
        self.poll_interval = poll_interval or app.settings.poll_interval_seconds
        self.grace_seconds = grace_seconds
        self.on_outcome = on_outcome
        self.stop_event = threading.Event()
        # Set only once shutdown is over: jobs finishing in the grace period keep their leases.
        self._heartbeat_stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        # Keyed by the claim (job id, claim token), not the job id alone: a worker woken
        # from a pause may claim a job again while its stale run of it still goes on, and
        # that run's end must not drop the fresh claim (and its heartbeats).
        self._in_flight: dict[tuple[int, str], ClaimedJob] = {}
        # Claimed jobs wait here for a job thread (daemons: a job stuck past the grace
        # period does not keep the process from exiting).
        self._jobs: queue.SimpleQueue[ClaimedJob | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self.processed = 0

    # --- public -------------------------------------------------------------------

    def stop(self) -> None:
        self.stop_event.set()
        self._wake.set()

    def run(self, until_idle: bool = False, timeout: float | None = None) -> None:
        """Run until stopped (or, with `until_idle`, until no job is running or due soon)."""
        deadline = time.monotonic() + timeout if timeout else None
        heartbeat = threading.Thread(target=self._heartbeat_loop, name="heartbeat", daemon=True)
        heartbeat.start()
        next_reap = next_prune = next_audit_prune = 0.0
        # After a claim that came back short, the queue had no more due jobs: a finished
        # job (which wakes the loop) is then no reason to ask again before the next poll.
        # Saves a claim transaction per finished job when the queue runs dry.
        may_have_more, next_poll = True, 0.0
        try:
            while not self.stop_event.is_set():
                if deadline and time.monotonic() > deadline:
                    raise TimeoutError("worker did not become idle in time")
                now = time.monotonic()
                if now >= next_reap:
                    self._safely(self.app.queue.reap_expired)
                    next_reap = now + max(0.5, min(5.0, self.lease_seconds / 2))
                if now >= next_prune:
                    next_prune = now + self._prune_idempotency_keys()
                if now >= next_audit_prune:
                    next_audit_prune = now + self._prune_access_log()
                claimed: list[ClaimedJob] = []
                free = self.concurrency - len(self._in_flight)
                # Refill in batches (a tenth of the slots) while others run: one claim
                # transaction per several jobs instead of one per job.
                batch = 1 if not self._in_flight else max(1, self.concurrency // 10)
                if free >= batch and (may_have_more or now >= next_poll):
                    claimed = self._claim()
                    may_have_more = len(claimed) >= free
                    if not may_have_more:
                        next_poll = now + self.poll_interval
                for job in claimed:
                    self._dispatch(job)
                if claimed:
                    continue
                if until_idle and not self._in_flight and self._queue_idle():
                    return
                self._wake.wait(
                    max(0.001, next_poll - time.monotonic())
                    if not may_have_more
                    else self.poll_interval
                )
                self._wake.clear()
        finally:
            self._shutdown()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    # --- internals ----------------------------------------------------------------

    def _claim(self) -> list[ClaimedJob]:
        free = self.concurrency - len(self._in_flight)
        if free <= 0:
            return []
        jobs = self._safely(
            lambda: self.app.queue.claim(free, self.worker_id, self.lease_seconds, chain=True)
        )
        with self._lock:
            for job in jobs or []:
                self._in_flight[job.id, job.claim_token] = job
        if jobs:
            # One read for the claimed sagas: their steps then start from the cache.
            self._safely(functools.partial(self.app.prefetch_sagas, [j.saga_id for j in jobs]))
        return jobs or []

    def _dispatch(self, job: ClaimedJob) -> None:
        """Hand a claimed job to a job thread. Threads are started as the jobs in flight
        need them (at most `concurrency`) and then kept: a handover through the queue
        costs a fraction of starting a thread, and never waits for one to be scheduled."""
        if len(self._threads) < min(self.concurrency, len(self._in_flight)):
            thread = threading.Thread(
                target=self._job_loop,
                args=(self._jobs,),
                name=f"job-{len(self._threads) + 1}",
                daemon=True,
            )
            self._threads.append(thread)
            thread.start()
        self._jobs.put(job)

    def _job_loop(self, jobs: queue.SimpleQueue[ClaimedJob | None]) -> None:
        while (job := jobs.get()) is not None:
            self._execute(job)

    def _execute(self, job: ClaimedJob) -> None:
        # The saga's fields on every line of this thread; the runner adds step and attempt.
        saga = {"order_id": job.saga_id, "saga_id": job.saga_id, "correlation_id": job.saga_id}
        with job_context(**saga, job_id=job.id):
            self._execute_chain(job)

    def _execute_chain(self, job: ClaimedJob) -> None:
        try:
            current: ClaimedJob | None = job
            while current is not None:
                result = self.app.runner.run_step(current)
                if self.on_outcome is not None:
                    self.on_outcome(current, result.outcome)
                # A step whose saga's next job is due now hands it over still claimed
                # (same row and token, so the heartbeat covers it): run it here, unless
                # the worker is stopping, in which case it goes back to the queue.
                current = result.next_job
                if current is not None and self.stop_event.is_set():
                    self._safely(functools.partial(self.app.queue.release, current))
                    current = None
        except Exception:
            log.exception("job %s crashed the runner", job.id)
        finally:
            with self._lock:
                self._in_flight.pop((job.id, job.claim_token), None)
                self.processed += 1
            self._wake.set()

    def _heartbeat_loop(self) -> None:
        interval = max(0.2, self.lease_seconds / 3)
        while not self._heartbeat_stop.wait(interval):
            with self._lock:
                jobs = list(self._in_flight.values())
            if jobs:
                self._safely(functools.partial(self.app.queue.heartbeat, jobs, self.lease_seconds))

    def _prune_idempotency_keys(self) -> float:
        """Delete one batch of expired idempotency keys; seconds until the next batch."""
        prune = functools.partial(
            idempotency.prune_expired, self.app.engine, self.app.settings.idempotency_ttl_seconds
        )
        return self._prune(prune, idempotency.PRUNE_BATCH, "expired idempotency keys")

    def _prune_access_log(self) -> float:
        """Delete one batch of access-log rows older than FULFILLMENT_AUDIT_RETENTION_DAYS;
        seconds until the next batch."""
        prune = functools.partial(
            access_log.prune_expired, self.app.engine, self.app.settings.audit_retention_days
        )
        return self._prune(prune, access_log.PRUNE_BATCH, "access-log rows past their retention")

    def _prune(self, prune: Callable[[], int], batch: int, what: str) -> float:
        deleted = self._safely(prune)
        if deleted:
            log.info("deleted %d %s", deleted, what)
        return PRUNE_BACKLOG_SECONDS if deleted == batch else PRUNE_INTERVAL_SECONDS

    def _queue_idle(self) -> bool:
        """No job running, and none due within IDLE_HORIZON_SECONDS (a retry's backoff
        is waited for; a wait's timer, due much later, is not)."""
        busy = self._safely(functools.partial(self.app.queue.has_work_within, IDLE_HORIZON_SECONDS))
        return busy is False

    def _shutdown(self) -> None:
        self.stop_event.set()
        deadline = time.monotonic() + self.grace_seconds
        while self._in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        self._heartbeat_stop.set()
        for _ in self._threads:
            self._jobs.put(None)  # each idle job thread ends; a busy one after its job
        # A later run() starts threads of its own.
        self._jobs, self._threads = queue.SimpleQueue(), []
        with self._lock:
            leftovers = list(self._in_flight.values())
        for job in leftovers:
            # Still running after the grace period: hand the job back. If the thread later
            # commits anyway, the claim-token check makes that commit fail harmlessly.
            self._safely(functools.partial(self.app.queue.release, job))

    def _safely(self, fn: Callable[[], T]) -> T | None:
        """Run a queue call; on a database error, log, pause briefly and return None."""
        try:
            return fn()
        except Exception:
            log.exception("worker %s: database call failed; retrying", self.worker_id)
            time.sleep(min(1.0, self.poll_interval * 10))
            return None

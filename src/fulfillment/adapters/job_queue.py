"""The durable job queue, in the same database as the events (docs/architecture.md, rule 4).

* Claims use ``FOR UPDATE SKIP LOCKED`` on PostgreSQL and MariaDB, so workers never wait
  on each other's rows; on SQLite the claim runs in a ``BEGIN IMMEDIATE`` transaction.
* A claim is a lease on the database clock: ``lease_expires_at``. Workers heartbeat the
  leases of long steps; the reaper hands expired jobs back, even if their worker is gone.
* Finishing a job (delete) and enqueuing the next happen in the step's own transaction
  (see ``unit_of_work``), always checked against the claim token.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Select,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.sql.elements import ColumnElement

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import backend_of, db_now_epoch, read_connection
from fulfillment.adapters.group_commit import GroupCommitter
from fulfillment.adapters.prepared import Prepared, execute, fetch_all, rowcount
from fulfillment.service_layer.job_runner import AbstractJobQueue
from fulfillment.service_layer.jobs import ClaimedJob, JobSpec, LeaseLost, commit_clock
from fulfillment.service_layer.ports import SagaJob, SagaJobs

READY, RUNNING, DEAD = "ready", "running", "dead"
#: Not a status of its own: a `ready` job due later (`queue_depth`).
SCHEDULED = "scheduled"


@dataclass(frozen=True)
class JobRow:
    id: int
    saga_id: str
    kind: str
    status: str
    run_at: float
    lease_expires_at: float | None
    claim_token: str | None
    claimed_by: str | None
    claims: int
    failures: int
    last_error: str | None
    created_at: float


@functools.cache
def _enqueue_statement(backend: str) -> Prepared:
    now = db_now_epoch(backend)
    return Prepared(
        insert(t.jobs).values(
            saga_id=bindparam("saga_id"),
            kind=bindparam("kind"),
            status=READY,
            run_at=now + bindparam("delay", type_=t.jobs.c.run_at.type),
            created_at=now,
            claims=0,
            failures=0,
        )
    )


# The step path's statements run on the raw cursor (adapters/prepared.py).
# A job row is the claim (id, token) *and* the step it is at (kind). A step that runs
# again after its transaction's COMMIT failed ambiguously (the connection dropped after
# the server committed) finds its work done; it must not consume the row, which by then
# is its saga's next job, still held under the same token by a chained advance.
_HELD = (
    t.jobs.c.id == bindparam("job_id"),
    t.jobs.c.claim_token == bindparam("token"),
    t.jobs.c.kind == bindparam("kind"),
)
_FINISH = Prepared(delete(t.jobs).where(*_HELD))


def enqueue(conn: Connection, specs: Sequence[JobSpec]) -> None:
    statement = _enqueue_statement(backend_of(conn))
    for spec in specs:
        rowcount(
            conn,
            statement,
            {"saga_id": spec.saga_id, "kind": spec.kind, "delay": spec.delay_seconds},
        )


_ADVANCE_HELD = Prepared(
    update(t.jobs)
    .where(*_HELD)
    .values(kind=bindparam("next_kind"), claims=1, failures=0, last_error=None)
)


@functools.cache
def _advance_ready_statement(backend: str) -> Prepared:
    return Prepared(
        update(t.jobs)
        .where(*_HELD)
        .values(
            kind=bindparam("next_kind"),
            status=READY,
            run_at=db_now_epoch(backend) + bindparam("delay", type_=t.jobs.c.run_at.type),
            claim_token=None,
            claimed_by=None,
            lease_expires_at=None,
            claims=0,
            failures=0,
            last_error=None,
        )
    )


def advance(conn: Connection, job: ClaimedJob, next_job: JobSpec | None) -> ClaimedJob | None:
    """Turn the job this transaction ran into its saga's next job, or remove it.

    The saga keeps one job row (its id stays, so one saga never has two jobs). When the
    worker asked to chain and the next job is due now, the row stays claimed by this
    worker and the returned job is run by the same thread, without a round through the
    queue; otherwise it goes back to `ready` at its `run_at`. LeaseLost if another worker
    has taken the job meanwhile.
    """
    if next_job is None:
        finish(conn, job)
        return None
    params = {
        "job_id": job.id,
        "token": job.claim_token,
        "kind": job.kind,
        "next_kind": next_job.kind,
    }
    chain = job.chain_lease_seconds is not None and next_job.delay_seconds <= 0
    if chain:
        changed = rowcount(conn, _ADVANCE_HELD, params)
    else:
        params["delay"] = next_job.delay_seconds
        changed = rowcount(conn, _advance_ready_statement(backend_of(conn)), params)
    if changed != 1:
        raise LeaseLost(f"job {job.id} is no longer held by this worker")
    if not chain:
        return None
    return ClaimedJob(
        job.id,
        job.saga_id,
        next_job.kind,
        job.claim_token,
        claims=1,
        failures=0,
        chain_lease_seconds=job.chain_lease_seconds,
    )


def queue_depth(conn: Connection) -> dict[str, int]:
    """THE count of the queue: jobs `ready` (due now), `scheduled` (ready, due later, a
    retry's backoff), `running` and `dead`; statuses without jobs are left out."""
    later = func.sum(case((t.jobs.c.run_at > db_now_epoch(backend_of(conn)), 1), else_=0))
    rows = conn.execute(
        select(t.jobs.c.status, func.count(), later).group_by(t.jobs.c.status)
    ).all()
    depth: dict[str, int] = {}
    for status, count, due_later in rows:
        if status == READY:
            depth[SCHEDULED] = int(due_later or 0)
            depth[READY] = int(count) - depth[SCHEDULED]
        else:
            depth[str(status)] = int(count)
    return {status: n for status, n in depth.items() if n}


def by_row_status(depth: Mapping[str, int]) -> dict[str, int]:
    """`queue_depth` by the rows' status: `ready` counts the scheduled ones too."""
    rest = dict(depth)
    ready = rest.pop(READY, 0) + rest.pop(SCHEDULED, 0)
    return {**({READY: ready} if ready else {}), **rest}


def count_by_status(conn: Connection) -> dict[str, int]:
    """Jobs by their row's status (`ready` counts the scheduled ones too)."""
    return by_row_status(queue_depth(conn))


def finish(conn: Connection, job: ClaimedJob) -> None:
    """Remove the job this transaction ran; LeaseLost if another worker has taken it."""
    held = {"job_id": job.id, "token": job.claim_token, "kind": job.kind}
    if rowcount(conn, _FINISH, held) != 1:
        raise LeaseLost(f"job {job.id} is no longer held by this worker")


@functools.cache
def _claim_statements(backend: str) -> tuple[Prepared | None, Prepared]:
    """The claim's reads, built once: (SQLite's peek, the due jobs, locked on servers)."""
    query = (
        select(t.jobs.c.id, t.jobs.c.saga_id, t.jobs.c.kind, t.jobs.c.claims, t.jobs.c.failures)
        .where(t.jobs.c.status == READY, t.jobs.c.run_at <= db_now_epoch(backend))
        .order_by(t.jobs.c.run_at)
        .limit(bindparam("limit"))
    )
    peek = Prepared(query.with_only_columns(t.jobs.c.id)) if backend == "sqlite" else None
    if backend != "sqlite":
        query = query.with_for_update(skip_locked=True)
    return peek, Prepared(query)


@functools.cache
def _claim_mark(backend: str, count: int) -> Prepared:
    """The claim's mark of `count` jobs (ids bound as i0, i1, ...; a claim pads its ids to
    a power of two with its last one, so a handful of statements serve every size)."""
    return Prepared(
        update(t.jobs)
        .where(t.jobs.c.id.in_([bindparam(f"i{n}") for n in range(count)]))
        .values(
            status=RUNNING,
            claim_token=bindparam("token"),
            claimed_by=bindparam("worker"),
            lease_expires_at=db_now_epoch(backend) + bindparam("lease", type_=t.jobs.c.run_at.type),
            claims=t.jobs.c.claims + 1,
        )
    )


class SqlAlchemyJobQueue(AbstractJobQueue):
    def __init__(
        self, engine: Engine, max_claims: int = 10, group: GroupCommitter | None = None
    ) -> None:
        self.engine = engine
        self.backend = backend_of(engine)
        self.max_claims = max_claims
        # On SQLite (one writer) the queue's writes join the worker's group commit: a
        # claim does not wait in SQLite's busy handler while the group holds the lock.
        self.group = group if self.backend == "sqlite" else None

    def _write(self) -> AbstractContextManager[Connection]:
        """A write transaction: a turn in the group commit, or a transaction of its own."""
        return self.group.transaction() if self.group is not None else self.engine.begin()

    def _now(self) -> ColumnElement[float]:
        return db_now_epoch(self.backend)

    def claim(
        self, limit: int, worker_id: str, lease_seconds: float, chain: bool = False
    ) -> list[ClaimedJob]:
        if limit <= 0:
            return []
        # On the raw cursor (adapters/prepared.py): a worker claims many times a second.
        peek, query = _claim_statements(self.backend)
        if peek is not None:
            # Look before taking the write lock: an idle poll should not block writers.
            with read_connection(self.engine) as conn:
                if not fetch_all(conn, peek, {"limit": 1}):
                    return []
        token = str(uuid.uuid4())
        with self._write() as conn:
            rows = fetch_all(conn, query, {"limit": limit})
            if not rows:
                return []
            ids = [row[0] for row in rows]
            size = 1 << (len(ids) - 1).bit_length()
            ids += [ids[-1]] * (size - len(ids))
            execute(
                conn,
                _claim_mark(self.backend, size),
                {
                    **{f"i{n}": job_id for n, job_id in enumerate(ids)},
                    "token": token,
                    "worker": worker_id[:100],
                    "lease": lease_seconds,
                },
            )
        chain_lease = lease_seconds if chain else None
        ready = next(commit_clock)  # the claim has committed: its steps read from here
        return [
            ClaimedJob(
                job_id,
                saga_id,
                kind,
                token,
                claims + 1,
                failures,
                chain_lease,
                ready_tick=ready,
            )
            for job_id, saga_id, kind, claims, failures in rows
        ]

    def _skip_locked(self, query: Select[Any]) -> Select[Any]:
        """Lock the rows a multi-row write will touch, skipping (never waiting on) any that
        another transaction holds, in id order; SQLite's one writer needs no row locks."""
        query = query.order_by(t.jobs.c.id)
        return query if self.backend == "sqlite" else query.with_for_update(skip_locked=True)

    def heartbeat(self, jobs: list[ClaimedJob], lease_seconds: float) -> int:
        """Renew the leases of these claims (job id and claim token). A row another
        transaction holds (this worker's own group advancing it) is skipped this time."""
        if not jobs:
            return 0
        claims = sorted({(j.id, j.claim_token) for j in jobs})
        with self._write() as conn:
            ids = self._held_rows(
                conn,
                self._skip_locked(
                    select(t.jobs.c.id).where(
                        tuple_(t.jobs.c.id, t.jobs.c.claim_token).in_(claims),
                        t.jobs.c.status == RUNNING,
                    )
                ),
            )
            if not ids:
                return 0
            result = conn.execute(
                update(t.jobs)
                .where(t.jobs.c.id.in_(ids))
                .values(lease_expires_at=self._now() + lease_seconds)
            )
            return int(result.rowcount)

    def reap_expired(self, limit: int = 1000) -> int:
        """Give back jobs whose lease ran out; a job that keeps losing its worker goes dead.

        A short transaction of its own that never waits: the expired rows are locked with
        SKIP LOCKED in id order first. A row still locked belongs to a transaction that is
        alive or about to be ended by the server's idle-in-transaction timeout; the next
        reap takes it. (One unordered multi-row UPDATE used to wait on a paused worker's
        row while holding others, and deadlocked with that worker's group once it woke.)
        """
        with self._write() as conn:
            ids = self._held_rows(
                conn,
                self._skip_locked(
                    select(t.jobs.c.id)
                    .where(t.jobs.c.status == RUNNING, t.jobs.c.lease_expires_at < self._now())
                    .limit(limit)
                ),
            )
            if not ids:
                return 0
            lost_too_often = t.jobs.c.claims >= self.max_claims
            conn.execute(
                update(t.jobs)
                .where(t.jobs.c.id.in_(ids))
                .values(
                    status=case((lost_too_often, DEAD), else_=READY),
                    last_error=case(
                        (lost_too_often, "lease expired too many times"),
                        else_=t.jobs.c.last_error,
                    ),
                    claim_token=None,
                    claimed_by=None,
                    lease_expires_at=None,
                )
            )
            return len(ids)

    @staticmethod
    def _held_rows(conn: Connection, query: Select[Any]) -> list[int]:
        return [int(row_id) for row_id in conn.execute(query).scalars()]

    def fail(self, job: ClaimedJob, error: str, delay_seconds: float, dead: bool) -> None:
        with self._write() as conn:
            result = conn.execute(
                update(t.jobs)
                .where(
                    t.jobs.c.id == job.id,
                    t.jobs.c.claim_token == job.claim_token,
                    t.jobs.c.kind == job.kind,
                )
                .values(
                    status=DEAD if dead else READY,
                    run_at=self._now() + delay_seconds,
                    failures=t.jobs.c.failures + 1,
                    last_error=error,
                    claim_token=None,
                    lease_expires_at=None,
                )
            )
            if result.rowcount != 1:
                raise LeaseLost(f"job {job.id} is no longer held by this worker")

    def release(self, job: ClaimedJob, delay_seconds: float = 0.0) -> None:
        with self._write() as conn:
            conn.execute(
                update(t.jobs)
                .where(t.jobs.c.id == job.id, t.jobs.c.claim_token == job.claim_token)
                .values(
                    status=READY,
                    run_at=self._now() + delay_seconds,
                    claim_token=None,
                    claimed_by=None,
                    lease_expires_at=None,
                )
            )

    # --- inspection and operator actions ------------------------------------------

    def list(self, status: str | None = None, limit: int = 100) -> list[JobRow]:
        query = select(t.jobs).order_by(t.jobs.c.id).limit(limit)
        if status:
            query = query.where(t.jobs.c.status == status)
        with self.engine.connect() as conn:
            return [JobRow(**row._mapping) for row in conn.execute(query)]

    def for_saga(self, saga_id: str) -> JobRow | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.jobs).where(t.jobs.c.saga_id == saga_id)).first()
            return JobRow(**row._mapping) if row else None

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return count_by_status(conn)

    def has_work_within(self, seconds: float) -> bool:
        """Whether a job is running, or ready and due within `seconds` (a retry's short
        backoff); a wait's timer due later is no work yet."""
        j = t.jobs
        horizon = db_now_epoch(backend_of(self.engine)) + seconds
        query = select(j.c.id).where(
            or_(j.c.status == RUNNING, and_(j.c.status == READY, j.c.run_at <= horizon))
        )
        with self.engine.connect() as conn:
            return conn.execute(query.limit(1)).first() is not None

    def retry_dead(self, saga_id: str) -> bool:
        """Put a dead job of the saga back in line, with its failure count reset."""
        with self._write() as conn:
            return SqlAlchemySagaJobs(conn).revive(saga_id)


class SqlAlchemySagaJobs(SagaJobs):
    """The sagas' job rows, on a unit of work's connection (in its transaction)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def get(self, saga_id: str) -> SagaJob | None:
        row = self.conn.execute(
            select(t.jobs.c.kind, t.jobs.c.status).where(t.jobs.c.saga_id == saga_id)
        ).first()
        return SagaJob(row.kind, row.status) if row is not None else None

    def revive(self, saga_id: str) -> bool:
        result = self.conn.execute(
            update(t.jobs)
            .where(t.jobs.c.saga_id == saga_id, t.jobs.c.status == DEAD)
            .values(
                status=READY,
                run_at=db_now_epoch(backend_of(self.conn)),
                failures=0,
                claims=0,
                claim_token=None,
            )
        )
        return bool(result.rowcount)

    def cancel(self, saga_id: str) -> None:
        self.conn.execute(delete(t.jobs).where(t.jobs.c.saga_id == saga_id))

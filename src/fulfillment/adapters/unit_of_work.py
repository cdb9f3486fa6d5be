"""The SQLAlchemy unit of work: one connection, one transaction, committed only on request.

A job's unit of work may instead be one step of a group commit (``adapters/group_commit``):
it then runs in a savepoint of the worker's shared transaction and its commit returns once
that transaction has committed.
"""

from __future__ import annotations

import dataclasses
from types import TracebackType

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from fulfillment.adapters import job_queue
from fulfillment.adapters.db_errors import translate
from fulfillment.adapters.event_store import SqlAlchemyEventStore, StreamCache
from fulfillment.adapters.group_commit import GroupCommitter
from fulfillment.adapters.idempotency import SqlAlchemyIdempotencyKeys
from fulfillment.adapters.mapper import EventMapper
from fulfillment.adapters.prepared import pipelined, run_sql
from fulfillment.adapters.repository import SqlAlchemyOrderRepository, SqlAlchemySagaRepository
from fulfillment.adapters.services import (
    SqlAlchemyInventoryService,
    SqlAlchemyPrescriptionService,
    SqlAlchemyShipmentService,
)
from fulfillment.domain.saga_definition import REGISTRY
from fulfillment.service_layer.jobs import ClaimedJob, JobSpec, commit_clock
from fulfillment.service_layer.messagebus import (
    ConcurrencyError,
    DatabaseBusy,
    RetryableDatabaseError,
)
from fulfillment.service_layer.unit_of_work import AbstractUnitOfWork, StreamAppend


class SqlAlchemyUnitOfWork(AbstractUnitOfWork):
    conn: Connection

    def __init__(
        self,
        engine: Engine,
        mapper: EventMapper,
        job: ClaimedJob | None = None,
        causation_id: str | None = None,
        cache: StreamCache | None = None,
        group: GroupCommitter | None = None,
        idempotency_ttl_seconds: float | None = None,
        stock_group: GroupCommitter | None = None,
        stock_alone: bool = False,
    ) -> None:
        """`stock_alone`: a step that writes stock commits in a transaction of its own
        (`FULFILLMENT_STOCK_COMMIT=step`), not in a group."""
        super().__init__(job, causation_id)
        self.engine = engine
        self.mapper = mapper
        self.cache = cache
        # A step that writes rows many sagas share (stock) takes its turn in the
        # worker's stock group, where there is one, or commits alone
        # (``adapters/group_commit.py``).
        if job is not None and REGISTRY.writes_shared_rows(job.kind):
            if stock_alone:
                group = None
            elif stock_group is not None:
                group = stock_group
        self.group = group
        #: How long an idempotency key holds (None: for ever).
        self.idempotency_ttl_seconds = idempotency_ttl_seconds
        self._conn: Connection | None = None
        self._in_group = False

    def _begin(self) -> None:
        # A job's transaction is a turn in the worker's group commit, when there is one
        # (a look without a savepoint when read-only).
        self._in_group = self.group is not None and self.job is not None
        try:
            if self._in_group:
                assert self.group is not None
                assert self.job is not None
                self._conn = self.conn = self.group.enter(
                    savepoint=not self.read_only_mode, ready_tick=self.job.ready_tick
                )
            else:
                self._conn = self.conn = self.engine.connect()
                if self.read_only_mode:
                    self.conn.execution_options(sqlite_begin="DEFERRED")
                self.conn.begin()
        except DBAPIError as exc:
            # A wait for the append lock or SQLite's write lock ran out, or the server is
            # gone (the group has already been failed and its connection dropped).
            self._in_group = False
            if self._conn is not None and not self._conn.closed:
                self._conn.close()
            self._conn = None
            translated = translate(exc)
            if translated is None:
                raise
            raise translated from exc
        except PoolTimeout as exc:  # no free connection within the pool's bound
            raise DatabaseBusy(str(exc)) from exc
        self.events = SqlAlchemyEventStore(
            self.conn, self.mapper, self.cache, trust_cache=self.job is not None
        )
        self.orders = SqlAlchemyOrderRepository(self.events, self.track)
        self.sagas = SqlAlchemySagaRepository(self.events, self.track)
        self.prescriptions = SqlAlchemyPrescriptionService(
            self.conn, patient_data=self.mapper.patient_data
        )
        self.inventory = SqlAlchemyInventoryService(self.conn)
        self.shipments = SqlAlchemyShipmentService(self.conn)
        self.idempotency = SqlAlchemyIdempotencyKeys(
            self.conn, ttl_seconds=self.idempotency_ttl_seconds
        )
        self.jobs = job_queue.SqlAlchemySagaJobs(self.conn)

    def _commit(self, appends: list[StreamAppend], jobs: list[JobSpec]) -> ClaimedJob | None:
        continuation: ClaimedJob | None = None
        saga_done = False
        if self.job is not None:
            own = [spec for spec in jobs if spec.saga_id == self.job.saga_id]
            jobs = [spec for spec in jobs if spec.saga_id != self.job.saga_id]
            self.events.verify({append.stream_id for append in appends})
            # The job row of the saga becomes its next job (or goes): one statement.
            continuation = job_queue.advance(self.conn, self.job, own[0] if own else None)
            saga_done = not own
        job_queue.enqueue(self.conn, jobs)
        ready_tick = 0
        if self._in_group:
            assert self.group is not None
            rows = self.events.rows(appends, self.causation_id, self.job_started_at)
            self._conn, self._in_group = None, False  # the turn ends here
            group = self.group.keep(rows)
            group.wait()  # a failed group raises: __exit__ drops the streams from the cache
            ready_tick = group.assigned_tick
        else:
            self._append_and_commit(appends)
        if continuation is not None:  # what it reads has now committed
            continuation = dataclasses.replace(
                continuation, ready_tick=ready_tick or next(commit_clock)
            )
        if saga_done:
            # The saga has no job left (it ended, or waits for an operator): its streams
            # leave the cache, which so holds the sagas in flight, not every saga seen.
            self.events.forget()
        else:
            self.events.after_commit(appends)
        self.job = None  # consumed: a second commit in this unit of work starts fresh
        return continuation

    def _append_and_commit(self, appends: list[StreamAppend]) -> None:
        """The events' INSERT and the COMMIT: one round trip on PostgreSQL (psycopg's
        pipeline), where `conn.commit()` then finds the transaction already ended."""
        if self.conn.dialect.name != "postgresql":
            self.events.append(appends, self.causation_id, self.job_started_at)
            self.conn.commit()
            return
        try:
            with pipelined(self.conn):
                self.events.append(appends, self.causation_id, self.job_started_at)
                run_sql(self.conn, "COMMIT")
        except IntegrityError as exc:  # an expected version was stale (answered at the end)
            raise ConcurrencyError(str(exc.orig)) from exc
        self.conn.commit()

    def rollback(self, abort: BaseException | None = None) -> None:
        """Undo this unit of work. In a group, `abort` (a database error that may leave
        the transaction holding locks, or already aborted) rolls back the whole group."""
        if self._in_group:
            assert self.group is not None
            self._conn, self._in_group = None, False
            if abort is not None:
                self.group.abort(abort)
            elif self.read_only_mode:
                self.group.leave_look()
            else:
                self.group.drop()
            return
        if self._conn is not None:
            try:
                self._conn.rollback()
            finally:
                self._conn.close()
                self._conn = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        translated = translate(exc) if isinstance(exc, DBAPIError) else None
        # A deadlock, a lock or statement timeout, a lost connection: never go on (or
        # retry) inside the transaction that met it; it may still hold row locks and the
        # append lock. A failed statement of any other kind undoes only this step.
        aborts = isinstance(translated or exc, RetryableDatabaseError | DatabaseBusy)
        self.rollback(abort=exc if aborts else None)
        if isinstance(exc, DBAPIError | ConcurrencyError | RetryableDatabaseError | DatabaseBusy):
            self.events.forget()  # the command runs again: on fresh events
        if translated is not None:
            raise translated from exc

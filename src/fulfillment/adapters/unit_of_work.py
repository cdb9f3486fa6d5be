"""The SQLAlchemy unit of work: one connection, one transaction, committed only on request.

A job's unit of work may instead be one step of a group commit (``adapters/group_commit``):
it then runs in a savepoint of the worker's shared transaction and its commit returns once
that transaction has committed.
"""

from __future__ import annotations

from types import TracebackType

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from fulfillment.adapters import job_queue
from fulfillment.adapters.event_store import SqlAlchemyEventStore, StreamCache
from fulfillment.adapters.group_commit import GroupCommitter
from fulfillment.adapters.idempotency import SqlAlchemyIdempotencyKeys
from fulfillment.adapters.mapper import EventMapper
from fulfillment.adapters.repository import SqlAlchemyOrderRepository, SqlAlchemySagaRepository
from fulfillment.adapters.services import (
    SqlAlchemyInventoryService,
    SqlAlchemyPrescriptionService,
    SqlAlchemyShipmentService,
)
from fulfillment.service_layer.jobs import ClaimedJob, JobSpec
from fulfillment.service_layer.messagebus import ConcurrencyError, RetryableDatabaseError
from fulfillment.service_layer.unit_of_work import AbstractUnitOfWork, StreamAppend

# Deadlock / serialization failure / lock wait timeout / SQLite busy: run the whole thing again.
_RETRYABLE_SQLSTATES = {"40001", "40P01"}
_RETRYABLE_MYSQL_CODES = {1205, 1213}


def is_retryable(exc: DBAPIError) -> bool:
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate in _RETRYABLE_SQLSTATES:
        return True
    args = getattr(orig, "args", ())
    if args and isinstance(args[0], int) and args[0] in _RETRYABLE_MYSQL_CODES:
        return True
    return "database is locked" in str(orig)


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
    ) -> None:
        super().__init__(job, causation_id)
        self.engine = engine
        self.mapper = mapper
        self.cache = cache
        self.group = group
        self._conn: Connection | None = None
        self._in_group = False

    def _begin(self) -> None:
        # A job's transaction is a turn in the worker's group commit, when there is one
        # (a look without a savepoint when read-only).
        self._in_group = self.group is not None and self.job is not None
        if self._in_group:
            assert self.group is not None
            self._conn = self.conn = self.group.enter(savepoint=not self.read_only_mode)
        else:
            self._conn = self.conn = self.engine.connect()
            if self.read_only_mode:
                self.conn.execution_options(sqlite_begin="DEFERRED")
            self.conn.begin()
        self.events = SqlAlchemyEventStore(
            self.conn, self.mapper, self.cache, trust_cache=self.job is not None
        )
        self.orders = SqlAlchemyOrderRepository(self.events, self.track)
        self.sagas = SqlAlchemySagaRepository(self.events, self.track)
        self.prescriptions = SqlAlchemyPrescriptionService(self.conn)
        self.inventory = SqlAlchemyInventoryService(self.conn)
        self.shipments = SqlAlchemyShipmentService(self.conn)
        self.idempotency = SqlAlchemyIdempotencyKeys(self.conn)

    def _commit(self, appends: list[StreamAppend], jobs: list[JobSpec]) -> None:
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
        if self._in_group:
            assert self.group is not None
            rows = self.events.rows(appends, self.causation_id)
            self._conn, self._in_group = None, False  # the turn ends here
            group = self.group.leave(rows)
            assert group is not None
            group.wait()  # a failed group raises: __exit__ drops the streams from the cache
        else:
            self.events.append(appends, self.causation_id)
            self.conn.commit()
        if saga_done:
            # The saga has no job left (it ended, or waits for an operator): its streams
            # leave the cache, which so holds the sagas in flight, not every saga seen.
            self.events.forget()
        else:
            self.events.after_commit(appends)
        if self.job is not None and continuation is not None:
            self.job.continuation.append(continuation)
        self.job = None  # consumed: a second commit in this unit of work starts fresh

    def rollback(self) -> None:
        if self._in_group:
            assert self.group is not None
            self._conn, self._in_group = None, False
            if self.read_only_mode:
                self.group.leave_look()
            else:
                self.group.leave(None)
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
        self.rollback()
        if isinstance(exc, DBAPIError | ConcurrencyError | RetryableDatabaseError):
            self.events.forget()  # the command runs again: on fresh events
        if isinstance(exc, IntegrityError):
            # A unique key (one prescription / reservation / shipment per order, one job
            # per saga) was taken by a concurrent transaction: re-run on fresh state.
            raise ConcurrencyError(str(exc.orig)) from exc
        if isinstance(exc, DBAPIError) and is_retryable(exc):
            raise RetryableDatabaseError(str(exc.orig)) from exc

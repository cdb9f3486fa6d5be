"""Group commit: the job threads of one worker take turns inside one shared transaction.

A step's transaction is small, and what limits a worker is the commit: on SQLite one
writer at a time and an fsync per commit; on PostgreSQL and MariaDB the event-append lock
(``adapters/db.py``), held from the events INSERT through the COMMIT's flush. So the job
threads of a worker do not commit one by one. Each runs its step inside a SAVEPOINT of a
shared transaction, one thread at a time (a turn), and the transaction commits when no
other thread is queued for a turn, or once it holds `max_members` steps. Under load, the
steps that arrive while one commit is flushing form the next group: the group size tunes
itself, and an idle worker commits every step at once, as before.

docs/architecture.md, rule 1 still holds for every step: its service-table changes, its job advance
and its events are in one savepoint and become durable in the same COMMIT. A thread whose
step joined a group waits for that COMMIT before it goes on (cache, continuation,
success), so nothing is acted on before it is durable. A step that fails (a business
rule, a lost lease, a unique-key conflict) rolls back its own savepoint only. If the group
itself fails (the COMMIT, a deadlock that aborted the transaction), every step in it was
rolled back, and each one's thread gets a `RetryableDatabaseError`: the command bus runs
the step again, as after any deadlock. A step that meets a deadlock, a lock or statement
timeout or a lost connection fails the whole group (`abort`): retrying inside the same
transaction would keep its row locks and the append lock while it waits again, which
let a worker's group and another worker's reaper deadlock again and again
(``adapters/db_errors.py`` says which errors abort what).

Groups of different worker processes run side by side: PostgreSQL has no append lock
(positions come from transaction ids), and MariaDB's is taken by the events' INSERT, the
last statement before the COMMIT, by a holder that then waits on no row
(``adapters/db.py``). What groups must not share is a hot row, held from the step that
wrote it to its group's COMMIT: two workers' groups that each hold one stock row and want
the other's deadlock (seen, before the groups took one global lock first). So a worker
has two committers. Steps declared `shared_rows` (they write stock) take their turns in
its *stock group*, which takes the stock lock (``db.stock_lock_sql``) as its first
statement: the stock groups of different workers take turns, and cannot deadlock. Every
other step joins the main group, which writes only rows of its own sagas and jobs and
waits for no other worker's. With `FULFILLMENT_STOCK_COMMIT=step` there is no stock
group: each stock step commits alone and locks only its own SKUs, in sorted order
(``adapters/unit_of_work.py``). On SQLite (one writer) there is one group for all steps.
Within a group, steps overlap their round trips with the other threads' Python work.
The events of all steps are inserted by one statement just before the COMMIT.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from fulfillment.adapters.db_errors import translate
from fulfillment.adapters.prepared import pipelined, run_sql
from fulfillment.service_layer.jobs import commit_clock
from fulfillment.service_layer.messagebus import DatabaseBusy, RetryableDatabaseError

log = logging.getLogger("fulfillment.group_commit")

EventRow = dict[str, Any]


@dataclass(eq=False)
class Group:
    """Steps that commit together; their threads wait on `wait()`."""

    rows: list[EventRow] = field(default_factory=list)
    members: int = 0
    error: BaseException | None = None
    #: The COMMIT (its events' INSERT) waited on a lock for too long.
    busy: bool = False
    done: threading.Event = field(default_factory=threading.Event)
    #: Where positions come from transaction ids (PostgreSQL): a `commit_clock` tick taken
    #: once the group's transaction id was assigned (the first thing its transaction
    #: does). A step that follows one of this group's steps may join a later group only
    #: if that one's id was assigned after this tick (`GroupCommitter.enter`).
    assigned_tick: int = 0

    def wait(self) -> None:
        """Block until the group's COMMIT; RetryableDatabaseError if it did not happen
        (DatabaseBusy if its own COMMIT met a lock wait that ran out: the steps wait
        their turn, as one that met the lock itself does)."""
        self.done.wait()
        if self.error is not None:
            if self.busy:
                raise DatabaseBusy(f"group commit waited too long: {self.error}") from self.error
            raise RetryableDatabaseError(f"group commit failed: {self.error}") from self.error


class GroupCommitter:
    """One worker's shared write transaction. Thread-safe; one turn at a time."""

    def __init__(
        self,
        engine: Engine,
        insert_events: Callable[[Connection, list[EventRow]], None],
        max_members: int = 64,
        lock_sql: str | None = None,
    ) -> None:
        """`lock_sql`: a statement each group runs first, taking a lock held to its
        COMMIT (the stock group's, ``adapters/db.stock_lock_sql``)."""
        self.engine = engine
        #: Positions come from transaction ids (PostgreSQL, migration 0013): see `enter`.
        self._by_xid = engine.dialect.name == "postgresql"
        #: What a group's transaction runs first (one round trip): the lock, and on
        #: PostgreSQL the assignment of its transaction id, so that ids follow the order
        #: in which this process began its groups.
        self._first_sql = [lock_sql] if lock_sql is not None else []
        if self._by_xid:
            self._first_sql.append("SELECT pg_current_xact_id()")
        #: The `commit_clock` tick taken before the open transaction's id was assigned.
        self._began = 0
        #: The open transaction has run `_first_sql`: a look (a turn without a savepoint,
        #: which writes nothing) does not, so a group begun by a look takes the lock and
        #: its id at its first step, and a look alone costs no more than BEGIN, ROLLBACK.
        self._assigned = False
        self.insert_events = insert_events
        self.max_members = max(1, max_members)
        self._turn = threading.Lock()
        self._counter = threading.Lock()
        self._queued = 0
        self._conn: Connection | None = None
        self._in_step = False  # a savepoint "step" is open
        self._group = Group()
        #: Groups committed and steps in them (for tests and the benchmark's curiosity).
        self.commits = 0
        self.committed_steps = 0

    def enter(self, savepoint: bool = True, ready_tick: int = 0) -> Connection:
        """Wait for a turn; return the shared connection, inside a fresh savepoint (or,
        for a look that writes nothing, without one: end it with `leave_look`).

        `ready_tick` (``ClaimedJob.ready_tick``): where positions come from transaction
        ids (PostgreSQL), a group whose transaction id was asked for before that tick is
        committed first and the step starts the next one. Its id might be older than
        that of the commit the step builds on, and the step's events would get positions
        below the events they follow in their own stream. The tick is the predecessor
        group's `assigned_tick` for a step handed over by the step before it in this
        process, so a group begun while that one was still open takes the step as long
        as it began after that one's id was assigned; after a claim, the claim's commit."""
        with self._counter:
            self._queued += 1
        self._turn.acquire()
        with self._counter:
            self._queued -= 1
        try:
            if self._conn is None:
                self._conn = self.engine.connect()
            if self._by_xid and self._assigned and self._began < ready_tick:
                self._flush()
                if self._conn is None:
                    self._conn = self.engine.connect()
            if not self._conn.in_transaction():
                self._conn.begin()
                self._assigned = False
            if savepoint and not self._assigned:
                # BEGIN, the lock, the id and the step's savepoint: one round trip on
                # PostgreSQL.
                self._began = next(commit_clock)
                with pipelined(self._conn):
                    for sql in [*self._first_sql, "SAVEPOINT step"]:
                        run_sql(self._conn, sql)
                self._group.assigned_tick = next(commit_clock)
                self._assigned = self._in_step = True
            elif savepoint:
                run_sql(self._conn, "SAVEPOINT step")
                self._in_step = True
        except BaseException as exc:
            self._fail_group(exc)
            self._turn.release()
            raise
        return self._conn

    def keep(self, rows: list[EventRow]) -> Group:
        """End the turn keeping the step, whose events are `rows`; returns the group to
        wait on for its COMMIT. Never raises: a failure fails the group."""
        group = self._group
        try:
            self._end_step()
            # A kept step's savepoint is not released (a round trip saved): the next
            # step's SAVEPOINT of the same name supersedes it, and COMMIT ends all.
            group.members += 1
            group.rows.extend(rows)
            self._end_turn(group)
            return group
        finally:
            self._turn.release()

    def drop(self) -> None:
        """End the turn rolling the step back (its savepoint only). Never raises."""
        try:
            self._end_step()
            assert self._conn is not None
            try:
                run_sql(self._conn, "ROLLBACK TO SAVEPOINT step")
            except BaseException as exc:
                # The transaction itself is gone (MariaDB rolls it all back on deadlock).
                self._fail_group(exc)
            else:
                self._end_turn(self._group)
        finally:
            self._turn.release()

    def _end_step(self) -> None:
        assert self._in_step and self._conn is not None, "a step ended without enter()"
        self._in_step = False

    def abort(self, exc: BaseException) -> None:
        """End the turn and roll back the whole group: the step met an error after which
        its transaction must not go on (a deadlock, a lock timeout, a lost connection).
        Every step of the group runs again, in a fresh transaction."""
        try:
            self._end_step()
            self._fail_group(exc)
        finally:
            self._turn.release()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A turn used as a transaction of its own (the job queue's writes on SQLite): the
        block's writes commit with the group, and the block exits after that COMMIT;
        they roll back if it raises."""
        conn = self.enter()
        try:
            yield conn
        except DBAPIError as exc:
            self.abort(exc)  # a lock wait ran out, or the connection is gone
            raise
        except BaseException:
            self.drop()
            raise
        self.keep([]).wait()

    def leave_look(self) -> None:
        """End a turn entered with `savepoint=False`."""
        try:
            self._end_turn(self._group)
        finally:
            self._turn.release()

    def close(self) -> None:
        with self._turn:
            if self._group.members:
                self._flush()
            self._discard_connection()

    # --- with the turn held ---------------------------------------------------------

    def _end_turn(self, group: Group) -> None:
        """Commit the group now if no other thread is queued to join it, or it is full
        (an empty group just ends its transaction)."""
        if self._queued == 0 or group.members >= self.max_members:
            self._flush()

    def _flush(self) -> None:
        group, self._group = self._group, Group()
        conn, self._assigned = self._conn, False
        try:
            if conn is not None and conn.in_transaction():
                if group.members:
                    # The events' INSERT and the COMMIT: one round trip on PostgreSQL
                    # (where `conn.commit()` then finds the transaction already ended).
                    with pipelined(conn):
                        if group.rows:
                            self.insert_events(conn, group.rows)
                        if self._by_xid:
                            run_sql(conn, "COMMIT")
                    conn.commit()
                    self.commits += 1
                    self.committed_steps += group.members
                else:
                    conn.rollback()
        except BaseException as exc:
            log.warning("group commit of %d steps failed: %s", group.members, exc)
            group.error = exc
            group.busy = isinstance(exc, DBAPIError) and isinstance(translate(exc), DatabaseBusy)
            self._discard_connection()
        finally:
            group.done.set()

    def _fail_group(self, exc: BaseException) -> None:
        group, self._group = self._group, Group()
        if group.members:
            log.warning("group of %d steps rolled back: %s", group.members, exc)
        group.error = exc
        self._discard_connection()
        group.done.set()

    def _discard_connection(self) -> None:
        conn, self._conn, self._in_step, self._assigned = self._conn, None, False, False
        if conn is None:
            return
        try:
            conn.rollback()
        except Exception:  # the connection is being thrown away anyway
            conn.invalidate()
        finally:
            conn.close()

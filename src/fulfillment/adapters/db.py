"""Engines for SQLite, PostgreSQL and MariaDB/MySQL, and the few places they differ.

How each backend keeps event positions in commit order (docs/architecture.md, rule 3):

* SQLite: every write transaction starts with ``BEGIN IMMEDIATE``, so there is one writer
  at a time and positions are assigned and committed in the same order.
* PostgreSQL: no lock. A position is ``(transaction id << 16) + n`` (migration 0013),
  and a follower of the feed reads only the positions below its snapshot's xmin
  (``adapters/event_store.visible``): every transaction that could still insert one
  there has ended. Writers never wait for each other.
* MariaDB/MySQL: a row trigger locks the one row of
  ``event_append_lock`` (``SELECT ... FOR UPDATE``) before the first row's
  AUTO_INCREMENT position is allocated, released at commit. The events' INSERT is the
  last statement of every transaction that appends, so the lock is held only for it
  and the COMMIT. Transactions run at READ
  COMMITTED, which also keeps the queue's ``SKIP LOCKED`` claims free of gap-lock
  deadlocks.

Every engine hides bound parameters from its errors' messages (`hide_parameters`): those
end up in logs, and parameters carry patients' names and addresses. An SQLite database
file and the files SQLite keeps beside it are readable by their owner only
(`secure_sqlite_files`).
"""

from __future__ import annotations

import logging
import math
import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, delete, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.pool import NullPool, StaticPool
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import literal_column

log = logging.getLogger("fulfillment.db")


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


@dataclass(frozen=True)
class DatabaseBounds:
    """The longest a connection waits or idles (docs/architecture.md, rule 11), in seconds.

    * `lock_timeout`: a wait for a lock (a row, the event-append lock, SQLite's write
      lock) or for a pooled connection; then the transaction is aborted.
    * `idle_in_transaction`: a session idle inside a transaction (its process paused or
      cut off) is ended by the server, which frees its locks.
    * `statement_timeout`: one statement's run time.
    * `keepalive`: TCP keepalive idle time; a peer that stops answering is dropped
      after about twice this.
    * `pool_timeout`: a wait for a free connection of the process's pool.
    """

    lock_timeout: float = 5.0
    idle_in_transaction: float = 15.0
    statement_timeout: float = 30.0
    keepalive: float = 10.0
    pool_timeout: float = 5.0

    @property
    def holder_lock_timeout(self) -> float:
        """How long the stock lock's holder may wait on a row: legitimate row locks of
        other transactions last milliseconds; anything longer is a process that
        stopped, and every other worker's stock steps wait behind the holder meanwhile."""
        return min(self.lock_timeout, 0.2)

    @classmethod
    def for_lease(cls, lease_seconds: float) -> DatabaseBounds:
        """Defaults within one lease: a vanished process's locks are freed before its
        jobs' leases would let another worker take them over."""
        return cls(
            lock_timeout=_clamp(lease_seconds / 4, 1.0, 5.0),
            idle_in_transaction=_clamp(lease_seconds / 2, 1.0, 60.0),
            statement_timeout=max(5.0, lease_seconds),
            keepalive=_clamp(lease_seconds / 3, 1.0, 60.0),
            pool_timeout=_clamp(lease_seconds / 4, 1.0, 5.0),
        )


#: The URL schemes of the databases this service runs on (`check_database_url`).
URL_FORMS = "sqlite:///path, postgresql://user@host/db or mysql://user@host/db"


def normalize_url(url: str) -> str:
    """Accept the plain URLs of the README and pick the bundled drivers; `postgres://`
    (the scheme of many hosting providers) is `postgresql://`."""
    parsed = make_url(url)
    if parsed.drivername == "postgres" or parsed.drivername.startswith("postgres+"):
        parsed = parsed.set(drivername="postgresql" + parsed.drivername[len("postgres") :])
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend in ("mysql", "mariadb") and "+" not in parsed.drivername:
        parsed = parsed.set(drivername=f"{backend}+pymysql")
    if backend in ("mysql", "mariadb") and "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return parsed.render_as_string(hide_password=False)


def check_database_url(url: str) -> None:
    """ValueError, in one line without the password, unless `url` names a database of a
    kind this service runs on (SQLite, PostgreSQL, MariaDB/MySQL) with a known driver."""
    try:
        shown = make_url(url).render_as_string(hide_password=True)
        parsed = make_url(normalize_url(url))
    except ArgumentError:
        raise ValueError(
            f"FULFILLMENT_DATABASE_URL is not a database URL; write {URL_FORMS}"
        ) from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql", "mysql", "mariadb"):
        raise ValueError(
            f"FULFILLMENT_DATABASE_URL {shown}: {parsed.get_backend_name()!r} is no database "
            f"this service runs on; write {URL_FORMS}"
        )
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        raise ValueError(
            f"FULFILLMENT_DATABASE_URL {shown}: no driver {parsed.drivername!r}; write {URL_FORMS}"
        ) from None


def create_db_engine(
    url: str,
    *,
    pool_size: int = 10,
    sqlite_synchronous: str = "FULL",
    bounds: DatabaseBounds | None = None,
) -> Engine:
    """The engine of a long-running process: pooled, every connection bounded (`bounds`)."""
    url = normalize_url(url)
    backend = make_url(url).get_backend_name()
    bounds = bounds or DatabaseBounds()
    # Bound parameters (patient data) never appear in an error's message, hence in a log.
    kwargs: dict[str, Any] = {"future": True, "hide_parameters": True}
    sqlite_path = sqlite_file(url) if backend == "sqlite" else None
    if backend == "sqlite":
        database = make_url(url).database
        if not database or database == ":memory:":
            kwargs["poolclass"] = StaticPool
            kwargs["connect_args"] = {"check_same_thread": False}
        else:
            kwargs.update(pool_size=pool_size, max_overflow=pool_size)
            kwargs["pool_timeout"] = bounds.pool_timeout
            kwargs["connect_args"] = {
                "check_same_thread": False,
                "timeout": bounds.lock_timeout,
            }
    elif backend == "postgresql":
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
        kwargs["pool_timeout"] = bounds.pool_timeout
        kwargs["connect_args"] = postgresql_connect_args(bounds)
    else:
        kwargs.update(
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            pool_recycle=3600,
            pool_timeout=bounds.pool_timeout,
            isolation_level="READ COMMITTED",
            connect_args=mysql_connect_args(bounds),
        )
    if sqlite_path is not None:
        secure_sqlite_files(sqlite_path)
    engine = create_engine(url, **kwargs)
    if backend == "sqlite":
        _configure_sqlite(engine, sqlite_synchronous, bounds.lock_timeout, sqlite_path)
    elif backend == "mysql":
        _configure_mysql(engine, bounds)
    return engine


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def postgresql_connect_args(bounds: DatabaseBounds) -> dict[str, Any]:
    """libpq parameters and server settings that bound what one session can hold.

    Server side: `lock_timeout` and `statement_timeout` bound waits and runs;
    `idle_in_transaction_session_timeout` ends a session whose process stopped inside a
    transaction (paused, partitioned), which frees its locks; the TCP keepalives and
    `tcp_user_timeout` drop a peer that no longer answers. Client side: the same
    keepalives, so a worker notices a vanished server as well.
    """
    keepalive = max(1, round(bounds.keepalive))
    interval = max(1, round(bounds.keepalive / 3))
    user_timeout = _ms(2 * bounds.keepalive)
    server = {
        "lock_timeout": _ms(bounds.lock_timeout),
        "statement_timeout": _ms(bounds.statement_timeout),
        "idle_in_transaction_session_timeout": _ms(bounds.idle_in_transaction),
        "tcp_keepalives_idle": keepalive,
        "tcp_keepalives_interval": interval,
        "tcp_keepalives_count": 3,
        "tcp_user_timeout": user_timeout,
    }
    return {
        "options": " ".join(f"-c {name}={value}" for name, value in server.items()),
        "keepalives": 1,
        "keepalives_idle": keepalive,
        "keepalives_interval": interval,
        "keepalives_count": 3,
        "tcp_user_timeout": user_timeout,
        "connect_timeout": max(2, math.ceil(bounds.keepalive)),
    }


def mysql_connect_args(bounds: DatabaseBounds) -> dict[str, Any]:
    """PyMySQL's socket timeouts: a reply that does not come within a statement's
    longest run (plus a lock wait) means the server or the network is gone."""
    wait = math.ceil(bounds.statement_timeout + bounds.lock_timeout + 1)
    return {
        "connect_timeout": max(2, math.ceil(bounds.keepalive)),
        "read_timeout": wait,
        "write_timeout": wait,
    }


def mysql_session_settings(bounds: DatabaseBounds, mariadb: bool) -> dict[str, float | int]:
    """Per-session bounds: InnoDB's row-lock wait (whole seconds), and on MariaDB the
    idle-in-transaction and statement limits (MySQL has no such session settings)."""
    settings: dict[str, float | int] = {
        "innodb_lock_wait_timeout": max(1, math.ceil(bounds.lock_timeout))
    }
    if mariadb:
        settings["idle_transaction_timeout"] = max(1, math.ceil(bounds.idle_in_transaction))
        settings["max_statement_time"] = bounds.statement_timeout
    return settings


def _configure_mysql(engine: Engine, bounds: DatabaseBounds) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        version = str(getattr(dbapi_connection, "server_version", "") or "")
        settings = mysql_session_settings(bounds, "mariadb" in version.lower())
        cursor = dbapi_connection.cursor()
        cursor.execute(
            "SET SESSION " + ", ".join(f"{name} = {value}" for name, value in settings.items())
        )
        cursor.close()


@contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction; on SQLite a deferred one, which never blocks writers."""
    with engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
        try:
            yield conn
        finally:
            conn.rollback()


#: How often `begin_promptly` asks for SQLite's write lock.
PROMPT_POLL_SECONDS = 0.002


@contextmanager
def begin_promptly(engine: Engine) -> Iterator[Connection]:
    """`engine.begin()` for a short write of a process that writes now and then (the
    relay's checkpoint) beside one that writes back to back (a worker's group commits).

    SQLite: a writer waiting in SQLite's busy handler looks at the write lock after 1, 2,
    5, ... then every 100 ms, and a worker that takes the lock again at once leaves it
    few gaps at those moments: the wait can last most of a second. Here the lock is
    asked for every `PROMPT_POLL_SECONDS` instead, up to the connection's busy timeout,
    so the first gap serves. Other backends queue lock waiters: `engine.begin()`.
    """
    if engine.dialect.name != "sqlite":
        with engine.begin() as conn:
            yield conn
        return
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        busy_ms = int(raw.execute("PRAGMA busy_timeout").fetchone()[0])
        deadline = time.monotonic() + busy_ms / 1000
        raw.execute("PRAGMA busy_timeout=0")
        try:
            while True:
                try:
                    transaction = conn.begin()  # BEGIN IMMEDIATE: the write lock
                    break
                except OperationalError as exc:
                    if "locked" not in str(exc.orig) or time.monotonic() >= deadline:
                        raise
                    time.sleep(PROMPT_POLL_SECONDS)
        finally:
            raw.execute(f"PRAGMA busy_timeout={busy_ms}")
        with transaction:
            yield conn


def create_nullpool_engine(url: str) -> Engine:
    """An engine that does not keep connections (short CLI commands, migrations)."""
    url = normalize_url(url)
    backend = make_url(url).get_backend_name()
    kwargs: dict[str, Any] = {"poolclass": NullPool, "hide_parameters": True}
    if backend in ("mysql", "mariadb"):
        kwargs["isolation_level"] = "READ COMMITTED"
    sqlite_path = sqlite_file(url) if backend == "sqlite" else None
    if sqlite_path is not None:
        secure_sqlite_files(sqlite_path)
    engine = create_engine(url, **kwargs)
    if backend == "sqlite":
        _configure_sqlite(engine, "FULL", 60.0, sqlite_path)
    return engine


#: What SQLite keeps beside a database file: the write-ahead log, its shared-memory
#: index, and the rollback journal (before WAL mode is on).
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")
#: Group and others' permission bits, taken off every file of an SQLite database.
_NOT_OWNER = stat.S_IRWXG | stat.S_IRWXO


def sqlite_file(url: str) -> str | None:
    """The database file of an SQLite URL; None in memory (or for a `file:` URI)."""
    parsed = make_url(url)
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    if "uri" in parsed.query:
        return None
    return database


def secure_sqlite_files(path: str) -> None:
    """Make an SQLite database readable by its owner only: create the file with mode 0600
    before SQLite opens it (SQLite creates its -wal, -shm and -journal files with the
    database file's permissions), and take the group's and others' bits off the file and
    off any of those that exist already (made before, with a wider mode)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError:
        return  # no such directory, say: SQLite says why when it connects
    else:
        os.close(fd)  # an empty file is an empty database to SQLite
    _owner_only(path, *SQLITE_SIDE_FILES)


def _owner_only(path: str, *suffixes: str) -> None:
    for name in (path, *(path + suffix for suffix in suffixes)):
        try:
            mode = stat.S_IMODE(os.stat(name).st_mode)
            if mode & _NOT_OWNER:
                os.chmod(name, mode & ~_NOT_OWNER)
        except FileNotFoundError:
            continue
        except OSError as exc:  # another user's file, say
            log.warning("could not make %s readable by its owner only: %s", name, exc)


def _configure_sqlite(
    engine: Engine, synchronous: str, busy_seconds: float, path: str | None = None
) -> None:
    side_files_checked = False

    # SQLite has one writer; every writer, thread or process, waits in SQLite's busy
    # handler (busy_timeout). An in-process lock that handed the write lock from thread
    # to thread was faster for one process but starved other processes (a second worker
    # could wait over a minute to start), so fairness between processes wins.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        nonlocal side_files_checked
        # Let us issue BEGIN ourselves (pysqlite's implicit BEGIN is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        # A bounded wait for the write lock: then "database is locked" (DatabaseBusy).
        cursor.execute(f"PRAGMA busy_timeout={_ms(busy_seconds)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
        if path is not None and not side_files_checked:
            # WAL mode made the -wal and -shm files (with the database file's mode, which
            # `secure_sqlite_files` set): checked once per engine all the same.
            side_files_checked = True
            _owner_only(path, *SQLITE_SIDE_FILES)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


def append_lock_sql(backend: str) -> str | None:
    """The statement that takes MariaDB's event-append lock (held until commit), as the
    insert's trigger does; None where there is none (SQLite: ``BEGIN IMMEDIATE``;
    PostgreSQL since migration 0013: ``adapters/event_store.visible``).

    Nothing in the service takes it up front: the trigger takes it at the events'
    INSERT, the last statement before COMMIT, so the lock is held for that INSERT and
    the COMMIT only, and its holder never waits on a row (no deadlock can go through it).
    """
    if backend == "mysql":
        return "SELECT id FROM event_append_lock WHERE id = 1 FOR UPDATE"
    return None


#: PostgreSQL's advisory-lock key of the stock lock (`stock_lock_sql`).
STOCK_LOCK_KEY = 7_304_118_002


def stock_lock_sql(backend: str, holder_lock_timeout: float | None = None) -> str | None:
    """The statement a worker's stock group (``adapters/group_commit.py``) runs first: a
    lock held to its COMMIT, so the stock groups of different workers take turns rather
    than each hold a stock row the other waits for. None on SQLite (one writer).

    `holder_lock_timeout` (PostgreSQL): once it holds the lock, the transaction waits on
    any row at most this long (``SET LOCAL lock_timeout``, in the same statement): every
    other stock group queues behind the holder, so the holder must not sit for long on a
    row that a paused process may hold (docs/architecture.md, rule 11). MariaDB's lock
    wait has whole seconds, so there the holder keeps the session's bound; its lock is
    row 2 of ``event_append_lock`` (migration 0013).
    """
    if backend == "postgresql":
        take = f"pg_advisory_xact_lock({STOCK_LOCK_KEY})"
        if holder_lock_timeout is None:
            return f"SELECT {take}"
        # The subquery runs first (a volatile one is never pulled up into the query).
        return (
            f"SELECT set_config('lock_timeout', '{_ms(holder_lock_timeout)}ms', true)"
            f" FROM (SELECT {take}) AS held"
        )
    if backend == "mysql":
        return "SELECT id FROM event_append_lock WHERE id = 2 FOR UPDATE"
    return None


def backend_of(conn_or_engine: Connection | Engine) -> str:
    name = conn_or_engine.dialect.name
    return "mysql" if name in ("mysql", "mariadb") else name


def db_now_epoch(backend: str) -> ColumnElement[float]:
    """The database clock, in seconds since the epoch (leases never trust a worker's clock)."""
    if backend == "postgresql":
        return literal_column("extract(epoch from clock_timestamp())::float8")
    if backend == "mysql":
        return literal_column("unix_timestamp(now(6))")
    return literal_column("((julianday('now') - 2440587.5) * 86400.0)")


def delete_batch(
    engine: Engine,
    table: Table,
    key: ColumnElement[Any],
    condition: ColumnElement[bool],
    batch: int,
) -> int:
    """Delete at most `batch` rows of `table` that match `condition`, in one short
    transaction; returns how many were deleted (`batch`: there may be more).

    Periodic maintenance (expired idempotency keys, old access-log rows), never on a
    saga's path: it first looks without a write transaction (no lock for nothing), and
    on PostgreSQL skips the rows another process's batch holds. `key` is the table's
    primary key, by which the rows of a batch are chosen.
    """
    with read_connection(engine) as conn:
        if conn.execute(select(key).where(condition).limit(1)).first() is None:
            return 0
    with engine.begin() as conn:
        if backend_of(conn) == "mysql":
            # MariaDB cannot LIMIT a subquery of IN, nor read the table it deletes from.
            statement = delete(table).where(condition).with_dialect_options(mysql_limit=batch)
        else:
            chosen = select(key).where(condition).limit(batch)
            if backend_of(conn) == "postgresql":
                chosen = chosen.with_for_update(skip_locked=True)  # another worker's batch
            statement = delete(table).where(key.in_(chosen))
        return int(conn.execute(statement).rowcount)

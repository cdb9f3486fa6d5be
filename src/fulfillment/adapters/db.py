"""Engines for SQLite, PostgreSQL and MariaDB/MySQL, and the few places they differ.

How each backend keeps event positions in commit order (DESIGN.md section 3, rule 3):

* SQLite: every write transaction starts with ``BEGIN IMMEDIATE``, so there is one writer
  at a time and positions are assigned and committed in the same order.
* PostgreSQL: inserting into ``events`` fires a statement trigger that takes
  ``pg_advisory_xact_lock`` before any position is drawn, held until commit; the next
  appender waits, so a position is only handed out after every smaller one has
  committed (or rolled back).
* MariaDB/MySQL: the same, with a row trigger that locks the one row of
  ``event_append_lock`` (``SELECT ... FOR UPDATE``) before the first row's
  AUTO_INCREMENT position is allocated, released at commit. Transactions run at READ
  COMMITTED, which also keeps the queue's ``SKIP LOCKED`` claims free of gap-lock
  deadlocks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool, StaticPool
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.expression import literal_column


def normalize_url(url: str) -> str:
    """Accept the plain URLs of DESIGN.md and pick the bundled drivers."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    elif backend in ("mysql", "mariadb") and "+" not in parsed.drivername:
        parsed = parsed.set(drivername=f"{backend}+pymysql")
    if backend in ("mysql", "mariadb") and "charset" not in parsed.query:
        parsed = parsed.update_query_dict({"charset": "utf8mb4"})
    return parsed.render_as_string(hide_password=False)


def create_db_engine(url: str, *, pool_size: int = 10, sqlite_synchronous: str = "FULL") -> Engine:
    url = normalize_url(url)
    backend = make_url(url).get_backend_name()
    kwargs: dict[str, Any] = {"future": True}
    if backend == "sqlite":
        database = make_url(url).database
        if not database or database == ":memory:":
            kwargs["poolclass"] = StaticPool
            kwargs["connect_args"] = {"check_same_thread": False}
        else:
            kwargs["pool_size"] = pool_size
            kwargs["max_overflow"] = pool_size
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 60}
    elif backend == "postgresql":
        kwargs.update(pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    else:
        kwargs.update(
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,
            pool_recycle=3600,
            isolation_level="READ COMMITTED",
        )
    engine = create_engine(url, **kwargs)
    if backend == "sqlite":
        _configure_sqlite(engine, sqlite_synchronous)
    return engine


@contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction; on SQLite a deferred one, which never blocks writers."""
    with engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
        try:
            yield conn
        finally:
            conn.rollback()


def create_nullpool_engine(url: str) -> Engine:
    """An engine that does not keep connections (short CLI commands, migrations)."""
    url = normalize_url(url)
    backend = make_url(url).get_backend_name()
    kwargs: dict[str, Any] = {"poolclass": NullPool}
    if backend in ("mysql", "mariadb"):
        kwargs["isolation_level"] = "READ COMMITTED"
    engine = create_engine(url, **kwargs)
    if backend == "sqlite":
        _configure_sqlite(engine, "FULL")
    return engine


def _configure_sqlite(engine: Engine, synchronous: str) -> None:
    # SQLite has one writer; every writer, thread or process, waits in SQLite's busy
    # handler (busy_timeout). An in-process lock that handed the write lock from thread
    # to thread was faster for one process but starved other processes (a second worker
    # could wait over a minute to start), so fairness between processes wins.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (pysqlite's implicit BEGIN is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


#: PostgreSQL's advisory-lock key for event appends: the key of migration 0004's trigger.
EVENT_APPEND_LOCK_KEY = 7_304_118_001


def append_lock_sql(backend: str) -> str | None:
    """The statement that takes the event-append lock up front (held until commit).

    A group commit (``adapters/group_commit.py``) takes it as its transaction's first
    statement: groups of different processes then never hold row locks while waiting
    for each other, so they cannot deadlock. SQLite needs none (``BEGIN IMMEDIATE``).
    """
    if backend == "postgresql":
        return f"SELECT pg_advisory_xact_lock({EVENT_APPEND_LOCK_KEY})"
    if backend == "mysql":
        return "SELECT id FROM event_append_lock WHERE id = 1 FOR UPDATE"
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

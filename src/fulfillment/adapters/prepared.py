"""Hot statements: compiled once per dialect by SQLAlchemy, run on the raw DBAPI cursor.

A Core ``Connection.execute`` costs about 60 us of Python per statement on the
development machine (execution context, events, cache lookup, parameter and result
processing); the DBAPI cursor of the same connection costs about 4 us. A saga step runs
6 to 10 statements, so the statements of the step path (stream tail, event insert, job
advance, service-table changes) are Core statements *compiled* once per dialect and
*executed* here, on the unit of work's own connection, inside its transaction.

Values pass through the bind processors SQLAlchemy itself would apply (JSON, SQLite's
datetime text, ...), and selected columns through its result processors, so a row
written here reads back through Core exactly as if Core had written it, and vice versa.
DBAPI errors are wrapped as SQLAlchemy's (``IntegrityError``, ``OperationalError``, ...)
so callers handle one family of exceptions; a lost connection invalidates the
SQLAlchemy connection as Core would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement

Params = Mapping[str, Any]
Processor = Callable[[Any], Any] | None


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...] | None  # the order of positional parameters (qmark, format)
    defaults: dict[str, Any]  # values bound in the statement itself (literals)
    binds: dict[str, Callable[[Any], Any]]
    results: tuple[Processor, ...]


def _dialect_key(dialect: Dialect) -> tuple[str, str, bool]:
    return (dialect.name, str(dialect.driver), bool(getattr(dialect, "is_mariadb", False)))


class Prepared:
    """A Core statement to run on the raw cursor; compiled lazily for each dialect."""

    def __init__(self, statement: ClauseElement, column_keys: Sequence[str] | None = None):
        self.statement = statement
        self.column_keys = list(column_keys) if column_keys is not None else None
        self._compiled: dict[tuple[str, str, bool], _Compiled] = {}

    def compiled(self, dialect: Dialect) -> _Compiled:
        key = _dialect_key(dialect)
        found = self._compiled.get(key)
        if found is None:
            found = self._compiled[key] = self._compile(dialect)
        return found

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled: Any = self.statement.compile(dialect=dialect, column_keys=self.column_keys)
        names = tuple(compiled.positiontup) if compiled.positional else None
        # Values bound in the statement itself (literals, None included); the rest come
        # with each call.
        defaults = {k: b.effective_value for k, b in compiled.binds.items() if not b.required}
        binds = dict(compiled._bind_processors)  # the processors Core applies to values
        # A SELECT's columns, or what an INSERT / UPDATE ... RETURNING returns.
        columns = getattr(self.statement, "exported_columns", ())
        results = tuple(c.type._cached_result_processor(dialect, None) for c in columns)
        return _Compiled(compiled.string, names, defaults, binds, results)


def _args(c: _Compiled, params: Params) -> Any:
    values = {**c.defaults, **params} if c.defaults else dict(params)
    for name, process in c.binds.items():
        if name in values:
            values[name] = process(values[name])
    if c.names is not None:
        return tuple(values[name] for name in c.names)
    return values


def _raw(conn: Connection) -> Any:
    return conn.connection.dbapi_connection


def _cursor(conn: Connection) -> Any:
    """The DBAPI connection's reusable cursor (kept with the pooled connection)."""
    info = conn.connection.info
    cursor = info.get("prepared_cursor")
    if cursor is None:
        cursor = info["prepared_cursor"] = _raw(conn).cursor()
    return cursor


def _raise_wrapped(conn: Connection, sql: str, args: Any, exc: Exception, cursor: Any) -> None:
    dialect = conn.dialect
    if dialect.is_disconnect(exc, _raw(conn), cursor):  # type: ignore[arg-type]
        conn.invalidate(exc)
    raise DBAPIError.instance(sql, args, exc, dialect.loaded_dbapi.Error, dialect=dialect) from exc


def _run(conn: Connection, sql: str, args: Any = None, *, many: bool = False) -> Any:
    """Run `sql` on the connection's cursor, DBAPI errors wrapped as SQLAlchemy's."""
    cursor = _cursor(conn)
    try:
        if many:
            cursor.executemany(sql, args)
        elif args is None:
            cursor.execute(sql)
        else:
            cursor.execute(sql, args)
    except conn.dialect.loaded_dbapi.Error as exc:
        _raise_wrapped(conn, sql, args, exc, cursor)
    return cursor


def execute(conn: Connection, prepared: Prepared, params: Params) -> Any:
    """Run the statement; return the DBAPI cursor, to read rowcount or rows at once."""
    c = prepared.compiled(conn.dialect)
    return _run(conn, c.sql, _args(c, params))


def execute_many(conn: Connection, prepared: Prepared, rows: Sequence[Params]) -> None:
    if rows:
        c = prepared.compiled(conn.dialect)
        _run(conn, c.sql, [_args(c, row) for row in rows], many=True)


def execute_columns(conn: Connection, sql: str, prepared: Prepared, rows: Sequence[Params]) -> None:
    """Run `sql`, whose named parameters are arrays, once for all `rows`: each parameter
    gets the column of its values, bound as `prepared` (a statement with one row's
    parameters of the same names) would bind them."""
    if rows:
        c = prepared.compiled(conn.dialect)
        bound = [_args(c, row) for row in rows]
        _run(conn, sql, {name: [row[name] for row in bound] for name in bound[0]})


def rowcount(conn: Connection, prepared: Prepared, params: Params) -> int:
    return int(execute(conn, prepared, params).rowcount)


def fetch_all(conn: Connection, prepared: Prepared, params: Params) -> list[tuple[Any, ...]]:
    """The rows, each value through Core's result processor of its column."""
    c = prepared.compiled(conn.dialect)
    raw = _run(conn, c.sql, _args(c, params)).fetchall()
    results = c.results
    if not any(results):
        return [tuple(row) for row in raw]
    return [
        tuple(p(v) if p is not None else v for p, v in zip(results, row, strict=True))
        for row in raw
    ]


def scalar(conn: Connection, prepared: Prepared, params: Params) -> Any:
    """The first column of the first row, or None."""
    rows = fetch_all(conn, prepared, params)
    return rows[0][0] if rows else None


def run_sql(conn: Connection, sql: str) -> None:
    """A parameterless statement (SAVEPOINT, a lock, ...) on the raw cursor."""
    cursor = _run(conn, sql)
    if cursor.description is not None:
        cursor.fetchall()


@contextmanager
def pipelined(conn: Connection) -> Iterator[None]:
    """On PostgreSQL, the statements run here inside the block go out together and their
    results come back at its end: one round trip for all (psycopg's pipeline mode).
    What they return is not read (a statement whose result is read inside the block
    waits for it there); the first error, raised at the end, skips the statements after
    it. Elsewhere the statements run one by one, as outside the block."""
    if conn.dialect.name != "postgresql":
        yield
        return
    try:
        with _raw(conn).pipeline():
            yield
    except conn.dialect.loaded_dbapi.Error as exc:
        _raise_wrapped(conn, "(a pipeline of statements)", None, exc, None)

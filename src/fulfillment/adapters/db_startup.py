"""A database a process cannot use, said in one line; waiting for one that is down.

`describe(exc, url)` turns the error of a process that could not use its database into a
`DatabaseProblem`: one line that says what failed, with the URL (its password masked) and
what to do, and whether waiting may help (`retryable`: the server is down, unreachable or
starting). The CLI prints that line (docs/operator-cli.md); `wait_for_database` retries
with a capped backoff while waiting may help (`fulfillment worker`, `fulfillment serve`);
`create_database` makes the database a URL names (`fulfillment migrate --create-database`);
`check_schema` stops a command on a database that has no schema, and creates nothing
(neither the database nor an SQLite file).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import NullPool

from fulfillment.adapters.db import (
    create_nullpool_engine,
    normalize_url,
    read_connection,
    sqlite_file,
)
from fulfillment.adapters.migrate import current_revision, migrate

log = logging.getLogger("fulfillment.db")

#: The kinds of problem after which the same attempt may succeed later.
RETRYABLE = frozenset({"refused", "no_answer", "unknown_host", "not_ready"})
#: The first wait after a failed attempt, doubled after each one up to the last.
FIRST_DELAY_SECONDS = 0.5
MAX_DELAY_SECONDS = 10.0
NO_SCHEMA = "this database has no schema: run `fulfillment migrate`"

_PG_UNKNOWN_DATABASE = re.compile(r'database "([^"]+)" does not exist')
# Lower-case fragments of the drivers' messages (libpq's, PyMySQL's, the kernel's).
_LOGIN = (
    "password authentication failed",
    "no password supplied",
    "no pg_hba.conf entry",
    "authentication failed",
    "access denied for user",
    "role ",  # role "x" does not exist
)
_REFUSED = ("connection refused", "errno 111")
_UNKNOWN_HOST = (
    "failed to resolve host",
    "could not translate host name",
    "name or service not known",
    "nodename nor servname",
    "temporary failure in name resolution",
    "errno -2",
    "errno -3",
    "errno -5",
)
_NO_ANSWER = (
    "timeout expired",
    "timed out",
    "no route to host",
    "network is unreachable",
)
_NOT_READY = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "too many clients",
    "remaining connection slots",
    "too many connections",
    "server closed the connection unexpectedly",
    "connection reset",
    "lost connection",
    "server has gone away",
)
# PyMySQL's error numbers: unknown database; login or rights refused; cannot connect;
# connection lost; too many connections.
_MYSQL_UNKNOWN_DATABASE = 1049
_MYSQL_LOGIN = {1044, 1045, 1698}
_MYSQL_CANNOT_CONNECT = {2002, 2003, 2005}
_MYSQL_NOT_READY = {1040, 1203, 2006, 2013}


class DatabaseProblem(Exception):
    """Why a process cannot use its database, in one line (`str()`); `kind` names the
    case (`refused`, `unknown_database`, `login`, `no_schema`, ...)."""

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind

    @property
    def retryable(self) -> bool:
        """Whether the same attempt may succeed later (the server is down or starting)."""
        return self.kind in RETRYABLE


def masked_url(url: str) -> str:
    """`url` as the user wrote it, its password (also a `password=` parameter) `***`."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "FULFILLMENT_DATABASE_URL"  # not a URL: never echoed, it may hold a secret
    query = {k: ("***" if "password" in k.lower() else v) for k, v in parsed.query.items()}
    return parsed.set(query=query).render_as_string(hide_password=True)


def _reason(message: str) -> str:
    """The server's or the driver's own words: the first line, without libpq's preamble."""
    first = message.strip().splitlines()[0] if message.strip() else message
    for marker in ("FATAL:", " failed: "):
        if marker in first:
            first = first.rsplit(marker, 1)[1]
    return " ".join(first.split())


def _code_and_reason(orig: BaseException | None) -> tuple[int | None, str]:
    """A driver error's number (PyMySQL's; None for the others) and its words."""
    args: tuple[object, ...] = getattr(orig, "args", ())
    if args and isinstance(args[0], int):
        return args[0], _reason(str(args[1]) if len(args) > 1 else str(orig))
    return None, _reason(str(orig))


def describe(exc: DBAPIError | DatabaseProblem, url: str) -> DatabaseProblem:
    """The problem `exc` is, for a process using the database at `url`."""
    if isinstance(exc, DatabaseProblem):
        return exc
    shown = masked_url(url)
    message = str(exc.orig)
    lowered = message.lower()
    code, reason = _code_and_reason(exc.orig)
    parsed = make_url(normalize_url(url))
    unknown = _PG_UNKNOWN_DATABASE.search(message)
    if unknown or code == _MYSQL_UNKNOWN_DATABASE:
        name = unknown.group(1) if unknown else parsed.database
        return DatabaseProblem(
            f"database {name!r} does not exist on {shown}; create it with "
            "`fulfillment migrate --create-database`",
            "unknown_database",
        )
    if code in _MYSQL_LOGIN or any(fragment in lowered for fragment in _LOGIN):
        return DatabaseProblem(
            f"{shown} refused the login: {reason}; check the user and password in "
            "FULFILLMENT_DATABASE_URL",
            "login",
        )
    if parsed.get_backend_name() == "sqlite" and "unable to open database file" in lowered:
        return DatabaseProblem(
            f"cannot open the SQLite database {parsed.database}: {reason}; does its "
            "directory exist, and may this user write in it?",
            "sqlite_open",
        )
    cannot_connect = f"cannot connect to {shown}"
    if any(fragment in lowered for fragment in _UNKNOWN_HOST):
        return DatabaseProblem(
            f"{cannot_connect}: unknown host {parsed.host!r}; check the host in "
            "FULFILLMENT_DATABASE_URL (or is the network not up yet?)",
            "unknown_host",
        )
    if any(fragment in lowered for fragment in _REFUSED):
        return DatabaseProblem(
            f"{cannot_connect}: connection refused; is the server running, on this host and port?",
            "refused",
        )
    if code in _MYSQL_NOT_READY or any(fragment in lowered for fragment in _NOT_READY):
        return DatabaseProblem(f"{cannot_connect}: {reason}; is the server starting?", "not_ready")
    if code in _MYSQL_CANNOT_CONNECT or any(fragment in lowered for fragment in _NO_ANSWER):
        return DatabaseProblem(
            f"{cannot_connect}: no answer ({reason}); is the server running, and "
            "reachable from here?",
            "no_answer",
        )
    return DatabaseProblem(f"{reason} ({shown})")


def check_schema(url: str) -> None:
    """Raise DatabaseProblem unless the database at `url` has this service's schema (at
    any revision). Creates nothing: an SQLite file that does not exist stays so."""
    normalized = normalize_url(url)
    sqlite = make_url(normalized).get_backend_name() == "sqlite"
    path = sqlite_file(normalized) if sqlite else None
    if path is not None and not Path(path).exists():
        raise DatabaseProblem(f"{NO_SCHEMA} ({path} does not exist)", "no_schema")
    engine = create_nullpool_engine(url)
    try:
        revision = current_revision(engine)
    except DBAPIError as exc:
        raise describe(exc, url) from exc
    finally:
        engine.dispose()
    if revision is None:
        raise DatabaseProblem(f"{NO_SCHEMA} ({masked_url(url)})", "no_schema")


def reach(engine: Engine, url: str, *, migrate_schema: bool) -> Callable[[], None]:
    """One attempt at the engine's database (at `url`) for `wait_for_database`: migrate
    it (an up-to-date schema is only read), or without `migrate_schema` check it has one."""

    def attempt() -> None:
        if migrate_schema:
            migrate(engine)
            return
        with read_connection(engine) as conn:
            conn.execute(text("SELECT 1"))
        if current_revision(engine) is None:
            raise DatabaseProblem(f"{NO_SCHEMA} ({masked_url(url)})", "no_schema")

    return attempt


def try_once(attempt: Callable[[], None], url: str) -> DatabaseProblem | None:
    """Run `attempt`: None when it succeeds, the problem when waiting may mend it (the
    server is down, unreachable or starting); any other problem (no such database, login
    refused, no schema) is raised as DatabaseProblem."""
    try:
        attempt()
    except (DBAPIError, DatabaseProblem) as exc:
        problem = describe(exc, url)
        if not problem.retryable:
            raise problem from exc
        if problem is not exc:
            problem.__cause__ = exc  # the driver's error, for a traceback at DEBUG
        return problem
    return None


def wait_for_database(
    attempt: Callable[[], None],
    url: str,
    stop: threading.Event,
    *,
    first_delay: float = FIRST_DELAY_SECONDS,
    max_delay: float = MAX_DELAY_SECONDS,
) -> bool:
    """Run `attempt` until it succeeds (True) or `stop` is set (False).

    While waiting may help (`try_once`), each failed attempt is logged in one line (the
    URL's password masked; with the traceback at DEBUG) and the next comes after a wait
    that doubles from `first_delay` to at most `max_delay`; what waiting cannot mend is
    raised as DatabaseProblem.
    """
    delay = first_delay
    attempts = 0
    while not stop.is_set():
        attempts += 1
        problem = try_once(attempt, url)
        if problem is None:
            return True
        log.warning(
            "waiting for the database: %s (attempt %d; the next in %.1f s)",
            problem,
            attempts,
            delay,
            exc_info=problem.__cause__ if log.isEnabledFor(logging.DEBUG) else None,
        )
        if stop.wait(delay):
            break
        delay = min(max_delay, delay * 2)
    return False


def create_database(url: str) -> bool:
    """Create the PostgreSQL or MariaDB database `url` names, unless it exists; True when
    it was created. SQLite: False (migrating creates the file). Raises DatabaseProblem
    when the server cannot be reached, or the user may not create databases."""
    parsed = make_url(normalize_url(url))
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return False
    name = parsed.database
    if not name:
        raise DatabaseProblem(
            f"{masked_url(url)} names no database: add one to the URL (.../fulfillment)"
        )
    probe = create_nullpool_engine(url)
    try:
        with probe.connect():
            return False
    except DBAPIError as exc:
        problem = describe(exc, url)
        if problem.kind != "unknown_database":
            raise problem from exc
    finally:
        probe.dispose()
    # From a database that exists on every server: PostgreSQL's maintenance databases,
    # none on MariaDB.
    maintenance = ("postgres", "template1") if backend == "postgresql" else (None,)
    for index, admin_database in enumerate(maintenance):
        admin = create_engine(
            parsed._replace(database=admin_database),  # (`set` keeps it for None)
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            hide_parameters=True,
        )
        try:
            with admin.connect() as conn:
                quoted = conn.dialect.identifier_preparer.quote(name)
                charset = " CHARACTER SET utf8mb4" if backend in ("mysql", "mariadb") else ""
                conn.exec_driver_sql(f"CREATE DATABASE {quoted}{charset}")
            return True
        except DBAPIError as exc:
            outcome = _create_failed(exc, url, name, parsed.username)
            if outcome is None:
                return False  # created meanwhile, by another process
            if outcome.kind == "unknown_database" and index + 1 < len(maintenance):
                continue
            raise outcome from exc
        finally:
            admin.dispose()
    raise AssertionError("unreachable")  # pragma: no cover


def _create_failed(
    exc: DBAPIError, url: str, name: str, user: str | None
) -> DatabaseProblem | None:
    """Why CREATE DATABASE failed; None when the database exists after all."""
    message = str(exc.orig)
    sqlstate = getattr(exc.orig, "sqlstate", None)
    code, reason = _code_and_reason(exc.orig)
    if sqlstate == "42P04" or code == 1007 or "already exists" in message:
        return None
    if sqlstate == "42501" or code == 1044 or "permission denied" in message.lower():
        return DatabaseProblem(
            f"cannot create database {name!r} on {masked_url(url)}: {reason}; ask an "
            f"administrator to create it, or to let {user or 'this user'} create databases "
            "(PostgreSQL: ALTER ROLE ... CREATEDB; MariaDB: GRANT CREATE ON ...)",
            "cannot_create",
        )
    return describe(exc, url)

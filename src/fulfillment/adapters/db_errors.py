"""Which database errors abort what (docs/architecture.md, rule 11; docs/architecture.md).

Every error a transaction can meet is one of:

* **retry at once** (`RetryableDatabaseError`): a deadlock or serialization failure (the
  server aborted the transaction), or a lost connection (a server restart, a session
  ended by `idle_in_transaction_session_timeout` while its process was paused). The
  whole transaction is rolled back and the command runs again on a fresh one.
* **busy** (`DatabaseBusy`): a lock wait or a statement ran out of time
  (`lock_timeout`, InnoDB's lock wait timeout, `statement_timeout`,
  `max_statement_time`, SQLite's busy timeout). The whole transaction is rolled back
  (PostgreSQL aborts it anyway; MariaDB would roll back only the statement and keep
  its locks); the API answers 503 with Retry-After, and a job goes back to the queue
  for a moment, not counted as a failure.
* **conflict** (`ConcurrencyError`): a unique key taken by a concurrent transaction;
  only the step's own work (its savepoint) is undone, and the command runs again.
* anything else propagates unchanged.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, IntegrityError

from fulfillment.service_layer.messagebus import (
    ConcurrencyError,
    DatabaseBusy,
    RetryableDatabaseError,
)

# PostgreSQL SQLSTATEs.
_PG_RETRY = {"40001", "40P01", "25P03", "57P01", "57P02", "57P03"}
_PG_BUSY = {"55P03", "57014"}
# MySQL / MariaDB error numbers.
_MYSQL_RETRY = {1213, 2006, 2013, 4031}
_MYSQL_BUSY = {1205, 1969, 3024}


def translate(exc: DBAPIError) -> Exception | None:
    """The service layer's exception for a database error, or None to let it propagate."""
    if isinstance(exc, IntegrityError):
        return ConcurrencyError(str(exc.orig))
    orig = exc.orig
    message = str(orig)
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    args = getattr(orig, "args", ())
    code = args[0] if args and isinstance(args[0], int) else None
    if sqlstate in _PG_BUSY or code in _MYSQL_BUSY:
        return DatabaseBusy(message)
    if "database is locked" in message or "database table is locked" in message:
        return DatabaseBusy(message)
    if sqlstate in _PG_RETRY or code in _MYSQL_RETRY or exc.connection_invalidated:
        return RetryableDatabaseError(message)
    return None

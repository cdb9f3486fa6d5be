"""Which database errors abort what (adapters/db_errors.py), on each backend's codes."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from fulfillment.adapters.db_errors import translate
from fulfillment.service_layer.messagebus import (
    ConcurrencyError,
    DatabaseBusy,
    RetryableDatabaseError,
)


class PgError(Exception):
    def __init__(self, sqlstate: str) -> None:
        super().__init__(f"pg error {sqlstate}")
        self.sqlstate = sqlstate


class MySqlError(Exception):
    pass


def wrapped(orig: Exception, kind: type[DBAPIError] = OperationalError) -> DBAPIError:
    return kind("SELECT 1", {}, orig)


@pytest.mark.parametrize(
    ("orig", "expected"),
    [
        (PgError("40P01"), RetryableDatabaseError),  # deadlock detected
        (PgError("40001"), RetryableDatabaseError),  # serialization failure
        (PgError("25P03"), RetryableDatabaseError),  # idle-in-transaction timeout
        (PgError("55P03"), DatabaseBusy),  # lock_timeout
        (PgError("57014"), DatabaseBusy),  # statement_timeout
        (MySqlError(1213, "Deadlock found"), RetryableDatabaseError),
        (MySqlError(2013, "Lost connection"), RetryableDatabaseError),
        (MySqlError(1205, "Lock wait timeout exceeded"), DatabaseBusy),
        (MySqlError(1969, "max_statement_time exceeded"), DatabaseBusy),
        (Exception("database is locked"), DatabaseBusy),  # SQLite's busy timeout
    ],
)
def test_each_backends_errors_map_to_what_they_abort(
    orig: Exception, expected: type[Exception]
) -> None:
    assert type(translate(wrapped(orig))) is expected


def test_a_unique_key_taken_by_another_transaction_is_a_conflict() -> None:
    assert isinstance(translate(wrapped(PgError("23505"), IntegrityError)), ConcurrencyError)


def test_other_errors_propagate_unchanged() -> None:
    assert translate(wrapped(PgError("42P01"))) is None  # undefined table
    assert translate(wrapped(MySqlError(1146, "Table doesn't exist"))) is None

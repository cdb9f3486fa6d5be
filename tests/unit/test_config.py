"""Settings from FULFILLMENT_* environment variables: the documented defaults, clear errors."""

from __future__ import annotations

import pytest

from fulfillment.config import Settings


def test_with_nothing_set_the_documented_defaults_apply() -> None:
    settings = Settings.from_env({})

    assert settings.database_url == "sqlite:///./fulfillment.db"
    assert settings.retry_backoff_seconds == 60
    assert settings.max_attempts == 3
    assert settings.carrier_countries == ("US", "CA", "GB", "DE", "FR", "NL")
    assert settings.carrier_latency_ms == 0
    assert settings.carrier_failure_rate == 0
    assert settings.job_lease_seconds == 30
    assert settings.api_keys == ()
    assert settings.group_commit_max_steps == 64


def test_the_process_environment_is_read_when_none_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FULFILLMENT_MAX_ATTEMPTS", "7")

    assert Settings.from_env().max_attempts == 7


def test_every_documented_variable_is_read() -> None:
    settings = Settings.from_env(
        {
            "FULFILLMENT_DATABASE_URL": "postgresql://app@db/fulfillment",
            "FULFILLMENT_RETRY_BACKOFF_SECONDS": "0.01",
            "FULFILLMENT_MAX_ATTEMPTS": "5",
            "FULFILLMENT_CARRIER_COUNTRIES": " us, be ,,",
            "FULFILLMENT_CARRIER_LATENCY_MS": "250",
            "FULFILLMENT_CARRIER_FAILURE_RATE": "0.2",
            "FULFILLMENT_JOB_LEASE_SECONDS": "12.5",
            "FULFILLMENT_API_KEYS": "key-one, key-two,",
            "FULFILLMENT_GROUP_COMMIT_MAX_STEPS": "1",
        }
    )

    assert settings.database_url == "postgresql://app@db/fulfillment"
    assert settings.retry_backoff_seconds == 0.01
    assert settings.max_attempts == 5
    assert settings.carrier_countries == ("US", "BE")
    assert settings.carrier_latency_ms == 250
    assert settings.carrier_failure_rate == 0.2
    assert settings.job_lease_seconds == 12.5
    assert settings.api_keys == ("key-one", "key-two")
    assert settings.group_commit_max_steps == 1


def test_an_empty_variable_counts_as_unset() -> None:
    settings = Settings.from_env(
        {
            "FULFILLMENT_DATABASE_URL": "",
            "FULFILLMENT_RETRY_BACKOFF_SECONDS": " ",
            "FULFILLMENT_MAX_ATTEMPTS": "",
            "FULFILLMENT_API_KEYS": "",
        }
    )

    assert settings.database_url == "sqlite:///./fulfillment.db"
    assert (settings.retry_backoff_seconds, settings.max_attempts) == (60, 3)
    assert settings.api_keys == ()


def test_a_whole_number_written_with_a_decimal_point_is_accepted() -> None:
    assert Settings.from_env({"FULFILLMENT_MAX_ATTEMPTS": "4.0"}).max_attempts == 4


def test_the_boundaries_of_the_valid_ranges_are_accepted() -> None:
    settings = Settings.from_env(
        {
            "FULFILLMENT_MAX_ATTEMPTS": "1",
            "FULFILLMENT_RETRY_BACKOFF_SECONDS": "0",
            "FULFILLMENT_CARRIER_FAILURE_RATE": "1",
            "FULFILLMENT_CARRIER_LATENCY_MS": "0",
        }
    )

    assert (settings.max_attempts, settings.carrier_failure_rate) == (1, 1.0)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("FULFILLMENT_MAX_ATTEMPTS", "0"),
        ("FULFILLMENT_MAX_ATTEMPTS", "-1"),
        ("FULFILLMENT_MAX_ATTEMPTS", "2.5"),
        ("FULFILLMENT_MAX_ATTEMPTS", "three"),
        ("FULFILLMENT_MAX_ATTEMPTS", "inf"),
        ("FULFILLMENT_RETRY_BACKOFF_SECONDS", "-1"),
        ("FULFILLMENT_RETRY_BACKOFF_SECONDS", "a minute"),
        ("FULFILLMENT_RETRY_BACKOFF_SECONDS", "nan"),
        ("FULFILLMENT_CARRIER_FAILURE_RATE", "1.5"),
        ("FULFILLMENT_CARRIER_FAILURE_RATE", "-0.1"),
        ("FULFILLMENT_CARRIER_FAILURE_RATE", "nan"),
        ("FULFILLMENT_CARRIER_LATENCY_MS", "-5"),
        ("FULFILLMENT_JOB_LEASE_SECONDS", "0"),
        ("FULFILLMENT_JOB_LEASE_SECONDS", "inf"),
        ("FULFILLMENT_SQLITE_SYNCHRONOUS", "sometimes"),
        ("FULFILLMENT_GROUP_COMMIT_MAX_STEPS", "0"),
    ],
)
def test_a_bad_value_is_refused_with_the_variables_name(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=variable):
        Settings.from_env({variable: value})


def test_database_bounds_are_derived_from_the_lease_unless_set() -> None:
    default = Settings.from_env({}).db_bounds  # lease 30 s
    assert (default.lock_timeout, default.idle_in_transaction, default.statement_timeout) == (
        5.0,
        15.0,
        30.0,
    )
    short = Settings.from_env({"FULFILLMENT_JOB_LEASE_SECONDS": "2"}).db_bounds
    assert (short.lock_timeout, short.idle_in_transaction, short.keepalive) == (1.0, 1.0, 1.0)

    chosen = Settings.from_env(
        {
            "FULFILLMENT_DB_LOCK_TIMEOUT_SECONDS": "0.25",
            "FULFILLMENT_DB_IDLE_IN_TRANSACTION_SECONDS": "7",
            "FULFILLMENT_DB_STATEMENT_TIMEOUT_SECONDS": "60",
            "FULFILLMENT_DB_KEEPALIVE_SECONDS": "4",
            "FULFILLMENT_DB_POOL_TIMEOUT_SECONDS": "2",
        }
    ).db_bounds
    assert (
        chosen.lock_timeout,
        chosen.idle_in_transaction,
        chosen.statement_timeout,
        chosen.keepalive,
        chosen.pool_timeout,
    ) == (0.25, 7.0, 60.0, 4.0, 2.0)


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_a_database_bound_must_be_a_positive_number(value: str) -> None:
    with pytest.raises(ValueError, match="FULFILLMENT_DB_LOCK_TIMEOUT_SECONDS"):
        Settings.from_env({"FULFILLMENT_DB_LOCK_TIMEOUT_SECONDS": value})


def test_saga_modules_are_read_and_a_missing_one_is_named() -> None:
    settings = Settings.from_env({"FULFILLMENT_SAGA_MODULES": " approval_saga , json "})
    assert settings.saga_modules == ("approval_saga", "json")
    with pytest.raises(ValueError, match="no module named 'no_such_sagas'"):
        Settings.from_env({"FULFILLMENT_SAGA_MODULES": "json,no_such_sagas"})

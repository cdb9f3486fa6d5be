"""Settings from FULFILLMENT_* environment variables: the documented defaults, clear errors."""

from __future__ import annotations

import pytest

from fulfillment.config import ApiKey, Settings, parse_api_keys


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
    assert settings.stock_commit == "group"


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
            "FULFILLMENT_STOCK_COMMIT": " Step ",
        }
    )

    assert settings.database_url == "postgresql://app@db/fulfillment"
    assert settings.retry_backoff_seconds == 0.01
    assert settings.max_attempts == 5
    assert settings.carrier_countries == ("US", "BE")
    assert settings.carrier_latency_ms == 250
    assert settings.carrier_failure_rate == 0.2
    assert settings.job_lease_seconds == 12.5
    assert settings.api_keys == (
        ApiKey("key1", "admin", "key-one"),
        ApiKey("key2", "admin", "key-two"),
    )
    assert settings.group_commit_max_steps == 1
    assert settings.stock_commit == "step"


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
        ("FULFILLMENT_STOCK_COMMIT", "per-step"),
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


# --- FULFILLMENT_API_KEYS --------------------------------------------------------------------


def test_api_keys_are_named_role_secret_triples_or_bare_admin_secrets() -> None:
    settings = Settings.from_env(
        {
            "FULFILLMENT_API_KEYS": " ann:viewer:s-ann , bare-one,shop.web:client:s:with:colons,"
            " ops-1 : operator : s-ops ,rx_desk:pharmacist:s-rx,,root:admin:s-root"
        }
    )

    assert settings.api_keys == (
        ApiKey("ann", "viewer", "s-ann"),
        ApiKey("key2", "admin", "bare-one"),  # named by its position in the list
        ApiKey("shop.web", "client", "s:with:colons"),  # the secret is all after the 2nd ':'
        ApiKey("ops-1", "operator", "s-ops"),
        ApiKey("rx_desk", "pharmacist", "s-rx"),
        ApiKey("root", "admin", "s-root"),
    )
    assert settings.api_secrets == ("s-ann", "bare-one", "s:with:colons", "s-ops", "s-rx", "s-root")
    assert settings.api_keys  # truthy: authentication is on


def test_a_name_of_64_characters_is_accepted() -> None:
    name = "a" * 64
    assert parse_api_keys(f"{name}:viewer:s") == (ApiKey(name, "viewer", "s"),)


def test_keys_given_in_code_as_strings_are_parsed_like_the_variable() -> None:
    settings = Settings(api_keys=("first", "ann:viewer:second"))  # type: ignore[arg-type]

    assert settings.api_keys == (
        ApiKey("key1", "admin", "first"),
        ApiKey("ann", "viewer", "second"),
    )


def test_a_secret_is_never_in_the_repr_of_a_key_or_of_the_settings() -> None:
    settings = Settings.from_env({"FULFILLMENT_API_KEYS": "ann:viewer:s3cr3t-value,0th3r-value"})

    assert "s3cr3t-value" not in repr(settings) and "0th3r-value" not in repr(settings)
    assert "ann" in repr(settings.api_keys[0])


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("ann:boss:s3cr3t-value", r"entry 1 \('ann'\): the role must be one of viewer, client"),
        ("ok:viewer:x,ann:Admin:s3cr3t-value", r"entry 2 \('ann'\): the role must be one of"),
        ("ann:s3cr3t-value:viewer", r"entry 1 \('ann'\): the role must be one of"),  # misordered
        (":viewer:s3cr3t-value", r"entry 1: the name must be 1 to 64"),
        ("ann:viewer:", r"entry 1 \('ann'\): the secret is empty"),
        ("ann:viewer: ", r"entry 1 \('ann'\): the secret is empty"),
        ("ann::s3cr3t-value", r"entry 1 \('ann'\): the role must be one of"),
        ("x,an n:viewer:s3cr3t-value", r"entry 2: the name must be 1 to 64 letters"),
        ("ann/x:viewer:s3cr3t-value", r"entry 1: the name must be"),
        (f"{'a' * 65}:viewer:s3cr3t-value", r"entry 1: the name must be"),
        ("ann:s3cr3t-value", r"entry 1 has one ':'; write name:role:secret"),
        (
            "ann:viewer:s3cr3t-value,ann:client:other",
            r"entries 1 and 2 are both named 'ann'",
        ),
        ("first,key1:viewer:s3cr3t-value", r"entries 1 and 2 are both named 'key1'"),
        (
            "ann:viewer:s3cr3t-value,bob:client:s3cr3t-value",
            r"entries 1 \('ann'\) and 2 \('bob'\) have the same secret",
        ),
        ("s3cr3t-value,bob:client:s3cr3t-value", r"entries 1 \('key1'\) and 2 \('bob'\)"),
        ("s3cr3t-value, s3cr3t-value", r"entries 1 \('key1'\) and 2 \('key2'\) have the same"),
    ],
)
def test_a_bad_api_key_entry_is_named_and_its_secret_never_repeated(
    value: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        Settings.from_env({"FULFILLMENT_API_KEYS": value})

    text = str(caught.value)
    assert text.startswith("FULFILLMENT_API_KEYS: ")
    assert "s3cr3t-value" not in text
    assert "boss" not in text and "Admin" not in text  # nor the role, which may be a secret


def test_the_minimum_shelf_life_is_a_whole_number_of_days_not_below_zero() -> None:
    assert Settings.from_env({}).min_shelf_life_days == 30
    assert Settings.from_env({"FULFILLMENT_MIN_SHELF_LIFE_DAYS": "0"}).min_shelf_life_days == 0
    assert Settings.from_env({"FULFILLMENT_MIN_SHELF_LIFE_DAYS": "90"}).min_shelf_life_days == 90
    for value in ("-1", "1.5", "soon"):
        with pytest.raises(ValueError, match="FULFILLMENT_MIN_SHELF_LIFE_DAYS"):
            Settings.from_env({"FULFILLMENT_MIN_SHELF_LIFE_DAYS": value})


def test_a_pickup_delay_needs_the_webhook_secret_in_the_processes_that_run_sagas() -> None:
    delayed = Settings.from_env({"FULFILLMENT_CARRIER_PICKUP_DELAY_MS": "500"})
    with pytest.raises(ValueError, match="FULFILLMENT_CARRIER_WEBHOOK_SECRET"):
        delayed.check_pickups_confirmable()
    Settings.from_env(
        {
            "FULFILLMENT_CARRIER_PICKUP_DELAY_MS": "500",
            "FULFILLMENT_CARRIER_WEBHOOK_SECRET": "s" * 16,
        }
    ).check_pickups_confirmable()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FULFILLMENT_VERIFICATION_REQUIRED_FOR", "some"),
        ("FULFILLMENT_VERIFICATION_TIMEOUT_SECONDS", "0"),
        ("FULFILLMENT_PICKUP_TIMEOUT_SECONDS", "-1"),
        ("FULFILLMENT_CARRIER_PICKUP_DELAY_MS", "-5"),
        ("FULFILLMENT_CARRIER_WEBHOOK_SECRET", "short"),
    ],
)
def test_bad_lifecycle_settings_are_refused_by_name(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        Settings.from_env({name: value})


@pytest.mark.parametrize(
    ("name", "attribute", "default", "value"),
    [
        # Idempotency keys hold a day; the access audit keeps its rows six years.
        ("FULFILLMENT_IDEMPOTENCY_TTL_SECONDS", "idempotency_ttl_seconds", 86400, 3600),
        ("FULFILLMENT_AUDIT_RETENTION_DAYS", "audit_retention_days", 2190, 365.5),
    ],
)
def test_what_the_workers_prune_has_a_default_lifetime_that_must_be_positive(
    name: str, attribute: str, default: float, value: float
) -> None:
    assert getattr(Settings.from_env({}), attribute) == default
    assert getattr(Settings.from_env({name: str(value)}), attribute) == value
    for bad in ("0", "-1", "nan", "inf", "a day"):
        with pytest.raises(ValueError, match=name):
            Settings.from_env({name: bad})

"""Settings from the environment (the `FULFILLMENT_*` variables of the README)."""

from __future__ import annotations

import importlib.util
import math
import os
from dataclasses import dataclass, field
from typing import Self

from fulfillment.adapters.db import DatabaseBounds

DEFAULT_DATABASE_URL = "sqlite:///./fulfillment.db"
DEFAULT_COUNTRIES = ("US", "CA", "GB", "DE", "FR", "NL")


def _float(env: dict[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number, got {raw!r}") from exc
    if not math.isfinite(value):
        # "nan" and "inf" parse as floats but are no valid delay, rate or count.
        raise ValueError(f"{name} must be a finite number, got {raw!r}")
    return value


def _optional(env: dict[str, str], name: str) -> float | None:
    """A number, or None when unset (its default is derived from other settings)."""
    value = _float(env, name, math.nan)
    return None if math.isnan(value) else value


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _int(env: dict[str, str], name: str, default: int) -> int:
    value = _float(env, name, default)
    if value != int(value):
        raise ValueError(f"{name} must be a whole number, got {value}")
    return int(value)


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    retry_backoff_seconds: float = 60.0
    max_attempts: int = 3
    carrier_countries: tuple[str, ...] = DEFAULT_COUNTRIES
    carrier_latency_ms: float = 0.0
    carrier_failure_rate: float = 0.0
    job_lease_seconds: float = 30.0
    api_keys: tuple[str, ...] = ()
    step_timeout_seconds: float = 900.0
    saga_timeout_seconds: float = 3600.0
    sqlite_synchronous: str = "FULL"
    poll_interval_seconds: float = 0.05
    max_job_failures: int = 10
    #: Steps a worker may commit in one transaction (adapters/group_commit.py); 1: off.
    #: 32 keeps a group's savepoints under PostgreSQL's 64 cached subtransactions.
    group_commit_max_steps: int = 64
    #: Bounds on every database connection (docs/architecture.md, rule 11); None: derived from the
    #: lease (`db_bounds`).
    db_lock_timeout_seconds: float | None = None
    db_idle_in_transaction_seconds: float | None = None
    db_statement_timeout_seconds: float | None = None
    db_keepalive_seconds: float | None = None
    db_pool_timeout_seconds: float | None = None
    #: Modules that register more saga definitions (docs/sagas.md).
    saga_modules: tuple[str, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def db_bounds(self) -> DatabaseBounds:
        """How long a connection may wait or idle: the set values, else from the lease."""
        derived = DatabaseBounds.for_lease(self.job_lease_seconds)
        return DatabaseBounds(
            lock_timeout=_or(self.db_lock_timeout_seconds, derived.lock_timeout),
            idle_in_transaction=_or(
                self.db_idle_in_transaction_seconds, derived.idle_in_transaction
            ),
            statement_timeout=_or(self.db_statement_timeout_seconds, derived.statement_timeout),
            keepalive=_or(self.db_keepalive_seconds, derived.keepalive),
            pool_timeout=_or(self.db_pool_timeout_seconds, derived.pool_timeout),
        )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Self:
        env = dict(os.environ if environ is None else environ)
        countries = env.get("FULFILLMENT_CARRIER_COUNTRIES")
        keys = env.get("FULFILLMENT_API_KEYS", "")
        settings = cls(
            database_url=env.get("FULFILLMENT_DATABASE_URL") or DEFAULT_DATABASE_URL,
            retry_backoff_seconds=_float(env, "FULFILLMENT_RETRY_BACKOFF_SECONDS", 60.0),
            max_attempts=_int(env, "FULFILLMENT_MAX_ATTEMPTS", 3),
            carrier_countries=(
                tuple(c.strip().upper() for c in countries.split(",") if c.strip())
                if countries is not None
                else DEFAULT_COUNTRIES
            ),
            carrier_latency_ms=_float(env, "FULFILLMENT_CARRIER_LATENCY_MS", 0.0),
            carrier_failure_rate=_float(env, "FULFILLMENT_CARRIER_FAILURE_RATE", 0.0),
            job_lease_seconds=_float(env, "FULFILLMENT_JOB_LEASE_SECONDS", 30.0),
            api_keys=tuple(k.strip() for k in keys.split(",") if k.strip()),
            step_timeout_seconds=_float(env, "FULFILLMENT_STEP_TIMEOUT_SECONDS", 900.0),
            saga_timeout_seconds=_float(env, "FULFILLMENT_SAGA_TIMEOUT_SECONDS", 3600.0),
            sqlite_synchronous=env.get("FULFILLMENT_SQLITE_SYNCHRONOUS", "FULL").upper(),
            poll_interval_seconds=_float(env, "FULFILLMENT_POLL_INTERVAL_SECONDS", 0.05),
            max_job_failures=_int(env, "FULFILLMENT_MAX_JOB_FAILURES", 10),
            group_commit_max_steps=_int(env, "FULFILLMENT_GROUP_COMMIT_MAX_STEPS", 64),
            db_lock_timeout_seconds=_optional(env, "FULFILLMENT_DB_LOCK_TIMEOUT_SECONDS"),
            db_idle_in_transaction_seconds=_optional(
                env, "FULFILLMENT_DB_IDLE_IN_TRANSACTION_SECONDS"
            ),
            db_statement_timeout_seconds=_optional(env, "FULFILLMENT_DB_STATEMENT_TIMEOUT_SECONDS"),
            db_keepalive_seconds=_optional(env, "FULFILLMENT_DB_KEEPALIVE_SECONDS"),
            db_pool_timeout_seconds=_optional(env, "FULFILLMENT_DB_POOL_TIMEOUT_SECONDS"),
            saga_modules=tuple(
                m.strip() for m in env.get("FULFILLMENT_SAGA_MODULES", "").split(",") if m.strip()
            ),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("FULFILLMENT_MAX_ATTEMPTS must be at least 1")
        if self.retry_backoff_seconds < 0:
            raise ValueError("FULFILLMENT_RETRY_BACKOFF_SECONDS must be >= 0")
        if not 0.0 <= self.carrier_failure_rate <= 1.0:
            raise ValueError("FULFILLMENT_CARRIER_FAILURE_RATE must be between 0 and 1")
        if self.carrier_latency_ms < 0:
            raise ValueError("FULFILLMENT_CARRIER_LATENCY_MS must be >= 0")
        if self.job_lease_seconds <= 0:
            raise ValueError("FULFILLMENT_JOB_LEASE_SECONDS must be > 0")
        if self.group_commit_max_steps < 1:
            raise ValueError("FULFILLMENT_GROUP_COMMIT_MAX_STEPS must be at least 1")
        for name, value in (
            ("FULFILLMENT_DB_LOCK_TIMEOUT_SECONDS", self.db_lock_timeout_seconds),
            ("FULFILLMENT_DB_IDLE_IN_TRANSACTION_SECONDS", self.db_idle_in_transaction_seconds),
            ("FULFILLMENT_DB_STATEMENT_TIMEOUT_SECONDS", self.db_statement_timeout_seconds),
            ("FULFILLMENT_DB_KEEPALIVE_SECONDS", self.db_keepalive_seconds),
            ("FULFILLMENT_DB_POOL_TIMEOUT_SECONDS", self.db_pool_timeout_seconds),
        ):
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0")
        for module in self.saga_modules:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                raise ValueError(
                    f"FULFILLMENT_SAGA_MODULES: no module named {module!r} "
                    "(is its directory on PYTHONPATH?)"
                )
        if self.sqlite_synchronous not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError("FULFILLMENT_SQLITE_SYNCHRONOUS must be OFF, NORMAL, FULL or EXTRA")

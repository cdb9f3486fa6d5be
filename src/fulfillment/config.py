"""Settings from the environment (the `FULFILLMENT_*` variables of the README)."""

from __future__ import annotations

import importlib.util
import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Self

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from fulfillment.adapters.db import DatabaseBounds, check_database_url
from fulfillment.adapters.http_carrier import check_carrier_url
from fulfillment.adapters.phi_crypto import MasterKeys

DEFAULT_DATABASE_URL = "sqlite:///./fulfillment.db"
DEFAULT_COUNTRIES = ("US", "CA", "GB", "DE", "FR", "NL")
#: FULFILLMENT_CARRIER: the built-in simulated carrier, or a carrier's REST API
#: (adapters/http_carrier.py, docs/carriers.md).
CARRIERS = ("simulated", "http")
#: FULFILLMENT_STOCK_COMMIT (`Settings.stock_commit`).
STOCK_COMMITS = ("group", "step")


def _on_off(env: dict[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    value = raw.strip().lower()
    if value in ("on", "true", "1", "yes"):
        return True
    if value in ("off", "false", "0", "no"):
        return False
    raise ValueError(f"{name} must be on or off, not {raw!r}")


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


def _optional_int(env: dict[str, str], name: str) -> int | None:
    """A whole number, or None when unset (what it sets is off)."""
    return None if _optional(env, name) is None else _int(env, name, 0)


#: The roles an API key may have, least to most allowed (entrypoints/api_roles.py says
#: what each may do).
ROLES = ("viewer", "client", "pharmacist", "operator", "admin")
#: The role of a bare secret in FULFILLMENT_API_KEYS (and of everyone when keys are off).
ADMIN = "admin"
_KEY_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class ApiKey:
    """One bearer key of FULFILLMENT_API_KEYS: its name (the `sender` of what it does),
    its role and its secret. The secret is left out of `repr`, so never logged with it."""

    name: str
    role: str
    secret: str = field(repr=False)


def parse_api_keys(entries: str | Iterable[str | ApiKey]) -> tuple[ApiKey, ...]:
    """The keys of FULFILLMENT_API_KEYS: comma-separated `name:role:secret` or bare secrets.

    A bare secret (no `:`) is an `admin` key named `key1`, `key2`, ... by its position
    among the non-empty entries. Raises ValueError for an entry with a `:` that is not
    `name:role:secret` (an empty part, an unknown role, a name that is not 1..64 of
    `A-Za-z0-9_.-`) and for two keys with one name or one secret. A message names an
    entry by its position, and by its name once that is known to be valid; it never
    repeats a secret, nor a role (a misordered entry may hold its secret there).
    """
    if isinstance(entries, str):
        entries = entries.split(",")
    keys: list[ApiKey] = []
    for entry in entries:
        if isinstance(entry, str):
            entry = entry.strip()
            if not entry:
                continue
        keys.append(_api_key(entry, len(keys) + 1))
    names: dict[str, int] = {}
    secrets: dict[str, int] = {}
    for position, key in enumerate(keys, start=1):
        if key.name in names:
            raise ValueError(
                f"FULFILLMENT_API_KEYS: entries {names[key.name]} and {position} "
                f"are both named {key.name!r}; names must differ"
            )
        if key.secret in secrets:
            first = secrets[key.secret]
            raise ValueError(
                f"FULFILLMENT_API_KEYS: entries {first} ({keys[first - 1].name!r}) and "
                f"{position} ({key.name!r}) have the same secret; secrets must differ"
            )
        names[key.name] = position
        secrets[key.secret] = position
    return tuple(keys)


def _api_key(entry: str | ApiKey, position: int) -> ApiKey:
    where = f"FULFILLMENT_API_KEYS: entry {position}"
    if isinstance(entry, ApiKey):
        name, role, secret = entry.name, entry.role, entry.secret
    elif ":" not in entry:
        return ApiKey(f"key{position}", ADMIN, entry)
    else:
        parts = entry.split(":", 2)
        if len(parts) != 3:
            raise ValueError(
                f"{where} has one ':'; write name:role:secret, or a bare secret without ':'"
            )
        name, role, secret = (part.strip() for part in parts)
    if not _KEY_NAME.fullmatch(name):
        raise ValueError(f"{where}: the name must be 1 to 64 letters, digits, '_', '.' or '-'")
    where = f"{where} ({name!r})"
    if role not in ROLES:
        raise ValueError(f"{where}: the role must be one of {', '.join(ROLES)}")
    if not secret:
        raise ValueError(f"{where}: the secret is empty")
    return ApiKey(name, role, secret)


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    retry_backoff_seconds: float = 60.0
    max_attempts: int = 3
    carrier_countries: tuple[str, ...] = DEFAULT_COUNTRIES
    carrier_latency_ms: float = 0.0
    carrier_failure_rate: float = 0.0
    job_lease_seconds: float = 30.0
    #: FULFILLMENT_API_KEYS (`parse_api_keys`); empty: no authentication. Plain strings
    #: given here are parsed like the variable's entries (bare secrets: admin keys).
    api_keys: tuple[ApiKey, ...] = ()
    step_timeout_seconds: float = 900.0
    saga_timeout_seconds: float = 3600.0
    sqlite_synchronous: str = "FULL"
    poll_interval_seconds: float = 0.05
    max_job_failures: int = 10
    #: Steps a worker may commit in one transaction (adapters/group_commit.py); 1: off.
    #: 32 keeps a group's savepoints under PostgreSQL's 64 cached subtransactions.
    group_commit_max_steps: int = 64
    #: How the steps that write stock commit where several processes write at once
    #: (PostgreSQL, MariaDB): "group", in the worker's stock group under the stock lock
    #: (few commits; the stock groups of all workers take turns); "step", each in a
    #: transaction of its own that locks only its SKUs' rows (workers on different SKUs
    #: overlap: for long round trips to the database). adapters/group_commit.py.
    stock_commit: str = "group"
    #: Bounds on every database connection (docs/architecture.md, rule 11); None: derived from the
    #: lease (`db_bounds`).
    db_lock_timeout_seconds: float | None = None
    db_idle_in_transaction_seconds: float | None = None
    db_statement_timeout_seconds: float | None = None
    db_keepalive_seconds: float | None = None
    db_pool_timeout_seconds: float | None = None
    #: The longest an API request waits for a lock or a pooled connection (`api_db_bounds`).
    api_lock_timeout_seconds: float = 5.0
    #: Modules that register more saga definitions (docs/sagas.md).
    saga_modules: tuple[str, ...] = ()
    #: The pharmacy lifecycle (docs/api.md): which orders a pharmacist verifies, how
    #: long the saga waits for that and for the carrier's pickup, the simulated
    #: carrier's pickup delay, and the secret of the carrier's signed webhooks.
    verification_required_for: str = "controlled"
    verification_timeout_seconds: float = 86400.0
    pickup_timeout_seconds: float = 259200.0
    carrier_pickup_delay_ms: float = 0.0
    carrier_webhook_secret: str | None = field(default=None, repr=False)
    #: Which carrier books the shipments (CARRIERS); `http`: the API at `carrier_url`,
    #: authenticated by the bearer `carrier_token` (both required then).
    carrier: str = "simulated"
    carrier_url: str | None = None
    carrier_token: str | None = field(default=None, repr=False)
    #: Days of shelf life a lot must have left to be reserved (FEFO skips the others).
    min_shelf_life_days: int = 30
    #: How long an `Idempotency-Key` holds; the workers prune older ones.
    idempotency_ttl_seconds: float = 86400.0
    #: Days the access audit of patient data keeps its rows (adapters/access_log.py);
    #: the workers delete older ones.
    audit_retention_days: float = 2190.0
    #: Patient data (docs/security.md): FULFILLMENT_MASTER_KEY (None: on SQLite, the key
    #: file beside the database; elsewhere none, see `check_patient_data_protected`), and
    #: whether new patient data is sealed (FULFILLMENT_PHI_ENCRYPTION, `on` or `off`).
    master_key: str | None = field(default=None, repr=False)
    phi_encryption: bool = True
    #: Writes a minute per API key, per API process (entrypoints/api_rate_limit.py);
    #: None: no limit.
    rate_limit_per_minute: int | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Normalised (and checked) however the settings were made, the environment or code.
        object.__setattr__(self, "api_keys", parse_api_keys(self.api_keys))

    def check_pickups_confirmable(self) -> None:
        """For the processes that run sagas (`serve`, `worker`): a simulated carrier that
        picks up later confirms by signed webhooks, which need the secret (the demo sets
        its own)."""
        if self.carrier_pickup_delay_ms > 0 and self.carrier_webhook_secret is None:
            raise ValueError(
                "FULFILLMENT_CARRIER_PICKUP_DELAY_MS above 0 needs "
                "FULFILLMENT_CARRIER_WEBHOOK_SECRET: the simulated carrier confirms "
                "pickups by signed webhooks"
            )
        if self.carrier == "http" and self.carrier_webhook_secret is None:
            raise ValueError(
                "FULFILLMENT_CARRIER=http needs FULFILLMENT_CARRIER_WEBHOOK_SECRET: the "
                "carrier confirms pickups and deliveries by signed webhooks"
            )

    @property
    def master_keys(self) -> MasterKeys | None:
        """FULFILLMENT_MASTER_KEY parsed; None when it is not set."""
        return None if self.master_key is None else MasterKeys.parse(self.master_key)

    def check_patient_data_protected(self) -> None:
        """For `migrate`, `serve` and `worker`: a server database without a master key
        would store patient data in plain text. Refused, unless encryption was switched
        off on purpose (then `bootstrap.patient_data_of` logs so at every start). SQLite
        keeps a generated key in a file beside the database instead."""
        if self.master_key is not None or not self.phi_encryption:
            return
        try:
            backend = make_url(self.database_url).get_backend_name()
        except ArgumentError:
            return  # a malformed URL: connecting says what is wrong with it
        if backend != "sqlite":
            raise ValueError(
                "FULFILLMENT_MASTER_KEY is not set, so patient data would be stored in "
                "plain text: set it to the output of `fulfillment keys generate` (or "
                "FULFILLMENT_PHI_ENCRYPTION=off, on purpose)"
            )

    @property
    def api_secrets(self) -> tuple[str, ...]:
        """The keys' secrets, the carrier webhooks' secret, the carrier's API token and the
        master key setting: what the log must never show."""
        webhook = (self.carrier_webhook_secret,) if self.carrier_webhook_secret else ()
        token = (self.carrier_token,) if self.carrier_token else ()
        master = (self.master_key,) if self.master_key else ()
        return tuple(key.secret for key in self.api_keys) + webhook + token + master

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

    @property
    def api_db_bounds(self) -> DatabaseBounds:
        """`db_bounds` with its lock and pool waits cut to FULFILLMENT_API_LOCK_TIMEOUT_SECONDS:
        a client is told 503 with Retry-After within seconds, while a standalone worker may
        keep a longer bound (a job that waits is only postponed)."""
        bounds = self.db_bounds
        return replace(
            bounds,
            lock_timeout=min(bounds.lock_timeout, self.api_lock_timeout_seconds),
            pool_timeout=min(bounds.pool_timeout, self.api_lock_timeout_seconds),
        )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Self:
        env = dict(os.environ if environ is None else environ)
        countries = env.get("FULFILLMENT_CARRIER_COUNTRIES")
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
            api_keys=parse_api_keys(env.get("FULFILLMENT_API_KEYS", "")),
            step_timeout_seconds=_float(env, "FULFILLMENT_STEP_TIMEOUT_SECONDS", 900.0),
            saga_timeout_seconds=_float(env, "FULFILLMENT_SAGA_TIMEOUT_SECONDS", 3600.0),
            sqlite_synchronous=env.get("FULFILLMENT_SQLITE_SYNCHRONOUS", "FULL").upper(),
            poll_interval_seconds=_float(env, "FULFILLMENT_POLL_INTERVAL_SECONDS", 0.05),
            max_job_failures=_int(env, "FULFILLMENT_MAX_JOB_FAILURES", 10),
            group_commit_max_steps=_int(env, "FULFILLMENT_GROUP_COMMIT_MAX_STEPS", 64),
            stock_commit=(env.get("FULFILLMENT_STOCK_COMMIT") or "group").strip().lower(),
            db_lock_timeout_seconds=_optional(env, "FULFILLMENT_DB_LOCK_TIMEOUT_SECONDS"),
            db_idle_in_transaction_seconds=_optional(
                env, "FULFILLMENT_DB_IDLE_IN_TRANSACTION_SECONDS"
            ),
            db_statement_timeout_seconds=_optional(env, "FULFILLMENT_DB_STATEMENT_TIMEOUT_SECONDS"),
            db_keepalive_seconds=_optional(env, "FULFILLMENT_DB_KEEPALIVE_SECONDS"),
            db_pool_timeout_seconds=_optional(env, "FULFILLMENT_DB_POOL_TIMEOUT_SECONDS"),
            api_lock_timeout_seconds=_float(env, "FULFILLMENT_API_LOCK_TIMEOUT_SECONDS", 5.0),
            min_shelf_life_days=_int(env, "FULFILLMENT_MIN_SHELF_LIFE_DAYS", 30),
            idempotency_ttl_seconds=_float(env, "FULFILLMENT_IDEMPOTENCY_TTL_SECONDS", 86400.0),
            audit_retention_days=_float(env, "FULFILLMENT_AUDIT_RETENTION_DAYS", 2190.0),
            saga_modules=tuple(
                m.strip() for m in env.get("FULFILLMENT_SAGA_MODULES", "").split(",") if m.strip()
            ),
            verification_required_for=(
                env.get("FULFILLMENT_VERIFICATION_REQUIRED_FOR") or "controlled"
            )
            .strip()
            .lower(),
            verification_timeout_seconds=_float(
                env, "FULFILLMENT_VERIFICATION_TIMEOUT_SECONDS", 86400.0
            ),
            pickup_timeout_seconds=_float(env, "FULFILLMENT_PICKUP_TIMEOUT_SECONDS", 259200.0),
            carrier_pickup_delay_ms=_float(env, "FULFILLMENT_CARRIER_PICKUP_DELAY_MS", 0.0),
            carrier_webhook_secret=env.get("FULFILLMENT_CARRIER_WEBHOOK_SECRET") or None,
            carrier=(env.get("FULFILLMENT_CARRIER") or "simulated").strip().lower(),
            carrier_url=(env.get("FULFILLMENT_CARRIER_URL") or "").strip() or None,
            carrier_token=(env.get("FULFILLMENT_CARRIER_TOKEN") or "").strip() or None,
            master_key=env.get("FULFILLMENT_MASTER_KEY") or None,
            phi_encryption=_on_off(env, "FULFILLMENT_PHI_ENCRYPTION", True),
            rate_limit_per_minute=_optional_int(env, "FULFILLMENT_RATE_LIMIT_PER_MINUTE"),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        check_database_url(self.database_url)
        if self.master_key is not None:
            MasterKeys.parse(self.master_key)  # its errors never echo the key
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
        if self.stock_commit not in STOCK_COMMITS:
            raise ValueError(
                f"FULFILLMENT_STOCK_COMMIT must be one of {', '.join(STOCK_COMMITS)},"
                f" not {self.stock_commit!r}"
            )
        if self.min_shelf_life_days < 0:
            raise ValueError("FULFILLMENT_MIN_SHELF_LIFE_DAYS must be >= 0")
        for name, value in (
            ("FULFILLMENT_DB_LOCK_TIMEOUT_SECONDS", self.db_lock_timeout_seconds),
            ("FULFILLMENT_DB_IDLE_IN_TRANSACTION_SECONDS", self.db_idle_in_transaction_seconds),
            ("FULFILLMENT_DB_STATEMENT_TIMEOUT_SECONDS", self.db_statement_timeout_seconds),
            ("FULFILLMENT_DB_KEEPALIVE_SECONDS", self.db_keepalive_seconds),
            ("FULFILLMENT_DB_POOL_TIMEOUT_SECONDS", self.db_pool_timeout_seconds),
            ("FULFILLMENT_API_LOCK_TIMEOUT_SECONDS", self.api_lock_timeout_seconds),
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
        if self.verification_required_for not in ("controlled", "all", "none"):
            raise ValueError(
                "FULFILLMENT_VERIFICATION_REQUIRED_FOR must be controlled, all or none, "
                f"got {self.verification_required_for!r}"
            )
        for name, value in (
            ("FULFILLMENT_VERIFICATION_TIMEOUT_SECONDS", self.verification_timeout_seconds),
            ("FULFILLMENT_PICKUP_TIMEOUT_SECONDS", self.pickup_timeout_seconds),
            ("FULFILLMENT_IDEMPOTENCY_TTL_SECONDS", self.idempotency_ttl_seconds),
            ("FULFILLMENT_AUDIT_RETENTION_DAYS", self.audit_retention_days),
        ):
            if value <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.carrier_pickup_delay_ms < 0:
            raise ValueError("FULFILLMENT_CARRIER_PICKUP_DELAY_MS must be >= 0")

        self._validate_carrier()
        if self.carrier_webhook_secret is not None and len(self.carrier_webhook_secret) < 16:
            raise ValueError("FULFILLMENT_CARRIER_WEBHOOK_SECRET must be at least 16 characters")
        if self.sqlite_synchronous not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
            raise ValueError("FULFILLMENT_SQLITE_SYNCHRONOUS must be OFF, NORMAL, FULL or EXTRA")
        if self.rate_limit_per_minute is not None and self.rate_limit_per_minute < 1:
            raise ValueError("FULFILLMENT_RATE_LIMIT_PER_MINUTE must be at least 1 (unset: off)")

    def _validate_carrier(self) -> None:
        """FULFILLMENT_CARRIER and, for `http`, its URL and token (docs/carriers.md)."""
        if self.carrier not in CARRIERS:
            raise ValueError(
                f"FULFILLMENT_CARRIER must be {' or '.join(CARRIERS)}, got {self.carrier!r}"
            )
        if self.carrier != "http":
            return
        if self.carrier_url is None:
            raise ValueError("FULFILLMENT_CARRIER=http needs FULFILLMENT_CARRIER_URL")
        check_carrier_url(self.carrier_url)
        if self.carrier_token is None:
            raise ValueError(
                "FULFILLMENT_CARRIER=http needs FULFILLMENT_CARRIER_TOKEN, the bearer token "
                "of the carrier's API"
            )

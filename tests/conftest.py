"""Shared fixtures: one migrated database per backend, emptied before each test.

Backends: SQLite (always), PostgreSQL and MariaDB/MySQL (local servers). Under CI=true a
server that does not answer fails the test; elsewhere it skips, saying why.
Override the servers with FULFILLMENT_TEST_POSTGRES_URL / FULFILLMENT_TEST_MYSQL_URL
(an admin URL; the tests create and drop their own databases there).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import create_nullpool_engine, normalize_url
from fulfillment.adapters.migrate import migrate
from fulfillment.bootstrap import App, bootstrap
from fulfillment.config import Settings

BACKENDS = ("sqlite", "postgresql", "mysql")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ADMIN_URLS = {
    "postgresql": os.environ.get(
        "FULFILLMENT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    ),
    "mysql": os.environ.get("FULFILLMENT_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test"),
}
#: The master key of patient data in every test (fixed: the processes a test starts read
#: what it wrote); subprocesses inherit it from the environment. Tests of the key file
#: of SQLite, and of a server database without a key, unset it.
TEST_MASTER_KEY = "test:" + "dGVzdC1tYXN0ZXIta2V5LWZvci10aGUtdGVzdC1zdWk="
os.environ.setdefault("FULFILLMENT_MASTER_KEY", TEST_MASTER_KEY)
# Every table the tests empty between tests (event_append_lock keeps its one row).
DATA_TABLES = [tbl.name for tbl in t.metadata.sorted_tables if tbl.name != "event_append_lock"]


def _unavailable(backend: str, exc: Exception) -> None:
    message = f"{backend} server not reachable at {ADMIN_URLS[backend]}: {exc}"
    if IN_CI:
        pytest.fail(f"CI=true requires every backend. {message}", pytrace=False)
    pytest.skip(message)


def _create_server_database(backend: str) -> tuple[str, Callable[[], None]]:
    admin_url = normalize_url(ADMIN_URLS[backend])
    name = f"fs_test_{uuid.uuid4().hex[:10]}"
    engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
    except Exception as exc:
        engine.dispose()
        _unavailable(backend, exc)
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with engine.connect() as conn:
            if backend == "postgresql":
                conn.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            else:
                conn.execute(text(f"DROP DATABASE IF EXISTS {name}"))
        engine.dispose()

    return url, drop


@pytest.fixture(scope="session")
def _migrated_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Created lazily, one database per backend for the whole session."""
    urls: dict[str, str] = {}
    drops: list[Callable[[], None]] = []

    class Lazy(dict[str, str]):
        def __missing__(self, backend: str) -> str:
            if backend == "sqlite":
                url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'test.db'}"
            else:
                url, drop = _create_server_database(backend)
                drops.append(drop)
            engine = create_nullpool_engine(url)
            migrate(engine)
            engine.dispose()
            self[backend] = url
            return url

    lazy = Lazy(urls)
    yield lazy
    for drop in drops:
        drop()


def empty_database(url: str) -> None:
    engine = create_nullpool_engine(url)
    with engine.begin() as conn:
        for name in reversed(DATA_TABLES):
            conn.execute(text(f"DELETE FROM {name}"))
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, _migrated_urls: dict[str, str]) -> str:
    """A migrated, empty database on each backend in turn."""
    url = _migrated_urls[backend]
    empty_database(url)
    return url


@pytest.fixture
def fresh_database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A brand-new, un-migrated database (migration tests)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    url, drop = _create_server_database(backend)
    yield url
    drop()


#: The base URL of in-process API clients: without API keys the API answers only
#: requests to a loopback host (421 otherwise), and TestClient's own is `testserver`.
LOOPBACK = "http://127.0.0.1"


def settings_for(database_url: str, **overrides: Any) -> Settings:
    """Settings for tests: milliseconds of backoff, short leases, the tests' master key."""
    values: dict[str, Any] = {
        "database_url": database_url,
        "master_key": TEST_MASTER_KEY,
        "retry_backoff_seconds": 0.01,
        "job_lease_seconds": 5.0,
        "poll_interval_seconds": 0.01,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def make_app(database_url: str) -> Iterator[Callable[..., App]]:
    """Build an App on the test database; `make_app(carrier=..., max_attempts=...)`."""
    apps: list[App] = []

    def factory(**kwargs: Any) -> App:
        wiring = {k: kwargs.pop(k) for k in ("carrier", "clock", "retry") if k in kwargs}
        app = bootstrap(settings_for(database_url, **kwargs), **wiring)
        apps.append(app)
        return app

    yield factory
    for app in apps:
        app.close()


@pytest.fixture
def app(make_app: Callable[..., App]) -> App:
    return make_app()


@pytest.fixture
def run_cli(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """`fulfillment ARGS...` in this process, on the test database; its output.
    `expect`: the exit status it must end with (0 unless said)."""
    from typer.testing import CliRunner

    from fulfillment.entrypoints import cli

    monkeypatch.setenv("FULFILLMENT_DATABASE_URL", database_url)
    monkeypatch.setenv("COLUMNS", "200")  # wide tables: nothing cut
    monkeypatch.setenv("NO_COLOR", "1")
    runner = CliRunner()

    def run(*args: str, expect: int = 0) -> str:
        result = runner.invoke(cli.app, list(args))
        assert result.exit_code == expect, (result.exit_code, result.output, result.exception)
        return result.output

    return run

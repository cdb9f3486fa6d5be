"""`fulfillment migrate --create-database`: the README's URLs name a database that a fresh
server does not have; `migrate` says how to create it, and with `--create-database`
creates it (when the user may), then migrates. The README's test URLs are the tests'.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ADMIN_URLS, _unavailable
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from fulfillment.adapters.db import normalize_url

from .test_startup import environment, one_error_line, run

README = Path(__file__).resolve().parents[2] / "README.md"
#: The servers the README says the tests use (tests/conftest.py, ADMIN_URLS).
README_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
README_MYSQL = "mysql://root@127.0.0.1:3306/test"


@pytest.fixture
def admin(backend: str) -> Iterator[Engine]:
    """An AUTOCOMMIT engine on the backend's admin URL (the test skips without a server)."""
    engine = create_engine(normalize_url(ADMIN_URLS[backend]), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect():
            pass
    except Exception as exc:
        engine.dispose()
        _unavailable(backend, exc)
    yield engine
    engine.dispose()


@pytest.fixture
def missing_database(admin: Engine, backend: str) -> Iterator[str]:
    """The URL of a database that does not exist (dropped again after the test)."""
    name = f"fs_test_new_{uuid.uuid4().hex[:8]}"
    url = make_url(ADMIN_URLS[backend]).set(database=name)
    yield url.render_as_string(hide_password=False)
    with admin.connect() as conn:
        force = " WITH (FORCE)" if backend == "postgresql" else ""
        conn.execute(text(f"DROP DATABASE IF EXISTS {name}{force}"))


@pytest.mark.parametrize("backend", ["postgresql", "mysql"], indirect=True)
def test_migrate_create_database_creates_the_database_then_migrates(
    missing_database: str, tmp_path: Path
) -> None:
    name = make_url(missing_database).database
    env = environment(missing_database)
    line = one_error_line(run("migrate", env=env, cwd=tmp_path, expect=1))
    assert f"database {name!r} does not exist" in line
    assert "`fulfillment migrate --create-database`" in line

    out = run("migrate", "--create-database", env=env, cwd=tmp_path)
    assert f"created database {name} on " in out
    assert "schema at revision" in out
    assert "no schema" not in run("orders", "list", env=env, cwd=tmp_path)

    again = run("migrate", "--create-database", env=env, cwd=tmp_path)
    assert "created database" not in again, "it existed: nothing to create"
    assert "schema at revision" in again


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
def test_migrate_create_database_says_when_the_user_may_not(
    admin: Engine, missing_database: str, tmp_path: Path
) -> None:
    role = f"fs_test_role_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN NOCREATEDB"))
    try:
        url = make_url(missing_database).set(username=role).render_as_string(False)
        out = run("migrate", "--create-database", env=environment(url), cwd=tmp_path, expect=1)
        line = one_error_line(out)
        name = make_url(missing_database).database
        assert line.startswith(f"error: database: cannot create database {name!r} on ")
        assert "permission denied" in line
        assert "ask an administrator" in line and "CREATEDB" in line
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP ROLE IF EXISTS {role}"))


def test_migrate_create_database_on_sqlite_is_migrate(tmp_path: Path) -> None:
    database = tmp_path / "shop.db"
    out = run(
        "migrate", "--create-database", env=environment(f"sqlite:///{database}"), cwd=tmp_path
    )
    assert "schema at revision" in out and "created database" not in out
    assert database.exists()


def test_the_readme_says_to_create_the_database_and_names_the_tests_servers() -> None:
    readme = README.read_text()
    assert "fulfillment migrate --create-database" in readme
    for backend, variable, default in (
        ("postgresql", "FULFILLMENT_TEST_POSTGRES_URL", README_POSTGRES),
        ("mysql", "FULFILLMENT_TEST_MYSQL_URL", README_MYSQL),
    ):
        assert f"`{default}`" in readme and variable in readme
        if not os.environ.get(variable):
            assert ADMIN_URLS[backend] == default, "the README names the tests' default"

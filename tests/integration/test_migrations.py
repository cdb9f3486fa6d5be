"""`fulfillment migrate` on a brand-new database of each backend, through the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import create_nullpool_engine
from fulfillment.adapters.migrate import alembic_config, migrate

CLI = Path(sys.executable).with_name("fulfillment")


def run_migrate(url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FULFILLMENT_DATABASE_URL": url}
    return subprocess.run(
        [str(CLI), "migrate"], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def schema_differences(url: str) -> list[Any]:
    engine = create_nullpool_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, t.metadata))
    finally:
        engine.dispose()


def test_migrate_builds_the_schema_of_the_tables_module_and_can_run_again(
    fresh_database_url: str,
) -> None:
    first = run_migrate(fresh_database_url)
    assert first.returncode == 0, first.stdout + first.stderr

    head = ScriptDirectory.from_config(alembic_config(fresh_database_url)).get_current_head()
    assert head is not None and head in first.stdout
    assert schema_differences(fresh_database_url) == []

    second = run_migrate(fresh_database_url)
    assert second.returncode == 0, second.stdout + second.stderr
    assert head in second.stdout
    assert schema_differences(fresh_database_url) == []

    engine = create_nullpool_engine(fresh_database_url)
    try:
        assert set(t.metadata.tables) <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:  # the appenders' lock row exists, exactly once
            assert conn.execute(select(t.event_append_lock.c.id)).scalars().all() == [1]
    finally:
        engine.dispose()


def test_migrate_at_head_does_not_wait_for_the_write_lock(fresh_database_url: str) -> None:
    """A process starting beside busy writers (a second worker) only reads the version."""
    assert run_migrate(fresh_database_url).returncode == 0
    engine = create_nullpool_engine(fresh_database_url)
    busy = create_nullpool_engine(fresh_database_url)
    try:
        with busy.begin() as writer:  # a writer holds its write lock (and row locks)
            writer.execute(t.event_append_lock.update().values(id=1))
            done = threading.Event()
            migrating = threading.Thread(target=lambda: (migrate(engine), done.set()))
            migrating.start()
            migrating.join(10)
            assert done.is_set(), "migrate waited for the writer"
    finally:
        busy.dispose()
        engine.dispose()

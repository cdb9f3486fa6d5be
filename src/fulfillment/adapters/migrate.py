"""Apply the Alembic migrations to a database (SQLite, PostgreSQL or MariaDB)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from fulfillment.adapters.db import backend_of, create_nullpool_engine, read_connection

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the schema to `revision`, on the engine's database.

    A schema already at head is only read: a process starting beside busy workers (the
    usual case) does not queue for SQLite's one write lock.
    """
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    if revision == "head":
        head = ScriptDirectory.from_config(config).get_current_head()
        if head is not None and current_revision(engine) == head:
            return
    # A migration may rightly run longer than a step's statement: on the servers it runs
    # on a connection of its own, without the statement and idle bounds of the pool's.
    migrating = (
        engine
        if backend_of(engine) == "sqlite"
        else create_nullpool_engine(engine.url.render_as_string(hide_password=False))
    )
    try:
        with migrating.connect().execution_options(sqlite_begin="IMMEDIATE") as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
            conn.commit()
    finally:
        if migrating is not engine:
            migrating.dispose()


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with read_connection(engine) as conn:
        return MigrationContext.configure(conn).get_current_revision()

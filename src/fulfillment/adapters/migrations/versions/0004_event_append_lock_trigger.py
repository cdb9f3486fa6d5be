"""Take the event-append lock inside the INSERT itself (PostgreSQL and MariaDB).

A writer used to lock in a statement of its own before inserting its events. A trigger
on `events` now takes the same lock as the first thing any INSERT does, before a
position is handed out: one round trip less while the lock is held, and no writer can
append without it (docs/architecture.md, rule 3). SQLite needs nothing: one writer.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The advisory-lock key that serializes event appends on PostgreSQL.
EVENT_LOCK_KEY = 7_304_118_001


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        # A BEFORE ... FOR EACH STATEMENT trigger fires before the rows (and their
        # nextval() positions) are produced; the lock is held until commit.
        op.execute(
            f"""
            CREATE OR REPLACE FUNCTION fulfillment_lock_event_append() RETURNS trigger
            LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_advisory_xact_lock({EVENT_LOCK_KEY});
                RETURN NULL;
            END $$
            """
        )
        op.execute(
            "CREATE TRIGGER events_append_lock BEFORE INSERT ON events "
            "FOR EACH STATEMENT EXECUTE FUNCTION fulfillment_lock_event_append()"
        )
    elif dialect in ("mysql", "mariadb"):
        # Row triggers only; the first row's BEFORE trigger runs before InnoDB allocates
        # its AUTO_INCREMENT position. Re-locking the same row for later rows is free.
        op.execute(
            "CREATE TRIGGER events_append_lock BEFORE INSERT ON events FOR EACH ROW "
            "SET @fulfillment_append_lock = "
            "(SELECT id FROM event_append_lock WHERE id = 1 FOR UPDATE)"
        )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS events_append_lock ON events")
        op.execute("DROP FUNCTION IF EXISTS fulfillment_lock_event_append()")
    elif dialect in ("mysql", "mariadb"):
        op.execute("DROP TRIGGER IF EXISTS events_append_lock")

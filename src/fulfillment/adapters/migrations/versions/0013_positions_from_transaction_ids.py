"""PostgreSQL: event positions from the writing transaction's id, read below the
snapshot's xmin, instead of one global append lock (docs/architecture.md, rule 3).

A new event's position is ``(transaction id << 16) + offset + n``, where n counts the
events the transaction has inserted so far (a transaction-local setting, which a
ROLLBACK TO SAVEPOINT also takes back). Transaction ids are handed out in increasing
order, so the positions of one transaction are consecutive and every later
transaction's are larger. A transaction may commit after one with a larger id: readers
of the feed therefore only read positions below ``fulfillment_visible_position()``, the
smallest position a transaction still running could insert (from the snapshot's xmin:
every transaction below it has committed or rolled back). A follower that read up to a
position never meets an event below it later.

`offset` keeps old positions valid and ordered: it is chosen at upgrade so that the
first new position is above every existing one (for a store much larger than its
transaction count, e.g. a bulk load), and it is stored in the two functions.

The trigger that took the global advisory lock for every INSERT is dropped: writers no
longer wait for each other. On MariaDB, row 2 of `event_append_lock` becomes the stock
lock of the workers' stock groups (``adapters/group_commit.py``); SQLite is unchanged.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Bits of a position left for the events of one transaction (at most 65,536 of them).
ROW_BITS = 16
#: The advisory-lock key of revision 0004's trigger (restored by the downgrade).
EVENT_LOCK_KEY = 7_304_118_001


def upgrade() -> None:
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        # Row 2: the stock lock (`adapters/db.stock_lock_sql`); row 1 stays the append lock.
        op.execute("INSERT INTO event_append_lock (id) VALUES (2)")
    if op.get_bind().dialect.name != "postgresql":
        return
    conn = op.get_bind()
    # The lock first: no writer of the old kind appends while the offset is chosen.
    conn.execute(sa.text(f"SELECT pg_advisory_xact_lock({EVENT_LOCK_KEY})"))
    highest, xid = conn.execute(
        sa.text("SELECT coalesce(max(position), 0), pg_current_xact_id()::text::bigint FROM events")
    ).one()
    offset = max(0, int(highest) + 1 - (int(xid) << ROW_BITS))
    limit = 1 << ROW_BITS
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION fulfillment_event_position() RETURNS bigint
        LANGUAGE plpgsql VOLATILE AS $$
        DECLARE n bigint;
        BEGIN
            n := coalesce(nullif(current_setting('fulfillment.event_row', true), ''),
                          '-1')::bigint + 1;
            IF n >= {limit} THEN
                RAISE EXCEPTION 'a transaction may append at most {limit} events';
            END IF;
            PERFORM set_config('fulfillment.event_row', n::text, true);
            RETURN (pg_current_xact_id()::text::bigint << {ROW_BITS}) + {offset} + n;
        END $$
        """
    )
    # STABLE: evaluated once per statement, from the statement's own snapshot.
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION fulfillment_visible_position() RETURNS bigint
        LANGUAGE sql STABLE AS $$
            SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::bigint << {ROW_BITS})
                   + {offset}
        $$
        """
    )
    op.execute("ALTER TABLE events ALTER COLUMN position SET DEFAULT fulfillment_event_position()")
    op.execute("DROP TRIGGER IF EXISTS events_append_lock ON events")
    op.execute("DROP FUNCTION IF EXISTS fulfillment_lock_event_append()")
    op.execute("DROP SEQUENCE IF EXISTS events_position_seq")


def downgrade() -> None:
    if op.get_bind().dialect.name in ("mysql", "mariadb"):
        op.execute("DELETE FROM event_append_lock WHERE id = 2")
    if op.get_bind().dialect.name != "postgresql":
        return
    conn = op.get_bind()
    highest = conn.execute(sa.text("SELECT coalesce(max(position), 0) FROM events")).scalar_one()
    op.execute(f"CREATE SEQUENCE events_position_seq OWNED BY events.position START {highest + 1}")
    op.execute(
        "ALTER TABLE events ALTER COLUMN position SET DEFAULT nextval('events_position_seq')"
    )
    op.execute("DROP FUNCTION IF EXISTS fulfillment_event_position()")
    op.execute("DROP FUNCTION IF EXISTS fulfillment_visible_position()")
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

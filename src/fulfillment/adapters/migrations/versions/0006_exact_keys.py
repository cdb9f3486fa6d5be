"""Client-chosen keys compare byte for byte on MariaDB too (NO PAD binary collation).

With the default collation `PUT /inventory/abc`, `/ABC` and `/abc%20` would update one
row, unlike on SQLite and PostgreSQL; `utf8mb4_bin` still ignores trailing spaces.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


COLUMNS = (
    ("inventory", "sku"),
    ("idempotency_keys", "`key`"),
    ("metric_counters", "name"),
    ("metric_counters", "labels"),
)


def _collate(collation: str) -> None:
    if op.get_bind().dialect.name not in ("mysql", "mariadb"):
        return
    for table, column in COLUMNS:
        op.execute(
            f"ALTER TABLE {table} MODIFY {column} VARCHAR(200) CHARACTER SET utf8mb4 "
            f"COLLATE {collation} NOT NULL"
        )


def upgrade() -> None:
    _collate("utf8mb4_nopad_bin")


def downgrade() -> None:
    _collate("utf8mb4_bin")

"""The event relay's checkpoint lease: who holds a checkpoint, until when (database
clock, seconds since the epoch), and how many events it has published.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Batch mode: SQLite adds the columns by copying the table; the servers ALTER it.
    with op.batch_alter_table("projection_checkpoints") as batch:
        batch.add_column(sa.Column("lease_holder", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.Double(), nullable=True))
        batch.add_column(
            sa.Column("published", sa.BigInteger(), nullable=False, server_default=sa.text("0"))
        )


def downgrade() -> None:
    with op.batch_alter_table("projection_checkpoints") as batch:
        batch.drop_column("published")
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_holder")

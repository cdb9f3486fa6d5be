"""The data keys of patient data: one per customer, wrapped by the master key.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _exact_key() -> sa.types.TypeEngine[str]:
    """`tables.ExactKey`: compared byte for byte on MariaDB too (NO PAD binary collation)."""
    return (
        sa.String(length=200)
        .with_variant(mysql.VARCHAR(200, collation="utf8mb4_nopad_bin"), "mariadb")
        .with_variant(mysql.VARCHAR(200, collation="utf8mb4_nopad_bin"), "mysql")
    )


def _timestamp() -> sa.types.TypeEngine[Any]:
    return (
        sa.DateTime(timezone=True)
        .with_variant(mysql.DATETIME(fsp=6), "mariadb")
        .with_variant(mysql.DATETIME(fsp=6), "mysql")
    )


def upgrade() -> None:
    op.create_table(
        "data_keys",
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("customer_id", _exact_key(), nullable=False),
        sa.Column("wrapped", sa.Text(), nullable=False),
        sa.Column("master_key_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", _timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_data_keys")),
        sa.UniqueConstraint("customer_id", name=op.f("uq_data_keys_customer_id")),
    )


def downgrade() -> None:
    op.drop_table("data_keys")

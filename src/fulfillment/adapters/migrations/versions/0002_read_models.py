"""read models: order summaries and projection checkpoints

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 19:40:00
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp() -> sa.types.TypeEngine[Any]:
    return (
        sa.DateTime(timezone=True)
        .with_variant(mysql.DATETIME(fsp=6), "mariadb")
        .with_variant(mysql.DATETIME(fsp=6), "mysql")
    )


def upgrade() -> None:
    op.create_table(
        "order_summaries",
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("created_position", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("reason", sa.String(length=100), nullable=True),
        sa.Column("customer_id", sa.String(length=200), nullable=False),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("saga_status", sa.String(length=20), nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("shipment", sa.JSON(), nullable=True),
        sa.Column("placed_at", _timestamp(), nullable=False),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.Column("finished_at", _timestamp(), nullable=True),
        sa.Column("last_position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("order_id", name=op.f("pk_order_summaries")),
        sa.UniqueConstraint("created_position", name=op.f("uq_order_summaries_created_position")),
    )
    with op.batch_alter_table("order_summaries", schema=None) as batch_op:
        batch_op.create_index(
            "ix_order_summaries_status_created_position",
            ["status", "created_position"],
            unique=False,
        )
        batch_op.create_index(
            "ix_order_summaries_saga_status_created_position",
            ["saga_status", "created_position"],
            unique=False,
        )
    op.create_table(
        "projection_checkpoints",
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_projection_checkpoints")),
    )


def downgrade() -> None:
    op.drop_table("projection_checkpoints")
    with op.batch_alter_table("order_summaries", schema=None) as batch_op:
        batch_op.drop_index("ix_order_summaries_saga_status_created_position")
        batch_op.drop_index("ix_order_summaries_status_created_position")
    op.drop_table("order_summaries")

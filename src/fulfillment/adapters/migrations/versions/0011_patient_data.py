"""Patient data: the access log, room for sealed prescription fields, and the orders of a
customer found by index (erasure).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamp() -> sa.types.TypeEngine[Any]:
    return (
        sa.DateTime(timezone=True)
        .with_variant(mysql.DATETIME(fsp=6), "mariadb")
        .with_variant(mysql.DATETIME(fsp=6), "mysql")
    )


def _position() -> sa.types.TypeEngine[int]:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _widen_prescriptions(before: int, after: int) -> None:
    """The sealed fields of a prescription (on SQLite, by copying the table: batch mode)."""
    with op.batch_alter_table("prescriptions") as batch:
        for column in ("prescriber_id", "patient_name"):
            batch.alter_column(
                column,
                type_=sa.String(length=after),
                existing_type=sa.String(length=before),
                existing_nullable=False,
            )


def upgrade() -> None:
    op.create_table(
        "access_log",
        sa.Column("id", _position(), autoincrement=True, nullable=False),
        sa.Column("at", _timestamp(), nullable=False),
        sa.Column("key_name", sa.String(length=100), nullable=False),
        sa.Column("route", sa.String(length=200), nullable=False),
        sa.Column("order_id", sa.String(length=64), nullable=True),
        sa.Column("customer_id", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_access_log")),
    )
    op.create_index("ix_access_log_at", "access_log", ["at"])
    op.create_index("ix_access_log_customer_id_at", "access_log", ["customer_id", "at"])
    op.create_index("ix_access_log_key_name_at", "access_log", ["key_name", "at"])
    op.create_index("ix_order_summaries_customer_id", "order_summaries", ["customer_id"])
    _widen_prescriptions(200, 600)


def downgrade() -> None:
    _widen_prescriptions(600, 200)
    op.drop_index("ix_order_summaries_customer_id", table_name="order_summaries")
    op.drop_index("ix_access_log_key_name_at", table_name="access_log")
    op.drop_index("ix_access_log_customer_id_at", table_name="access_log")
    op.drop_index("ix_access_log_at", table_name="access_log")
    op.drop_table("access_log")

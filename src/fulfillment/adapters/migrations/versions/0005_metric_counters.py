"""metric counters, kept by the projector (Prometheus /metrics)

The counters follow the event log with the `order_summaries` projector's checkpoint. Its
checkpoint goes back to 0 here, so the projector replays the log once and counts every
event already stored (its summary rows are recomputed from whole streams, so replaying
them changes nothing).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _binary_string() -> sa.types.TypeEngine[str]:
    return (
        sa.String(length=200)
        .with_variant(mysql.VARCHAR(200, collation="utf8mb4_bin"), "mariadb")
        .with_variant(mysql.VARCHAR(200, collation="utf8mb4_bin"), "mysql")
    )


def upgrade() -> None:
    op.create_table(
        "metric_counters",
        sa.Column("name", _binary_string(), nullable=False),
        sa.Column("labels", _binary_string(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("name", "labels", name=op.f("pk_metric_counters")),
    )
    op.execute("UPDATE projection_checkpoints SET position = 0 WHERE name = 'order_summaries'")


def downgrade() -> None:
    op.drop_table("metric_counters")

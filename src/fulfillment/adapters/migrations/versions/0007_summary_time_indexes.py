"""Index the order summaries by placed_at and finished_at.

The dashboard's overview counts orders placed and finished per minute over the last half
hour, every two seconds per open tab: range scans that need these indexes once the table
holds millions of orders.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_order_summaries_finished_at", "order_summaries", ["finished_at"])
    op.create_index("ix_order_summaries_placed_at", "order_summaries", ["placed_at"])


def downgrade() -> None:
    op.drop_index("ix_order_summaries_placed_at", table_name="order_summaries")
    op.drop_index("ix_order_summaries_finished_at", table_name="order_summaries")

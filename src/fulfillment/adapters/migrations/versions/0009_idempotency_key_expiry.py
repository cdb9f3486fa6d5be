"""Index the idempotency keys by created_at: they expire.

Keys older than FULFILLMENT_IDEMPOTENCY_TTL_SECONDS count as absent, and the workers
delete them in batches, about once a minute: a range scan that needs this index once
the table holds millions of keys.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_idempotency_keys_created_at", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_keys_created_at", table_name="idempotency_keys")

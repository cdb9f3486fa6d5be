"""Stock by lot with expiry, the lots each reservation took, DEA schedules; and what the
pharmacy lifecycle reads: shipments by tracking number, an order's verification and lots.

Every SKU already stocked gets its units as lot `default` (no expiry), with what is
reserved of them; every reservation still held gets its lines as taken from lot
`default`, so releasing or consuming it after the upgrade gives back, or takes, the
right units. The SKU's totals stay in `inventory` (its CHECK and readers unchanged).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_LOT = "default"
BATCH = 1000


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
    # `awaiting_verification` is longer than the 20 characters the statuses had. (A batch
    # copy on SQLite: the read model has no CHECK constraint to lose.)
    with op.batch_alter_table("order_summaries", schema=None) as batch_op:
        batch_op.alter_column(
            "status",
            existing_type=sa.String(length=20),
            type_=sa.String(length=32),
            existing_nullable=False,
        )
    op.add_column("inventory", sa.Column("dea_schedule", sa.String(length=3), nullable=True))
    op.create_table(
        "inventory_lots",
        sa.Column("sku", _exact_key(), nullable=False),
        sa.Column("lot", _exact_key(), nullable=False),
        sa.Column("on_hand", sa.Integer(), nullable=False),
        sa.Column("reserved", sa.Integer(), nullable=False),
        sa.Column("expires_on", sa.Date(), nullable=True),
        sa.Column("updated_at", _timestamp(), nullable=False),
        sa.CheckConstraint(
            "reserved >= 0 AND reserved <= on_hand",
            name=op.f("ck_inventory_lots_reserved_within_on_hand"),
        ),
        sa.PrimaryKeyConstraint("sku", "lot", name=op.f("pk_inventory_lots")),
    )
    op.create_table(
        "reservation_lots",
        sa.Column("order_id", sa.String(length=64), nullable=False),
        sa.Column("sku", _exact_key(), nullable=False),
        sa.Column("lot", _exact_key(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("position", sa.SmallInteger(), nullable=False),
        sa.PrimaryKeyConstraint("order_id", "sku", "lot", name=op.f("pk_reservation_lots")),
    )
    op.create_index("ix_reservation_lots_sku_lot", "reservation_lots", ["sku", "lot"])
    op.create_index("ix_shipments_tracking_number", "shipments", ["tracking_number"])
    op.add_column("order_summaries", sa.Column("verification", sa.JSON(), nullable=True))
    op.add_column("order_summaries", sa.Column("lots", sa.JSON(), nullable=True))

    # The stock already on the shelf is lot `default`, with what is reserved of it.
    op.execute(
        "INSERT INTO inventory_lots (sku, lot, on_hand, reserved, expires_on, updated_at) "
        f"SELECT sku, '{DEFAULT_LOT}', on_hand, reserved, NULL, updated_at FROM inventory"
    )
    _held_reservations_took_the_default_lot()


def _held_reservations_took_the_default_lot() -> None:
    reservations = sa.table(
        "inventory_reservations",
        sa.column("order_id", sa.String()),
        sa.column("status", sa.String()),
        sa.column("lines", sa.JSON()),
    )
    allocations = sa.table(
        "reservation_lots",
        sa.column("order_id", sa.String()),
        sa.column("sku", sa.String()),
        sa.column("lot", sa.String()),
        sa.column("quantity", sa.Integer()),
        sa.column("position", sa.SmallInteger()),
    )
    held = op.get_bind().execute(
        sa.select(reservations.c.order_id, reservations.c.lines)
        .where(reservations.c.status == "reserved")
        .order_by(reservations.c.order_id)
    )
    rows: list[dict[str, Any]] = []
    for order_id, lines in held:
        totals: dict[str, int] = {}
        for line in lines:  # merged by SKU when reserved; summed again to be sure
            totals[line["sku"]] = totals.get(line["sku"], 0) + int(line["quantity"])
        for position, (sku, quantity) in enumerate(sorted(totals.items())):
            rows.append(
                {
                    "order_id": order_id,
                    "sku": sku,
                    "lot": DEFAULT_LOT,
                    "quantity": quantity,
                    "position": position,
                }
            )
    for start in range(0, len(rows), BATCH):
        op.bulk_insert(allocations, rows[start : start + BATCH])


def downgrade() -> None:
    # The SKUs' totals were kept in `inventory` all along: dropping the lots loses no unit.
    # Plain ALTER TABLE ... DROP COLUMN (SQLite has it since 3.35): a batch copy of the
    # table would lose its CHECK constraint on SQLite.
    op.drop_column("order_summaries", "lots")
    op.drop_column("order_summaries", "verification")
    # The read model is rebuilt from the events at will; before the lifecycle an order
    # waiting for a pharmacist was pending.
    op.execute(
        "UPDATE order_summaries SET status = 'pending' WHERE status = 'awaiting_verification'"
    )
    with op.batch_alter_table("order_summaries", schema=None) as batch_op:
        batch_op.alter_column(
            "status",
            existing_type=sa.String(length=32),
            type_=sa.String(length=20),
            existing_nullable=False,
        )
    op.drop_index("ix_shipments_tracking_number", table_name="shipments")
    op.drop_index("ix_reservation_lots_sku_lot", table_name="reservation_lots")
    op.drop_table("reservation_lots")
    op.drop_table("inventory_lots")
    op.drop_column("inventory", "dea_schedule")

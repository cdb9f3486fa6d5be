"""Stock levels by SKU and lot, and the orders a lot went to (a recall), from the
state-stored inventory tables."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import read_connection
from fulfillment.adapters.services import SqlAlchemyInventoryService, lot_reservations
from fulfillment.bootstrap import App
from fulfillment.service_layer.ports import LotLevel, StockLevel

#: The status of an order whose summary the projector has not written yet.
PENDING = "pending"


def lot_view(lot: LotLevel) -> dict[str, Any]:
    """`{"lot", "on_hand", "reserved", "available", "expires_on"}` (None: no expiry)."""
    return {
        "lot": lot.lot,
        "on_hand": lot.on_hand,
        "reserved": lot.reserved,
        "available": lot.available,
        "expires_on": lot.expires_on.isoformat() if lot.expires_on is not None else None,
    }


def stock_view(level: StockLevel) -> dict[str, Any]:
    """`{"sku", "on_hand", "reserved", "available", "dea_schedule", "lots"}`: the totals
    over the lots, and the lots first expiry first (`default`, without one, last)."""
    return {
        "sku": level.sku,
        "on_hand": level.on_hand,
        "reserved": level.reserved,
        "available": level.available,
        "dea_schedule": level.dea_schedule,
        "lots": [lot_view(lot) for lot in level.lots],
    }


def get_inventory(app: App, sku: str) -> dict[str, Any] | None:
    """The SKU's stock (`stock_view`), or None for an unknown SKU."""
    with read_connection(app.engine) as conn:
        level = SqlAlchemyInventoryService(conn).get(sku)
    return None if level is None else stock_view(level)


def lot_orders(app: App, sku: str, lot: str) -> list[dict[str, Any]] | None:
    """`[{"order_id", "quantity", "status"}]`: every order whose reservation took units
    of the lot, in the order they reserved; `status` is the order's (`pending` until it
    is projected). None for an unknown SKU or lot."""
    s = t.order_summaries
    with read_connection(app.engine) as conn:
        if SqlAlchemyInventoryService(conn).lot_orders(sku, lot) is None:
            return None
        query = (
            lot_reservations(sku, lot)
            .add_columns(func.coalesce(s.c.status, PENDING))
            .outerjoin(s, s.c.order_id == t.reservation_lots.c.order_id)
        )
        rows = conn.execute(query).all()
    return [
        {"order_id": order_id, "quantity": quantity, "status": status}
        for order_id, quantity, status in rows
    ]

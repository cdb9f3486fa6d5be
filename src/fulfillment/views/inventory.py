"""Stock levels, from the state-stored inventory table."""

from __future__ import annotations

from typing import Any

from fulfillment.adapters.db import read_connection
from fulfillment.adapters.services import SqlAlchemyInventoryService
from fulfillment.bootstrap import App


def get_inventory(app: App, sku: str) -> dict[str, Any] | None:
    """`{"sku", "on_hand", "reserved", "available"}`, or None for an unknown SKU."""
    with read_connection(app.engine) as conn:
        level = SqlAlchemyInventoryService(conn).get(sku)
    if level is None:
        return None
    return {
        "sku": level.sku,
        "on_hand": level.on_hand,
        "reserved": level.reserved,
        "available": level.available,
    }

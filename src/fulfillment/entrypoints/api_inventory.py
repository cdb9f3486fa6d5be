"""The inventory routes of the HTTP API (docs/api.md, Inventory): stock by SKU and by
lot with expiry dates, the SKU's DEA schedule, and the orders a lot went to (a recall).

Writes go through the command bus (`SetInventory`, `SetLot`); reads come from
`fulfillment.views`. A stock change below what is reserved is refused with 409
`inventory_below_reserved` (`InvalidInventory`, by the API's error handlers).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import JSONResponse

from fulfillment import views
from fulfillment.bootstrap import App
from fulfillment.entrypoints import api_schemas as s
from fulfillment.entrypoints.api_errors import ApiError
from fulfillment.service_layer.commands import SetInventory, SetLot
from fulfillment.service_layer.ports import LotLevel, StockLevel

#: A SKU: the rules of request texts (entrypoints/identifiers.py).
Sku = Annotated[s.Text, Path()]
#: A lot's name: the same rules as a SKU's.
Lot = Sku

_errors = s.error_responses


def inventory_router(app: App) -> APIRouter:
    """The four inventory routes over `app`."""
    router = APIRouter(tags=["inventory"], redirect_slashes=False)

    @router.put(
        "/inventory/{sku}",
        response_model=None,
        responses={200: {"model": s.InventoryLevel}, **_errors(409, 422)},
    )
    def put_inventory(sku: Sku, body: s.InventoryUpdate) -> JSONResponse:
        """Set the units of lot `default` (no expiry date) and, when the body has it,
        the SKU's DEA schedule (null clears it); 409 below what is reserved of the lot."""
        level: StockLevel = app.bus.handle(SetInventory(sku, body.on_hand, body.schedule()))
        return JSONResponse(views.stock_view(level))

    @router.put(
        "/inventory/{sku}/lots/{lot}",
        response_model=None,
        responses={200: {"model": s.LotLevel}, **_errors(409, 422)},
    )
    def put_lot(sku: Sku, lot: Lot, body: s.LotUpdate) -> JSONResponse:
        """Set a lot's units and expiry date, creating the lot (and the SKU); 409 below
        what is reserved of the lot, 422 for lot `default` (it has no expiry date)."""
        level: LotLevel = app.bus.handle(SetLot(sku, lot, body.on_hand, body.expires_on))
        return JSONResponse({"sku": level.sku, **views.lot_view(level)})

    @router.get(
        "/inventory/{sku}",
        response_model=None,
        responses={200: {"model": s.InventoryLevel}, **_errors(404, 422)},
    )
    def get_inventory(sku: Sku) -> JSONResponse:
        """Stock of one SKU: totals over its lots, its DEA schedule and its lots, first
        expiry first (lots without expiry last)."""
        level = views.get_inventory(app, sku)
        if level is None:
            raise ApiError(404, "not_found", f"unknown sku {sku!r}")
        return JSONResponse(level)

    @router.get(
        "/inventory/{sku}/lots/{lot}/orders",
        response_model=None,
        responses={200: {"model": list[s.LotOrder]}, **_errors(404, 422)},
    )
    def get_lot_orders(sku: Sku, lot: Lot) -> JSONResponse:
        """Every order whose reservation took units of the lot (a recall), in the order
        they reserved, with the order's status."""
        orders = views.lot_orders(app, sku, lot)
        if orders is None:
            raise ApiError(404, "not_found", f"unknown lot {lot!r} of sku {sku!r}")
        return JSONResponse(orders)

    return router

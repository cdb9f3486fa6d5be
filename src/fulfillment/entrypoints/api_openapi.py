"""What `/openapi.json` says beyond what the routes declare: the 429 every counted write
may answer (entrypoints/api_rate_limit.py), and the links between operations (OpenAPI
`links`: where a response's values go in the next requests, e.g. a placed order's id into
`GET /orders/{order_id}`, a page's `next_cursor` into the next page), which clients and
stateful testing follow.
"""

from __future__ import annotations

from typing import Any, Final

from fulfillment.entrypoints.api_rate_limit import WRITES
from fulfillment.entrypoints.api_roles import SIGNED_PATHS
from fulfillment.entrypoints.api_schemas import ERROR_DESCRIPTIONS

#: A link: (target path, target method, its parameters and where their values are).
Link = tuple[str, str, dict[str, str]]

_SKU = {"sku": "$response.body#/sku"}


def _order_links(name: str, order_id: str) -> dict[str, Link]:
    """Where an order's id (at `order_id` in the answer) goes: its reads, its
    cancellation and its verification."""
    parameters = {"order_id": order_id}
    return {
        f"Get{name}": ("/orders/{order_id}", "get", parameters),
        f"Get{name}Events": ("/orders/{order_id}/events", "get", parameters),
        f"Get{name}Fhir": ("/orders/{order_id}/fhir", "get", parameters),
        f"Cancel{name}": ("/orders/{order_id}/cancel", "post", parameters),
        f"Verify{name}": ("/orders/{order_id}/verification", "post", parameters),
    }


def _next_page(path: str) -> dict[str, Link]:
    return {"NextPage": (path, "get", {"cursor": "$response.body#/next_cursor"})}


_FIRST_ITEM = "$response.body#/items/0"

#: (path, method, status) -> {link name: link}
LINKS: Final[dict[tuple[str, str, str], dict[str, Link]]] = {
    ("/orders", "post", "202"): {
        **_order_links("Order", "$response.body#/order_id"),
        "EraseCustomer": (
            "/customers/{customer_id}/personal-data",
            "delete",
            {"customer_id": "$request.body#/customer_id"},
        ),
    },
    ("/orders", "get", "200"): {
        **_next_page("/orders"),
        **_order_links("ListedOrder", f"{_FIRST_ITEM}/order_id"),
        "GetListedStock": ("/inventory/{sku}", "get", {"sku": f"{_FIRST_ITEM}/items/0/sku"}),
        "GetListedLotOrders": (
            "/inventory/{sku}/lots/{lot}/orders",
            "get",
            {"sku": f"{_FIRST_ITEM}/lots/0/sku", "lot": f"{_FIRST_ITEM}/lots/0/lot"},
        ),
    },
    ("/sagas", "get", "200"): {
        **_next_page("/sagas"),
        **_order_links("ListedSaga", f"{_FIRST_ITEM}/order_id"),
    },
    ("/inventory/{sku}", "put", "200"): {
        "GetStock": ("/inventory/{sku}", "get", _SKU),
        "SetLot": ("/inventory/{sku}/lots/{lot}", "put", _SKU),
    },
    ("/inventory/{sku}/lots/{lot}", "put", "200"): {
        "GetStock": ("/inventory/{sku}", "get", _SKU),
        "GetLotOrders": (
            "/inventory/{sku}/lots/{lot}/orders",
            "get",
            {**_SKU, "lot": "$response.body#/lot"},
        ),
    },
}


def document_extras(schema: dict[str, Any]) -> None:
    """Add the rate limit's 429 and the links to a schema FastAPI generated."""
    _document_rate_limit(schema)
    _document_links(schema)


def _document_rate_limit(schema: dict[str, Any]) -> None:
    """Every write but the carrier's webhook may answer 429 (FULFILLMENT_RATE_LIMIT_PER_MINUTE)."""
    rate_limited = {
        "description": ERROR_DESCRIPTIONS[429],
        "headers": {"Retry-After": {"schema": {"type": "integer", "minimum": 1}}},
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}},
    }
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if method.upper() in WRITES and path not in SIGNED_PATHS:
                operation["responses"].setdefault("429", rate_limited)


def _document_links(schema: dict[str, Any]) -> None:
    paths = schema["paths"]
    for (path, method, status), links in LINKS.items():
        response = paths[path][method]["responses"][status]
        response["links"] = {
            name: {
                "operationId": paths[target][target_method]["operationId"],
                "parameters": parameters,
            }
            for name, (target, target_method, parameters) in links.items()
        }

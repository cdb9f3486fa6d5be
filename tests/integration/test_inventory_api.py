"""The inventory routes over HTTP (the ASGI app in-process), on every backend: stock by
SKU and lot, DEA schedules, 409 below what is reserved, recalls (docs/api.md, Inventory)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import httpx
import pytest
from conftest import LOOPBACK
from fastapi.testclient import TestClient
from sqlalchemy import insert

from fulfillment.adapters import tables as t
from fulfillment.bootstrap import App
from fulfillment.domain.values import OrderLine
from fulfillment.entrypoints.api import create_api

TODAY = date(2030, 5, 1)
NOW = datetime(2030, 5, 1, 12, tzinfo=UTC)


@pytest.fixture
def client(app: App) -> Iterator[TestClient]:
    with TestClient(create_api(app), base_url=LOOPBACK) as http:
        yield http


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


def reserve(app: App, order_id: str, *lines: tuple[str, int]) -> None:
    """An order's reservation, as its saga's step makes it."""
    with app.uow() as uow:
        uow.inventory.reserve(order_id, tuple(OrderLine(s, q) for s, q in lines), today=TODAY)
        uow.commit()


def project(app: App, order_id: str, status: str, position: int) -> None:
    """The order's row of the read model, as the projector writes it."""
    with app.engine.begin() as conn:
        conn.execute(
            insert(t.order_summaries).values(
                order_id=order_id,
                created_position=position,
                status=status,
                customer_id="c-1",
                items=[],
                saga_status="completed",
                steps=[],
                placed_at=NOW,
                updated_at=NOW,
                last_position=position,
            )
        )


def lot(name: str, on_hand: int, reserved: int, expires_on: str | None) -> dict[str, Any]:
    return {
        "lot": name,
        "on_hand": on_hand,
        "reserved": reserved,
        "available": on_hand - reserved,
        "expires_on": expires_on,
    }


# --- PUT /inventory/{sku} ---------------------------------------------------------------


def test_put_sets_the_default_lot_and_answers_the_stock_as_before_with_lots(
    client: TestClient,
) -> None:
    put = client.put("/inventory/ASPIRIN", json={"on_hand": 7})

    assert put.status_code == 200, put.text
    assert put.json() == {
        "sku": "ASPIRIN",
        "on_hand": 7,
        "reserved": 0,
        "available": 7,
        "dea_schedule": None,
        "lots": [lot("default", 7, 0, None)],
    }
    assert client.put("/inventory/ASPIRIN", json={"on_hand": 3}).json()["on_hand"] == 3
    assert client.get("/inventory/ASPIRIN").json()["lots"] == [lot("default", 3, 0, None)]


def test_the_dea_schedule_is_set_left_alone_when_absent_and_cleared_by_null(
    client: TestClient,
) -> None:
    def schedule(body: dict[str, Any]) -> Any:
        answer = client.put("/inventory/OXY-5", json=body)
        assert answer.status_code == 200, answer.text
        assert (
            client.get("/inventory/OXY-5").json()["dea_schedule"] == answer.json()["dea_schedule"]
        )
        return answer.json()["dea_schedule"]

    assert schedule({"on_hand": 5, "dea_schedule": "II"}) == "II"
    assert schedule({"on_hand": 4}) == "II"
    assert schedule({"on_hand": 4, "dea_schedule": "V"}) == "V"
    assert schedule({"on_hand": 4, "dea_schedule": None}) is None
    assert schedule({"on_hand": 4}) is None


@pytest.mark.parametrize(
    "body",
    [
        {"on_hand": 1, "dea_schedule": "I"},
        {"on_hand": 1, "dea_schedule": "ii"},
        {"on_hand": 1, "dea_schedule": 2},
        {"on_hand": 1, "expires_on": "2031-01-01"},
        {"on_hand": -1},
        {"dea_schedule": "II"},
    ],
)
def test_a_bad_stock_body_is_422_and_changes_nothing(
    client: TestClient, body: dict[str, Any]
) -> None:
    assert_error(client.put("/inventory/X", json=body), 422, "validation_error")
    assert_error(client.get("/inventory/X"), 404, "not_found")


def test_put_below_what_is_reserved_of_the_default_lot_is_409(app: App, client: TestClient) -> None:
    client.put("/inventory/A", json={"on_hand": 2})
    client.put("/inventory/A/lots/L1", json={"on_hand": 10, "expires_on": "2031-01-01"})
    reserve(app, "o1", ("A", 11))  # L1: 10, default: 1

    assert_error(client.put("/inventory/A", json={"on_hand": 0}), 409, "inventory_below_reserved")
    assert client.put("/inventory/A", json={"on_hand": 1}).json()["available"] == 0


# --- PUT /inventory/{sku}/lots/{lot} ----------------------------------------------------


def test_put_lot_creates_the_sku_and_the_lot_and_answers_the_lot(client: TestClient) -> None:
    put = client.put("/inventory/NEW/lots/B-17", json={"on_hand": 12, "expires_on": "2031-03-31"})

    assert put.status_code == 200, put.text
    assert put.json() == {"sku": "NEW", **lot("B-17", 12, 0, "2031-03-31")}
    assert client.get("/inventory/NEW").json() == {
        "sku": "NEW",
        "on_hand": 12,
        "reserved": 0,
        "available": 12,
        "dea_schedule": None,
        "lots": [lot("B-17", 12, 0, "2031-03-31")],
    }


def test_a_lot_below_what_is_reserved_of_it_is_409_its_expiry_may_change(
    app: App, client: TestClient
) -> None:
    client.put("/inventory/A/lots/L1", json={"on_hand": 5, "expires_on": "2031-01-01"})
    reserve(app, "o1", ("A", 4))

    below = client.put("/inventory/A/lots/L1", json={"on_hand": 3, "expires_on": "2031-01-01"})
    assert_error(below, 409, "inventory_below_reserved")
    moved = client.put("/inventory/A/lots/L1", json={"on_hand": 4, "expires_on": "2030-12-01"})
    assert moved.json() == {"sku": "A", **lot("L1", 4, 4, "2030-12-01")}


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/inventory/A/lots/L1", {"on_hand": 1}, "validation_error"),
        ("/inventory/A/lots/L1", {"on_hand": 1, "expires_on": "2031-02-30"}, "validation_error"),
        ("/inventory/A/lots/L1", {"on_hand": 1, "expires_on": "31/01/2031"}, "validation_error"),
        ("/inventory/A/lots/L1", {"on_hand": -1, "expires_on": "2031-01-01"}, "validation_error"),
        (
            "/inventory/A/lots/L1",
            {"on_hand": 1, "expires_on": "2031-01-01", "x": 1},
            "validation_error",
        ),
        ("/inventory/A/lots/L%01", {"on_hand": 1, "expires_on": "2031-01-01"}, "validation_error"),
        (
            f"/inventory/A/lots/{'L' * 201}",
            {"on_hand": 1, "expires_on": "2031-01-01"},
            "validation_error",
        ),
        ("/inventory/A/lots/default", {"on_hand": 1, "expires_on": "2031-01-01"}, "rule_violated"),
    ],
)
def test_a_bad_lot_is_422_and_changes_nothing(
    client: TestClient, path: str, body: dict[str, Any], code: str
) -> None:
    assert_error(client.put(path, json=body), 422, code)
    assert_error(client.get("/inventory/A"), 404, "not_found")


# --- GET /inventory/{sku} ---------------------------------------------------------------


def test_get_lists_the_lots_first_expiry_first_the_totals_are_their_sums(
    app: App, client: TestClient
) -> None:
    client.put("/inventory/A", json={"on_hand": 2, "dea_schedule": "IV"})
    client.put("/inventory/A/lots/LATE", json={"on_hand": 3, "expires_on": "2031-06-01"})
    client.put("/inventory/A/lots/EARLY", json={"on_hand": 4, "expires_on": "2030-09-01"})
    reserve(app, "o1", ("A", 5))  # EARLY: 4, LATE: 1

    assert client.get("/inventory/A").json() == {
        "sku": "A",
        "on_hand": 9,
        "reserved": 5,
        "available": 4,
        "dea_schedule": "IV",
        "lots": [
            lot("EARLY", 4, 4, "2030-09-01"),
            lot("LATE", 3, 1, "2031-06-01"),
            lot("default", 2, 0, None),
        ],
    }
    assert_error(client.get("/inventory/B"), 404, "not_found")


# --- GET /inventory/{sku}/lots/{lot}/orders ---------------------------------------------


def test_a_recall_lists_the_orders_that_took_units_of_the_lot_with_their_status(
    app: App, client: TestClient
) -> None:
    client.put("/inventory/A/lots/L1", json={"on_hand": 3, "expires_on": "2031-01-01"})
    client.put("/inventory/A/lots/L2", json={"on_hand": 9, "expires_on": "2031-06-01"})
    reserve(app, "o-first", ("A", 2))  # L1: 2
    reserve(app, "o-second", ("A", 4))  # L1: 1, L2: 3
    reserve(app, "o-third", ("A", 1))  # L2: 1
    project(app, "o-first", "fulfilled", 1)  # o-second has no summary yet: pending
    project(app, "o-third", "cancelled", 3)

    recall = client.get("/inventory/A/lots/L1/orders")

    assert recall.status_code == 200, recall.text
    assert recall.json() == [
        {"order_id": "o-first", "quantity": 2, "status": "fulfilled"},
        {"order_id": "o-second", "quantity": 1, "status": "pending"},
    ]
    assert client.get("/inventory/A/lots/L2/orders").json() == [
        {"order_id": "o-second", "quantity": 3, "status": "pending"},
        {"order_id": "o-third", "quantity": 1, "status": "cancelled"},
    ]
    client.put("/inventory/A/lots/L3", json={"on_hand": 1, "expires_on": "2031-06-01"})
    assert client.get("/inventory/A/lots/L3/orders").json() == []
    assert_error(client.get("/inventory/A/lots/NOPE/orders"), 404, "not_found")
    assert_error(client.get("/inventory/B/lots/L1/orders"), 404, "not_found")


def test_the_four_inventory_routes_are_described_under_the_inventory_tag(
    client: TestClient,
) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    routes = {
        ("/inventory/{sku}", "put"): {"200", "409", "422"},
        ("/inventory/{sku}", "get"): {"200", "404", "422"},
        ("/inventory/{sku}/lots/{lot}", "put"): {"200", "409", "422"},
        ("/inventory/{sku}/lots/{lot}/orders", "get"): {"200", "404", "422"},
    }
    for (path, method), codes in routes.items():
        operation = paths[path][method]
        assert operation["tags"] == ["inventory"]
        assert codes <= set(operation["responses"]), (path, method)

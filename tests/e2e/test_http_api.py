"""The HTTP contract of docs/api.md, through a real `fulfillment serve` process.

One server per backend (SQLite, PostgreSQL, MariaDB) for the module; each test uses its
own SKUs, customers and idempotency keys.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import create_nullpool_engine
from fulfillment.adapters.services import SqlAlchemyInventoryService
from fulfillment.domain.values import OrderLine

from .server import Server, poll, start_server

TERMINAL = ("fulfilled", "cancelled", "needs_attention")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def order_body(sku: str, quantity: int = 1, country: str = "US", **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "customer_id": unique("customer"),
        "items": [{"sku": sku, "quantity": quantity}],
        "prescription": {
            "prescriber_id": "dr-who",
            "patient_name": "Ada Lovelace",
            "expires_on": "2099-12-31",
        },
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": "12 St James's Square",
            "city": "London",
            "postal_code": "SW1Y 4JH",
            "country": country,
        },
    }
    body.update(changes)
    return body


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


def stock(client: httpx.Client, on_hand: int) -> str:
    sku = unique("sku")
    assert client.put(f"/inventory/{sku}", json={"on_hand": on_hand}).status_code == 200
    return sku


def place(client: httpx.Client, body: dict[str, Any], key: str | None = None) -> str:
    headers = {"Idempotency-Key": key} if key else {}
    response = client.post("/orders", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return str(response.json()["order_id"])


def settled(client: httpx.Client, order_id: str) -> dict[str, Any]:
    order: dict[str, Any] = poll(
        lambda: client.get(f"/orders/{order_id}").json(),
        lambda o: o.get("status") in TERMINAL,
    )
    return order


def order_created_count(database_url: str, customer_id: str) -> int:
    engine = create_nullpool_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(t.events.c.data).where(t.events.c.type == "OrderCreated"))
            return sum(1 for (data,) in rows if data["customer_id"] == customer_id)
    finally:
        engine.dispose()


def level(sku: str, on_hand: int, reserved: int) -> dict[str, Any]:
    """A SKU's stock as the API answers it, all of it in lot `default`."""
    default = {
        "lot": "default",
        "on_hand": on_hand,
        "reserved": reserved,
        "available": on_hand - reserved,
        "expires_on": None,
    }
    return {
        "sku": sku,
        "on_hand": on_hand,
        "reserved": reserved,
        "available": on_hand - reserved,
        "dea_schedule": None,
        "lots": [default] if on_hand else [],
    }


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code
    return error


# --- inventory ------------------------------------------------------------------------


def test_stock_put_on_the_shelf_can_be_read_back(client: httpx.Client) -> None:
    sku = unique("sku")
    put = client.put(f"/inventory/{sku}", json={"on_hand": 7})
    assert put.status_code == 200
    assert put.json() == level(sku, 7, 0)
    assert client.put(f"/inventory/{sku}", json={"on_hand": 3}).json()["on_hand"] == 3
    assert client.get(f"/inventory/{sku}").json() == level(sku, 3, 0)


def test_unknown_sku_is_a_json_404(client: httpx.Client) -> None:
    assert_error(client.get(f"/inventory/{unique('nothing')}"), 404, "not_found")


def test_stock_cannot_drop_below_what_is_reserved(
    client: httpx.Client, server_database_url: str
) -> None:
    sku = stock(client, 10)
    engine = create_nullpool_engine(server_database_url)
    with engine.begin() as conn:  # an order holding 4 units, mid-saga
        SqlAlchemyInventoryService(conn).reserve(
            unique("held"), (OrderLine(sku, 4),), today=date.today()
        )
    engine.dispose()
    assert_error(client.put(f"/inventory/{sku}", json={"on_hand": 3}), 409)
    assert client.get(f"/inventory/{sku}").json() == level(sku, 10, 4)
    assert client.put(f"/inventory/{sku}", json={"on_hand": 4}).json()["available"] == 0


# --- orders ---------------------------------------------------------------------------


def test_placed_order_is_fulfilled_and_its_stock_leaves_the_shelf(client: httpx.Client) -> None:
    sku = stock(client, 5)
    response = client.post("/orders", json=order_body(sku, quantity=2))
    assert response.status_code == 202
    order_id = response.json()["order_id"]
    assert response.json() == {"order_id": order_id, "status": "pending"}
    assert response.headers["location"] == f"/orders/{order_id}"

    order = settled(client, order_id)
    assert order["status"] == "fulfilled"
    assert order["reason"] is None
    assert order["items"] == [{"sku": sku, "quantity": 2}]
    assert order["saga"]["status"] == "completed"
    # Three steps and two waits (passed at once: no pharmacist needed, picked up as booked).
    assert [s["status"] for s in order["saga"]["steps"]] == ["succeeded"] * 5
    assert order["shipment"]["status"] == "in_transit"
    assert order["shipment"]["tracking_number"]
    assert client.get(f"/inventory/{sku}").json() == level(sku, 3, 0)


def test_order_to_an_unsupported_destination_is_cancelled_and_undone_in_reverse(
    client: httpx.Client,
) -> None:
    sku = stock(client, 5)
    order_id = place(client, order_body(sku, quantity=2, country="JP"))

    order = settled(client, order_id)
    assert order["status"] == "cancelled"
    assert order["reason"] == "unsupported_destination"
    assert order["saga"]["status"] == "compensated"
    assert order["shipment"] is None
    events = client.get(f"/orders/{order_id}/events").json()
    types = [e["type"] for e in events]
    assert types[:5] == [
        "OrderCreated",
        "OrderFulfillmentSagaStarted",
        "PrescriptionCreated",
        "PrescriptionVerified",
        "InventoryReserved",
    ]
    # Compensation: the later step (inventory) is undone before the earlier one.
    assert types[-4:] == [
        "SagaCompensationStarted",
        "InventoryReleased",
        "PrescriptionCancelled",
        "OrderCancelled",
    ]
    assert "ShipmentInitiationFailed" in types
    positions = [e["position"] for e in events]
    assert positions == sorted(positions)
    assert set(events[0]) >= {
        "position",
        "stream_id",
        "version",
        "type",
        "event_version",
        "recorded_at",
        "data",
    }
    assert client.get(f"/inventory/{sku}").json()["available"] == 5


def test_order_events_of_an_unknown_order_are_a_json_404(client: httpx.Client) -> None:
    assert_error(client.get(f"/orders/{uuid.uuid4()}"), 404, "not_found")
    assert_error(client.get(f"/orders/{uuid.uuid4()}/events"), 404, "not_found")


def test_event_feed_returns_events_after_a_position_in_order(client: httpx.Client) -> None:
    head = client.get("/events", params={"after": 0, "limit": 1000}).json()
    after = head[-1]["position"] if head else 0
    order_id = place(client, order_body(stock(client, 1)))
    settled(client, order_id)

    feed = client.get("/events", params={"after": after, "limit": 1000}).json()
    assert all(e["position"] > after for e in feed)
    assert [e["position"] for e in feed] == sorted(e["position"] for e in feed)
    assert f"order-{order_id}" in {e["stream_id"] for e in feed}
    assert len(client.get("/events", params={"after": after, "limit": 2}).json()) == 2
    assert_error(client.get("/events", params={"limit": 1001}), 422, "validation_error")


def test_orders_can_be_listed_by_status_page_by_page(client: httpx.Client) -> None:
    sku = stock(client, 10)
    placed = [place(client, order_body(sku)) for _ in range(3)]
    for order_id in placed:
        settled(client, order_id)

    def fulfilled_ids() -> list[str]:
        ids: list[str] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"status": "fulfilled", "limit": 2}
            if cursor:
                params["cursor"] = cursor
            page = client.get("/orders", params=params).json()
            ids += [o["order_id"] for o in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return ids

    ids = poll(fulfilled_ids, lambda found: set(placed) <= set(found))
    assert set(placed) <= set(ids)
    assert len(ids) == len(set(ids))
    sagas = client.get("/sagas", params={"status": "completed", "limit": 1000}).json()
    assert set(placed) <= {s["saga_id"] for s in sagas["items"]}
    assert_error(client.get("/orders", params={"status": "lost"}), 422, "validation_error")
    assert_error(client.get("/orders", params={"cursor": "not-a-cursor"}), 422)


# --- idempotency ----------------------------------------------------------------------


def test_replaying_an_idempotency_key_returns_the_first_order_and_starts_nothing(
    client: httpx.Client, server_database_url: str
) -> None:
    body = order_body(stock(client, 5))
    key = unique("key")
    first = client.post("/orders", json=body, headers={"Idempotency-Key": key})
    again = client.post("/orders", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 202
    assert again.status_code in (200, 202)
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    settled(client, first.json()["order_id"])
    assert order_created_count(server_database_url, body["customer_id"]) == 1


def test_an_idempotency_key_with_another_body_is_refused(
    client: httpx.Client, server_database_url: str
) -> None:
    sku = stock(client, 5)
    key = unique("key")
    body = order_body(sku)
    place(client, body, key)
    other = {**body, "items": [{"sku": sku, "quantity": 2}]}
    assert_error(
        client.post("/orders", json=other, headers={"Idempotency-Key": key}),
        409,
        "idempotency_key_reused",
    )
    assert order_created_count(server_database_url, body["customer_id"]) == 1


def test_concurrent_requests_with_one_idempotency_key_create_one_order(
    server: Server, server_database_url: str
) -> None:
    with server.client() as c:
        body = order_body(stock(c, 50))
    key = unique("key")

    def post(_: int) -> httpx.Response:
        with server.client() as c:
            return c.post("/orders", json=body, headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(post, range(10)))
    assert {r.status_code for r in responses} <= {200, 202}, [r.text for r in responses]
    assert len({r.json()["order_id"] for r in responses}) == 1
    assert order_created_count(server_database_url, body["customer_id"]) == 1


# --- errors ---------------------------------------------------------------------------


def test_unknown_paths_and_methods_answer_json_errors(client: httpx.Client) -> None:
    assert_error(client.get("/no/such/thing"), 404, "not_found")
    error = client.delete("/orders")
    assert_error(error, 405, "method_not_allowed")
    assert set(error.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD", "POST"}
    assert_error(client.patch(f"/inventory/{unique('sku')}", json={}), 405)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"surprise": True}, ["body", "surprise"]),
        ({"items": []}, ["body", "items"]),
        ({"items": [{"sku": "X", "quantity": 0}]}, ["body", "items", 0, "quantity"]),
        ({"items": [{"sku": "X", "quantity": 10_001}]}, ["body", "items", 0, "quantity"]),
        ({"items": [{"sku": "X", "quantity": "1"}]}, ["body", "items", 0, "quantity"]),
        ({"items": [{"sku": "X", "quantity": 1}] * 101}, ["body", "items"]),
        ({"customer_id": "c" * 201}, ["body", "customer_id"]),
        ({"customer_id": "bad\u0007bell"}, ["body", "customer_id"]),
        ({"customer_id": ""}, ["body", "customer_id"]),
    ],
)
def test_invalid_orders_are_refused_with_the_field_in_error(
    client: httpx.Client, change: dict[str, Any], field: list[Any]
) -> None:
    error = assert_error(client.post("/orders", json=order_body("X", **change)), 422)
    assert error["code"] == "validation_error"
    assert field in [d["loc"] for d in error["details"]]


@pytest.mark.parametrize(
    ("section", "change"),
    [
        ("shipping_address", {"country": "us"}),
        ("shipping_address", {"country": "USA"}),
        ("prescription", {"expires_on": "2026-02-30"}),
        ("prescription", {"expires_on": "31/12/2099"}),
        ("prescription", {"expires_on": "2099-12-31T00:00:00"}),
    ],
)
def test_invalid_addresses_and_dates_are_refused(
    client: httpx.Client, section: str, change: dict[str, Any]
) -> None:
    body = order_body("X")
    body[section] = {**body[section], **change}
    error = assert_error(client.post("/orders", json=body), 422, "validation_error")
    assert error["details"][0]["loc"][:2] == ["body", section]


def test_malformed_json_and_bad_inventory_are_422(client: httpx.Client) -> None:
    assert_error(
        client.post("/orders", content=b"{not json", headers={"content-type": "application/json"}),
        422,
        "validation_error",
    )
    sku = unique("sku")
    assert_error(client.put(f"/inventory/{sku}", json={"on_hand": -1}), 422)
    assert_error(client.put(f"/inventory/{sku}", json={"on_hand": 1.5}), 422)
    assert_error(client.put(f"/inventory/{sku}", json={"on_hand": 1, "x": 1}), 422)
    assert_error(client.put(f"/inventory/{'s' * 201}", json={"on_hand": 1}), 422)
    assert_error(client.get(f"/inventory/{sku}"), 404)  # nothing was stored


def test_bodies_over_64_kib_are_refused_even_when_chunked(client: httpx.Client) -> None:
    big = b'{"on_hand": 1, "pad": "' + b"x" * (64 * 1024) + b'"}'
    sku = unique("sku")
    error = assert_error(
        client.put(f"/inventory/{sku}", content=big, headers={"content-type": "application/json"}),
        413,
        "payload_too_large",
    )
    assert error["details"] == {"max_bytes": 65536}

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 8192):
            yield big[start : start + 8192]

    chunked = client.put(
        f"/inventory/{sku}", content=chunks(), headers={"content-type": "application/json"}
    )
    assert chunked.request.headers.get("transfer-encoding") == "chunked"
    assert_error(chunked, 413, "payload_too_large")
    assert_error(client.get(f"/inventory/{sku}"), 404)


# --- operations -----------------------------------------------------------------------


def test_health_reports_the_database_and_projection_lag(client: httpx.Client) -> None:
    health = client.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    assert body["database"] == "ok"
    assert all("lag" in p for p in body["projections"].values())


def test_metrics_count_started_and_finished_sagas(client: httpx.Client) -> None:
    def value(text: str, name: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0

    completed = 'fulfillment_sagas_finished_total{outcome="completed"}'
    compensated = 'fulfillment_sagas_finished_total{outcome="compensated"}'
    before = client.get("/metrics").text
    sku = stock(client, 5)
    settled(client, place(client, order_body(sku)))
    settled(client, place(client, order_body(sku, country="JP")))
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text
    assert value(after, "fulfillment_sagas_started_total") == (
        value(before, "fulfillment_sagas_started_total") + 2
    )
    assert value(after, completed) == value(before, completed) + 1
    assert value(after, compensated) == value(before, compensated) + 1


def test_openapi_describes_every_route_and_the_error_shape(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    routes = {(path, method) for path, ops in schema["paths"].items() for method in ops}
    assert routes >= {
        ("/inventory/{sku}", "put"),
        ("/inventory/{sku}", "get"),
        ("/inventory/{sku}/lots/{lot}", "put"),
        ("/inventory/{sku}/lots/{lot}/orders", "get"),
        ("/orders", "post"),
        ("/orders", "get"),
        ("/orders/{order_id}", "get"),
        ("/orders/{order_id}/events", "get"),
        ("/events", "get"),
        ("/sagas", "get"),
        ("/health", "get"),
        ("/metrics", "get"),
    }
    post = schema["paths"]["/orders"]["post"]["responses"]
    assert post["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"
    }
    assert {"202", "409", "413"} <= set(post)


# --- authentication -------------------------------------------------------------------


def test_without_api_keys_the_server_listens_on_loopback_only(server: Server) -> None:
    output = server.output()
    assert "binds to 127.0.0.1 only (not 0.0.0.0)" in output
    assert f"serving on {server.url} " in output


def test_without_api_keys_only_a_loopback_host_is_answered(server: Server) -> None:
    """DNS rebinding: a page whose name resolves to 127.0.0.1 sends its own name."""
    with server.client() as client:
        port = server.url.rsplit(":", 1)[1]
        for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}", "127.0.0.2"):
            answer = client.get("/health", headers={"Host": host})
            assert answer.status_code == 200, (host, answer.text)
            assert answer.headers["cache-control"] == "no-store"
            assert answer.headers["x-content-type-options"] == "nosniff"
        for host in ("rebound.example", f"rebound.example:{port}", "10.1.2.3"):
            refused = client.get("/orders", headers={"Host": host})
            assert_error(refused, 421, "misdirected_request")
            assert refused.headers["cache-control"] == "no-store"


@pytest.fixture(scope="module")
def keyed_server(
    _migrated_urls: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """Authentication does not depend on the database: one server, on SQLite."""
    with start_server(
        _migrated_urls["sqlite"],
        api_key="s3cret",
        env={"FULFILLMENT_API_KEYS": "other-key, s3cret"},
        args=["--workers", "0"],
        log_dir=tmp_path_factory.mktemp("keyed"),
    ) as srv:
        yield srv


def test_with_api_keys_every_route_but_health_needs_a_bearer_key(keyed_server: Server) -> None:
    with httpx.Client(base_url=keyed_server.url) as anonymous:
        for path in ("/orders", "/events", "/metrics", "/openapi.json", "/no/such/thing"):
            error = assert_error(anonymous.get(path), 401, "unauthorized")
            assert "s3cret" not in error["message"]
        assert anonymous.get("/health").status_code == 200
        wrong = anonymous.get("/orders", headers={"Authorization": "Bearer s3cre"})
        assert_error(wrong, 401)
        assert wrong.headers["www-authenticate"] == "Bearer"
        assert_error(anonymous.get("/orders", headers={"Authorization": "Basic s3cret"}), 401)
    with keyed_server.client() as authorized:
        assert authorized.get("/orders").status_code == 200
        sku = unique("sku")
        assert authorized.put(f"/inventory/{sku}", json={"on_hand": 1}).status_code == 200
    with keyed_server.client(headers={"Authorization": "Bearer other-key"}) as second_key:
        assert second_key.get(f"/inventory/{sku}").status_code == 200
    assert "s3cret" not in keyed_server.output()


def test_with_api_keys_any_host_is_answered(keyed_server: Server) -> None:
    with keyed_server.client(headers={"Host": "pharmacy.example.com"}) as client:
        answer = client.get("/orders")
        assert answer.status_code == 200, answer.text
        assert answer.headers["cache-control"] == "no-store"
        assert_error(client.get("/orders", headers={"Authorization": ""}), 401, "unauthorized")


def test_without_a_database_health_metrics_and_writes_answer_503() -> None:
    import anyio

    from fulfillment.bootstrap import bootstrap
    from fulfillment.config import Settings
    from fulfillment.entrypoints.api import create_api

    app = bootstrap(Settings(database_url="postgresql://nobody@127.0.0.1:1/nothing"))

    async def requests() -> list[httpx.Response]:
        transport = httpx.ASGITransport(create_api(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as offline:
            return [
                await offline.get("/health"),
                await offline.get("/metrics"),
                await offline.put("/inventory/X", json={"on_hand": 1}),
            ]

    try:
        responses = anyio.run(requests)
    finally:
        app.close()
    for response in responses:
        assert_error(response, 503, "unavailable")

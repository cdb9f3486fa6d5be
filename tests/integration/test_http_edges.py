"""The edges of the HTTP API (issue 14): forged and tampered cursors, trailing slashes
and dot segments, HEAD, the schema against the server, look-alike identifiers and the
rate limit of writes. Each is a JSON 4xx, never a 5xx or a redirect, and changes nothing.

Over HTTP, in-process (TestClient, never following redirects). The cursor tests run on
SQLite and PostgreSQL (a position out of a BIGINT's range was a 500 on both); the others
do not depend on the database: SQLite only.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from conftest import LOOPBACK, TEST_MASTER_KEY
from fastapi.testclient import TestClient
from saga_testkit import place_order
from sqlalchemy import func, select

from fulfillment import views
from fulfillment.adapters import tables as t
from fulfillment.adapters.access_log import list_accesses
from fulfillment.adapters.phi_crypto import MasterKeys
from fulfillment.adapters.projections import Projector
from fulfillment.bootstrap import App
from fulfillment.entrypoints import identifiers
from fulfillment.entrypoints.api import create_api
from fulfillment.service_layer import commands as c
from fulfillment.views.cursors import CURSOR_PATTERN

SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
SQLITE_AND_POSTGRES = pytest.mark.parametrize("backend", ["sqlite", "postgresql"], indirect=True)

KEYS = ("shop:client:secret-shop", "till:client:secret-till", "root:admin:secret-root")
SHOP = {"Authorization": "Bearer secret-shop"}
TILL = {"Authorization": "Bearer secret-till"}
ROOT = {"Authorization": "Bearer secret-root"}


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert "location" not in response.headers, response.headers
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, response.text
    return error


def client(app: App, **kwargs: Any) -> TestClient:
    """A client that never follows a redirect (so one shows as the 3xx it is)."""
    return TestClient(
        create_api(app), raise_server_exceptions=False, follow_redirects=False, **kwargs
    )


@pytest.fixture
def open_api(app: App) -> Iterator[TestClient]:
    """No keys: the loopback-only API."""
    with client(app, base_url=LOOPBACK) as http:
        yield http


@pytest.fixture
def keyed_app(make_app: Callable[..., App]) -> App:
    return make_app(api_keys=KEYS)


@pytest.fixture
def keyed_api(keyed_app: App) -> Iterator[TestClient]:
    with client(keyed_app, base_url="http://evil.example") as http:
        yield http


def unsigned(payload: object) -> str:
    """A cursor of the old, unsigned form: base64url of the JSON."""
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def placed(app: App, count: int) -> list[str]:
    """`count` orders, projected (so the listings have them), newest last."""
    ids = [f"o-{n}" for n in range(count)]
    for order_id in ids:
        place_order(app, order_id, stock=100)
    Projector(app.engine, app.mapper).catch_up()
    return ids


# --- 1. forged and tampered cursors ------------------------------------------------------

LISTINGS = ["/orders", "/sagas", "/api/dashboard/orders"]
FORGED = [
    "eyJwIjo5MjIzMzcyMDM2ODU0Nzc1ODA4fQ",  # {"p": 2**63}, as the issue has it
    unsigned({"p": 2**63}),
    unsigned({"p": 10**40}),
    unsigned({"p": -1}),
    unsigned({"p": 5}),  # in range, but unsigned: not one the API handed out
    unsigned({"p": 2**63}) + ".AAAAAAAAAAAAAAAAAAAAAA",  # the signed shape, a forged tag
    "0",
    "not a cursor!",
    "x" * 5000,
]


@SQLITE_AND_POSTGRES
@pytest.mark.parametrize("path", LISTINGS)
@pytest.mark.parametrize("cursor", FORGED)
def test_a_forged_cursor_is_422_invalid_cursor(
    open_api: TestClient, app: App, path: str, cursor: str
) -> None:
    placed(app, 2)
    assert_error(open_api.get(path, params={"cursor": cursor}), 422, "invalid_cursor")


@SQLITE_AND_POSTGRES
@pytest.mark.parametrize("path", ["/orders", "/sagas"])
def test_a_tampered_cursor_is_422_and_the_ones_handed_out_page_through_everything(
    open_api: TestClient, app: App, path: str
) -> None:
    ids = placed(app, 3)
    first = open_api.get(path, params={"limit": 1}).json()
    cursor = first["next_cursor"]
    assert re.fullmatch(CURSOR_PATTERN, cursor)

    payload, _, tag = cursor.partition(".")
    # The position moved (to the end of the log, or past a BIGINT), the tag kept; the tag
    # altered; the halves swapped: none was handed out.
    for tampered in (
        f"{unsigned({'p': 2**62})}.{tag}",
        f"{unsigned({'p': 2**63})}.{tag}",
        f"{payload}.{tag[:-1]}{'A' if tag[-1] != 'A' else 'B'}",
        f"{payload}.{payload[:22]}",
    ):
        assert_error(open_api.get(path, params={"cursor": tampered}), 422, "invalid_cursor")

    seen = [first["items"][0]["order_id"]]
    while cursor is not None:
        page = open_api.get(path, params={"limit": 1, "cursor": cursor})
        assert page.status_code == 200, page.text
        seen += [item["order_id"] for item in page.json()["items"]]
        cursor = page.json()["next_cursor"]
    assert seen == list(reversed(ids))


@SQLITE_AND_POSTGRES
def test_a_cursor_from_one_api_process_works_on_another_and_across_a_key_rotation(
    make_app: Callable[..., App],
) -> None:
    """Behind a load balancer: another process of the same database (the same master
    key) takes the cursor; so does one whose master key was rotated since (the old key
    still configured after the new one)."""
    first, second = make_app(), make_app()
    placed(first, 3)
    rotated = make_app(master_key=f"{MasterKeys.generate('new')},{TEST_MASTER_KEY}")
    stranger = make_app(master_key=MasterKeys.generate("other"))
    with client(first, base_url=LOOPBACK) as a:
        cursor = a.get("/orders", params={"limit": 1}).json()["next_cursor"]
    for other in (second, rotated):
        with client(other, base_url=LOOPBACK) as b:
            page = b.get("/orders", params={"limit": 1, "cursor": cursor})
            assert page.status_code == 200, page.text
            assert [o["order_id"] for o in page.json()["items"]] == ["o-1"]
    with client(stranger, base_url=LOOPBACK) as b:
        assert_error(b.get("/orders", params={"cursor": cursor}), 422, "invalid_cursor")


# --- 2. no redirects ------------------------------------------------------------------------

SLASHED = ["/orders/", "/sagas/", "/health/", "/metrics/", "/orders/o-1/", "/inventory/A/"]
DOT_SEGMENTS = ["/inventory/%2e%2e%2f", "/inventory/%2e%2e", "/inventory/.%2E", "/inventory/%2e"]


@SQLITE_ONLY
@pytest.mark.parametrize("path", SLASHED + DOT_SEGMENTS)
def test_a_trailing_slash_or_a_dot_segment_is_404_never_a_redirect_with_keys(
    keyed_api: TestClient, keyed_app: App, path: str
) -> None:
    # With keys any Host is served: the redirect used to echo it (Location: http://evil...).
    for method in ("GET", "PUT", "HEAD"):
        body = {"on_hand": 5} if method == "PUT" else None
        answer = keyed_api.request(method, path, json=body, headers=ROOT)
        assert answer.status_code == 404, (method, path, answer.status_code)
        assert "location" not in answer.headers
        if method != "HEAD":
            assert_error(answer, 404, "not_found")
    assert views.get_inventory(keyed_app, "..") is None
    assert views.get_inventory(keyed_app, ".") is None


@SQLITE_ONLY
@pytest.mark.parametrize("path", SLASHED + DOT_SEGMENTS)
def test_a_trailing_slash_or_a_dot_segment_is_404_never_a_redirect_without_keys(
    open_api: TestClient, app: App, path: str
) -> None:
    for method in ("GET", "PUT"):
        body = {"on_hand": 5} if method == "PUT" else None
        assert_error(open_api.request(method, path, json=body), 404, "not_found")
    assert views.get_inventory(app, "..") is None


@SQLITE_ONLY
def test_no_route_redirects(keyed_api: TestClient) -> None:
    """Every route's path, with a trailing slash, and with a dot segment: never a 3xx."""
    for route in keyed_api.app.routes:  # type: ignore[attr-defined]
        path = re.sub(r"\{[^}]+\}", "x", getattr(route, "path", ""))
        for variant in (path + "/", path + "/..", path.replace("/x", "/.", 1)):
            for method in sorted(getattr(route, "methods", None) or ()):
                answer = keyed_api.request(method, variant, headers=ROOT)
                assert not 300 <= answer.status_code < 400, (method, variant, answer.headers)


# --- 3. HEAD --------------------------------------------------------------------------------


@SQLITE_ONLY
@pytest.mark.parametrize(
    "path",
    [
        "/health",
        "/",
        "/dashboard/app.js",
        "/dashboard/app.css",
        "/orders",
        "/orders/o-0",
        "/orders/unknown",  # a 404 is a 404 to HEAD as well
        "/metrics",
        "/openapi.json",
        "/inventory/ASPIRIN",
    ],
)
def test_head_answers_what_get_does_without_the_body(
    open_api: TestClient, app: App, path: str
) -> None:
    placed(app, 1)
    get = open_api.get(path)
    head = open_api.head(path)
    assert head.status_code == get.status_code, (path, head.status_code, get.status_code)
    assert head.content == b""
    for header in ("content-type", "cache-control", "x-content-type-options"):
        assert head.headers.get(header) == get.headers.get(header), header
    if path != "/metrics":  # its numbers move between two scrapes
        assert head.headers["content-length"] == str(len(get.content))


@SQLITE_ONLY
def test_head_goes_through_the_keys_and_roles_like_get(
    keyed_api: TestClient, keyed_app: App
) -> None:
    placed(keyed_app, 1)
    assert keyed_api.head("/health").status_code == 200  # open
    assert keyed_api.head("/").status_code == 200  # the dashboard's shell is open
    refused = keyed_api.head("/orders")
    assert (refused.status_code, refused.content) == (401, b"")
    assert keyed_api.head("/orders", headers=SHOP).status_code == 200
    assert keyed_api.head("/events", headers=SHOP).status_code == 403  # patient data
    post_only = keyed_api.head("/webhooks/carrier")
    assert post_only.status_code == 405 and post_only.headers["allow"] == "POST"
    listed = keyed_api.delete("/orders", headers=ROOT)
    assert_error(listed, 405, "method_not_allowed")
    assert listed.headers["allow"] == "GET, HEAD, POST"


@SQLITE_ONLY
def test_a_head_of_patient_data_shows_none_and_is_not_audited(
    keyed_api: TestClient, keyed_app: App
) -> None:
    placed(keyed_app, 1)
    access_log = keyed_api.app.state.access_log  # type: ignore[attr-defined]
    assert keyed_api.head("/orders/o-0/events", headers=ROOT).status_code == 200
    access_log.flush()
    assert list_accesses(keyed_app.engine) == []
    assert keyed_api.get("/orders/o-0/events", headers=ROOT).status_code == 200
    access_log.flush()
    assert [a.route for a in list_accesses(keyed_app.engine)] == ["/orders/{order_id}/events"]


# --- 4. the schema says what the server takes -------------------------------------------------


def schema_of(http: TestClient, path: str, method: str, name: str) -> dict[str, Any]:
    """The JSON Schema of a parameter."""
    operation = http.get("/openapi.json").json()["paths"][path][method]
    (parameter,) = [p for p in operation["parameters"] if p["name"] == name]
    found: dict[str, Any] = parameter["schema"]
    return found


@SQLITE_ONLY
def test_the_schema_of_a_cursor_is_the_shape_of_the_ones_handed_out(
    open_api: TestClient, app: App
) -> None:
    placed(app, 2)
    cursor_schema = schema_of(open_api, "/orders", "get", "cursor")
    (string,) = [s for s in cursor_schema["anyOf"] if s.get("type") == "string"]
    pattern = string["pattern"]
    assert not re.search(pattern, "0")  # the schema allowed it, the server did not
    handed_out = open_api.get("/orders", params={"limit": 1}).json()["next_cursor"]
    assert re.search(pattern, handed_out)


WHOLE_NUMBERS = [(9999.0, 202), (2, 202), (1e4, 202), (2.5, 422), ("2", 422), (True, 422)]


@SQLITE_ONLY
@pytest.mark.parametrize(("quantity", "status"), WHOLE_NUMBERS)
def test_a_quantity_is_any_json_integer_as_its_schema_says(
    open_api: TestClient, quantity: object, status: int
) -> None:
    """JSON Schema's `integer` is a number without a fraction: `9999.0` is one."""
    body = order_body(items=[{"sku": "ASPIRIN", "quantity": quantity}])
    answer = open_api.post("/orders", json=body)
    assert answer.status_code == status, answer.text
    line = open_api.get("/openapi.json").json()["components"]["schemas"]["OrderLineIn"]
    assert line["properties"]["quantity"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 10000,
        "title": "Quantity",
    }


@SQLITE_ONLY
def test_on_hand_written_with_a_zero_fraction_is_a_whole_number(open_api: TestClient) -> None:
    answer = open_api.put("/inventory/ASPIRIN", json={"on_hand": 40.0})
    assert answer.status_code == 200, answer.text
    assert answer.json()["on_hand"] == 40
    assert isinstance(answer.json()["on_hand"], int)


@SQLITE_ONLY
def test_the_schema_states_the_rules_of_texts_and_countries(open_api: TestClient) -> None:
    schemas = open_api.get("/openapi.json").json()["components"]["schemas"]
    sku = schemas["OrderLineIn"]["properties"]["sku"]
    assert sku["pattern"] == identifiers.IDENTIFIER_PATTERN
    for refused in ("AMOX-500 ", "\u202eabc", "a\u200bb", "a\u2028b", "\ufeffabc", "a\xa0b"):
        assert not re.search(sku["pattern"], refused), refused
    for taken in ("AMOX-500", "Am\u00e9lie", "B 2291"):
        assert re.search(sku["pattern"], taken), taken
    country = schemas["ShippingAddressIn"]["properties"]["country"]
    assert len(country["enum"]) == 249 and "GB" in country["enum"]
    assert "XX" not in country["enum"]
    assert schema_of(open_api, "/inventory/{sku}", "put", "sku")["pattern"] == sku["pattern"]


# --- 5. look-alike identifiers --------------------------------------------------------------


def order_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "customer_id": "cus-1",
        "items": [{"sku": "ASPIRIN", "quantity": 1}],
        "prescription": {
            "prescriber_id": "dr-9",
            "patient_name": "Ada Lovelace",
            "expires_on": "2099-01-31",
        },
        "shipping_address": {
            "name": "Ada Lovelace",
            "line1": "1 High St",
            "city": "Leeds",
            "postal_code": "LS1 1AA",
            "country": "GB",
        },
    }
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        target = body
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return body


LOOK_ALIKES = {
    "right-to-left override": ("%E2%80%AEabc", "U+202E RIGHT-TO-LEFT OVERRIDE"),
    "zero-width space": ("AMOX%E2%80%8B-500", "U+200B ZERO WIDTH SPACE"),
    "zero-width joiner": ("AMOX%E2%80%8D500", "U+200D ZERO WIDTH JOINER"),
    "line separator": ("AMOX%E2%80%A8500", "U+2028 LINE SEPARATOR"),
    "byte order mark": ("%EF%BB%BFAMOX-500", "U+FEFF ZERO WIDTH NO-BREAK SPACE"),
    "no-break space": ("AMOX%C2%A0500", "U+00A0 NO-BREAK SPACE"),
    "trailing space": ("AMOX-500%20", "begin or end with a space"),
    "leading space": ("%20AMOX-500", "begin or end with a space"),
}


LOT = ["path", "lot"]


def count_inventory(app: App) -> int:
    with app.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(t.inventory)).scalar_one())


@SQLITE_ONLY
@pytest.mark.parametrize("kind", LOOK_ALIKES)
def test_a_look_alike_sku_or_lot_in_a_path_is_422_saying_why_and_changes_nothing(
    open_api: TestClient, app: App, kind: str
) -> None:
    text, why = LOOK_ALIKES[kind]
    for method, path, body, loc in (
        ("PUT", f"/inventory/{text}", {"on_hand": 5}, ["path", "sku"]),
        ("GET", f"/inventory/{text}", None, ["path", "sku"]),
        ("PUT", f"/inventory/A/lots/{text}", {"on_hand": 1, "expires_on": "2099-01-01"}, LOT),
        ("GET", f"/orders/{text}", None, ["path", "order_id"]),
        ("DELETE", f"/customers/{text}/personal-data", None, ["path", "customer_id"]),
    ):
        error = assert_error(open_api.request(method, path, json=body), 422, "validation_error")
        (detail,) = error["details"]
        assert detail["loc"] == loc, detail
        assert why in detail["message"] and detail["type"] == "text_refused", detail
    assert count_inventory(app) == 0


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("field", "value", "loc"),
    [
        ("customer_id", "\u202ecus-1", ["customer_id"]),
        ("items", [{"sku": "AMOX-500 ", "quantity": 1}], ["items", 0, "sku"]),
        ("items", [{"sku": "AMOX\u200b-500", "quantity": 1}], ["items", 0, "sku"]),
        ("prescription__prescriber_id", "dr\u20289", ["prescription", "prescriber_id"]),
        ("prescription__patient_name", "Ada\u200dLovelace", ["prescription", "patient_name"]),
        ("prescription__patient_name", " Ada Lovelace", ["prescription", "patient_name"]),
        ("shipping_address__line1", "1\u00a0High St", ["shipping_address", "line1"]),
        ("shipping_address__city", "Leeds\ufeff", ["shipping_address", "city"]),
        ("shipping_address__country", "XX", ["shipping_address", "country"]),
        ("shipping_address__country", "gb", ["shipping_address", "country"]),
    ],
)
def test_a_look_alike_in_an_order_is_422_naming_the_field_and_places_nothing(
    open_api: TestClient, app: App, field: str, value: object, loc: list[object]
) -> None:
    error = assert_error(
        open_api.post("/orders", json=order_body(**{field: value})), 422, "validation_error"
    )
    (detail,) = error["details"]
    assert detail["loc"] == ["body", *loc], detail
    assert detail["message"], detail
    assert views.events_after(app, 0, 10) == []


@SQLITE_ONLY
def test_nfc_and_nfd_spellings_are_one_sku(open_api: TestClient, app: App) -> None:
    nfd, nfc = "Ame\u0301lie", "Am\u00e9lie"
    assert open_api.put(f"/inventory/{nfd}", json={"on_hand": 5}).json()["sku"] == nfc
    assert open_api.put(f"/inventory/{nfc}", json={"on_hand": 7}).status_code == 200
    shown = open_api.get(f"/inventory/{nfd}")
    assert (shown.json()["sku"], shown.json()["on_hand"]) == (nfc, 7)
    assert count_inventory(app) == 1
    placed_order = open_api.post("/orders", json=order_body(items=[{"sku": nfd, "quantity": 1}]))
    order_id = placed_order.json()["order_id"]
    assert open_api.get(f"/orders/{order_id}").json()["items"] == [{"sku": nfc, "quantity": 1}]


@SQLITE_ONLY
def test_free_text_keeps_inner_spaces_and_notes_their_lines(open_api: TestClient) -> None:
    body = order_body(
        prescription__patient_name="Ada  King Lovelace",
        shipping_address__line1="12 St James's Square",
        shipping_address__country="BR",  # any real country is accepted (shipping may not be)
    )
    order_id = open_api.post("/orders", json=body).json()["order_id"]
    cancelled = open_api.post(
        f"/orders/{order_id}/cancel",
        json={"reason": "customer_request", "note": "ordered twice\nsee ticket 12 "},
    )
    assert cancelled.status_code == 202, cancelled.text
    refused = open_api.post(
        f"/orders/{order_id}/cancel", json={"reason": "customer_request", "note": "a\tb"}
    )
    (detail,) = assert_error(refused, 422, "validation_error")["details"]
    assert detail["loc"] == ["body", "note"] and "U+0009" in detail["message"]


# --- 6. the rate limit of writes --------------------------------------------------------------


@pytest.fixture
def limited(make_app: Callable[..., App]) -> App:
    app = make_app(api_keys=KEYS, rate_limit_per_minute=3)
    app.bus.handle(c.SetInventory("ASPIRIN", 100))
    return app


def orders_created(app: App) -> int:
    return sum(e["type"] == "OrderCreated" for e in views.events_after(app, 0, 1000))


@SQLITE_ONLY
def test_the_fourth_write_of_a_key_within_a_minute_is_429_and_changes_nothing(
    limited: App,
) -> None:
    with client(limited) as http:
        for _ in range(3):
            assert http.post("/orders", json=order_body(), headers=SHOP).status_code == 202
        before = orders_created(limited)
        refused = http.post(
            "/orders", json=order_body(), headers={**SHOP, "Idempotency-Key": "k-4"}
        )
        error = assert_error(refused, 429, "rate_limited")
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 20  # a token is back every 60 / 3 seconds
        assert error["details"] == {"limit_per_minute": 3, "retry_after_seconds": retry_after}
        assert orders_created(limited) == before == 3
        # Reads do not count; another key has its own bucket.
        assert http.get("/orders", headers=SHOP).status_code == 200
        assert http.post("/orders", json=order_body(), headers=TILL).status_code == 202
        # Every write counts, whatever the route: three stock changes, then no order.
        for on_hand in (10, 20, 30):
            stock = http.put("/inventory/ASPIRIN", json={"on_hand": on_hand}, headers=ROOT)
            assert stock.status_code == 200, stock.text
        assert_error(http.post("/orders", json=order_body(), headers=ROOT), 429, "rate_limited")
        assert_error(
            http.put("/inventory/ASPIRIN", json={"on_hand": 40}, headers=ROOT), 429, "rate_limited"
        )
    assert orders_created(limited) == 4
    assert views.get_inventory(limited, "ASPIRIN")["on_hand"] == 30  # type: ignore[index]
    # The refused request's Idempotency-Key was never stored: sent again later, it is new.
    with limited.engine.connect() as conn:
        keys = conn.execute(select(func.count()).select_from(t.idempotency_keys)).scalar_one()
    assert keys == 0


@SQLITE_ONLY
def test_without_keys_every_write_is_one_sender_and_the_limit_is_off_by_default(
    make_app: Callable[..., App],
) -> None:
    with client(make_app(rate_limit_per_minute=1), base_url=LOOPBACK) as http:
        assert http.put("/inventory/A", json={"on_hand": 1}).status_code == 200
        assert_error(http.put("/inventory/A", json={"on_hand": 2}), 429, "rate_limited")
    with client(make_app(), base_url=LOOPBACK) as http:
        for n in range(20):
            assert http.put("/inventory/A", json={"on_hand": n}).status_code == 200


@SQLITE_ONLY
def test_the_schema_says_which_writes_may_be_rate_limited(open_api: TestClient) -> None:
    paths = open_api.get("/openapi.json").json()["paths"]
    assert "429" in paths["/orders"]["post"]["responses"]
    assert "429" in paths["/inventory/{sku}"]["put"]["responses"]
    assert "429" not in paths["/orders"]["get"]["responses"]
    assert "429" not in paths["/webhooks/carrier"]["post"]["responses"]

"""The API keys' roles through the real ASGI app (FastAPI in-process): 401 without a known
key, 403 for what the key's role may not do (and nothing changes), the application's own
404/405 for what no route serves, the sender's name in the events, and the dashboard's
timeline without patient data for a role that may not read it.

Most tests run on SQLite only (the policy does not touch the database); the ones that
show that a refused request changes nothing run on every backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import saga_testkit
from conftest import LOOPBACK
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from saga_testkit import run_jobs

from fulfillment import views
from fulfillment.bootstrap import App
from fulfillment.entrypoints.api import OPEN_PATHS, create_api
from fulfillment.entrypoints.api_errors import role_of, sender_of
from fulfillment.entrypoints.api_roles import allowed

SQLITE_ONLY = pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
KEYS = (
    "watcher:viewer:s-viewer",
    "shop:client:s-client",
    "rx-desk:pharmacist:s-pharmacist",
    "ops:operator:s-operator",
    "root:admin:s-admin",
    "bare-admin-secret",  # an admin key named by its position: key6
)
SECRETS = {
    "viewer": "s-viewer",
    "client": "s-client",
    "pharmacist": "s-pharmacist",
    "operator": "s-operator",
    "admin": "s-admin",
}
ROLES = tuple(SECRETS)
PATIENT = "Rosalind Franklin"


def as_role(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRETS[role]}"}


def order_body(sku: str = "ASPIRIN") -> dict[str, Any]:
    return {
        "customer_id": "cust-7",
        "items": [{"sku": sku, "quantity": 1}],
        "prescription": {
            "prescriber_id": "dr-who",
            "patient_name": PATIENT,
            "expires_on": "2099-12-31",
        },
        "shipping_address": {
            "name": PATIENT,
            "line1": "12 St James's Square",
            "city": "London",
            "postal_code": "SW1Y 4JH",
            "country": "US",
        },
    }


def event_count(app: App) -> int:
    return len(views.events_after(app, 0, 1000))


@pytest.fixture
def keyed(make_app: Callable[..., App]) -> App:
    return make_app(api_keys=KEYS)


@pytest.fixture
def http(keyed: App) -> Iterator[TestClient]:
    with TestClient(create_api(keyed)) as client:
        yield client


def assert_forbidden(answer: Any) -> None:
    assert answer.status_code == 403, answer.text
    error = answer.json()["error"]
    assert error["code"] == "forbidden"
    assert error["message"]
    assert "s-" not in error["message"]  # no secret in it


# --- 401: no known key --------------------------------------------------------------------


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/orders"),
        ("POST", "/orders"),
        ("GET", "/events"),
        ("DELETE", "/customers/cust-7/personal-data"),
        ("POST", "/orders/o-1/verification"),
        ("GET", "/nowhere"),  # unknown paths too: no key, no answer about them
    ],
)
def test_without_a_known_key_it_is_401_whatever_the_path(
    http: TestClient, method: str, path: str
) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "s-admin"}):
        answer = http.request(method, path, headers=headers)
        assert answer.status_code == 401, (headers, answer.text)
        assert answer.json()["error"]["code"] == "unauthorized"
        assert answer.headers["WWW-Authenticate"] == "Bearer"


@SQLITE_ONLY
def test_the_open_paths_need_no_key(http: TestClient) -> None:
    assert http.get("/health").status_code == 200
    assert http.get("/").status_code == 200
    # The carrier's webhook is signed instead: never 401/403 from the bearer-key guard.
    assert http.post("/webhooks/carrier", content=b"{}").status_code not in (401, 403)
    assert "/webhooks/carrier" in OPEN_PATHS


# --- 403: the role may not ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "method", "path", "body"),
    [
        ("viewer", "POST", "/orders", order_body()),
        ("pharmacist", "POST", "/orders", order_body()),
        ("client", "POST", "/orders/o-1/verification", {"decision": "approve"}),
        ("operator", "POST", "/orders/o-1/verification", {"decision": "approve"}),
        ("viewer", "POST", "/orders/o-1/cancel", {}),
        ("pharmacist", "PUT", "/inventory/ASPIRIN", {"on_hand": 0}),
        ("client", "PUT", "/inventory/ASPIRIN/lots/L-1", {"on_hand": 0}),
        ("operator", "DELETE", "/customers/cust-7/personal-data", None),
        ("pharmacist", "DELETE", "/customers/cust-7/personal-data", None),
        ("client", "POST", "/sagas/o-1/signals/verification", {"decision": "approve"}),
        ("pharmacist", "POST", "/sagas/o-1/retry", {}),
    ],
)
def test_a_forbidden_request_is_403_before_any_route_and_changes_nothing(
    keyed: App, http: TestClient, role: str, method: str, path: str, body: Any
) -> None:
    saga_testkit.place_order(keyed, "o-1", stock=5, customer_id="cust-7", patient_name=PATIENT)
    before = (
        event_count(keyed),
        views.get_order(keyed, "o-1"),
        views.list_orders(keyed, None, 10, None),
    )
    stock = views.get_inventory(keyed, "ASPIRIN")

    answer = http.request(method, path, json=body, headers=as_role(role))

    assert_forbidden(answer)
    assert (
        event_count(keyed),
        views.get_order(keyed, "o-1"),
        views.list_orders(keyed, None, 10, None),
    ) == before
    assert views.get_inventory(keyed, "ASPIRIN") == stock


@SQLITE_ONLY
@pytest.mark.parametrize("role", ["viewer", "client"])
@pytest.mark.parametrize(
    "path", ["/events", "/orders/o-1/events", "/orders/o-1/fhir", "/events?after=0"]
)
def test_patient_data_is_403_for_viewers_and_clients(
    keyed: App, http: TestClient, role: str, path: str
) -> None:
    saga_testkit.place_order(keyed, "o-1", patient_name=PATIENT)

    answer = http.get(path, headers=as_role(role))

    assert_forbidden(answer)
    assert PATIENT not in answer.text
    assert http.head(path, headers=as_role(role)).status_code == 403  # HEAD as GET


# --- allowed ---------------------------------------------------------------------------------


@SQLITE_ONLY
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    "path",
    [
        "/orders",
        "/orders/o-1",
        "/sagas",
        "/inventory/ASPIRIN",
        "/metrics",
        "/api/dashboard/overview",
        "/api/dashboard/orders",
        "/api/dashboard/orders/o-1/timeline",
        "/openapi.json",
    ],
)
def test_every_role_reads_what_holds_no_patient_data(
    keyed: App, http: TestClient, role: str, path: str
) -> None:
    saga_testkit.place_order(keyed, "o-1", stock=5, customer_id="cust-7", patient_name=PATIENT)

    answer = http.get(path, headers=as_role(role))

    assert answer.status_code == 200, answer.text


@SQLITE_ONLY
@pytest.mark.parametrize("role", ["pharmacist", "operator", "admin"])
def test_pharmacists_operators_and_admins_read_the_events(
    keyed: App, http: TestClient, role: str
) -> None:
    saga_testkit.place_order(keyed, "o-1", patient_name=PATIENT)

    for path in ("/events", "/orders/o-1/events"):
        answer = http.get(path, headers=as_role(role))
        assert answer.status_code == 200, answer.text
        assert PATIENT in answer.text


@pytest.mark.parametrize("role", ["client", "operator", "admin"])
def test_clients_operators_and_admins_place_orders_recorded_with_the_keys_name(
    keyed: App, http: TestClient, role: str
) -> None:
    answer = http.post("/orders", json=order_body(), headers=as_role(role))

    assert answer.status_code == 202, answer.text
    order_id = answer.json()["order_id"]
    with keyed.uow() as uow:
        created = uow.events.read_stream(f"order-{order_id}")
    names = {"client": "shop", "operator": "ops", "admin": "root"}
    assert created, "no event recorded"
    # Awaits POST /orders passing `sender=sender_of(request)` to app.bus.handle.
    assert {e.metadata.get("sender") for e in created} == {names[role]}


@SQLITE_ONLY
def test_operators_set_stock_and_signal_sagas(keyed: App, http: TestClient) -> None:
    answer = http.put("/inventory/ASPIRIN", json={"on_hand": 7}, headers=as_role("operator"))
    assert answer.status_code == 200, answer.text
    assert answer.json()["on_hand"] == 7

    signal = http.post(
        "/sagas/nobody/signals/approve", json={"approver": "x"}, headers=as_role("operator")
    )
    assert signal.status_code == 404  # allowed: the engine answers, there is no such saga


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/orders", None),
        ("GET", "/events", None),
        ("GET", "/orders/o-1/events", None),
        ("POST", "/orders", order_body()),
        ("PUT", "/inventory/ASPIRIN", {"on_hand": 9}),
        ("GET", "/api/dashboard/orders/o-1/timeline", None),
        ("POST", "/orders/o-1/verification", {"decision": "approve"}),
        ("POST", "/orders/o-1/cancel", {}),
        ("DELETE", "/customers/cust-7/personal-data", None),
        ("POST", "/sagas/o-1/retry", {}),
    ],
)
def test_an_admin_is_never_refused(
    keyed: App, http: TestClient, method: str, path: str, body: Any
) -> None:
    saga_testkit.place_order(keyed, "o-1", stock=5, customer_id="cust-7", patient_name=PATIENT)
    for secret in ("s-admin", "bare-admin-secret"):
        answer = http.request(
            method, path, json=body, headers={"Authorization": f"Bearer {secret}"}
        )
        # Routes still to come answer 404/405/409/422, never 401/403.
        assert answer.status_code not in (401, 403), (secret, answer.text)


@SQLITE_ONLY
def test_bare_secrets_are_admin_keys_named_by_their_position(
    make_app: Callable[..., App],
) -> None:
    app = make_app(api_keys=("first-secret", "second-secret"))
    api = create_api(app)

    @api.get("/api/dashboard/whoami-probe")  # a path of the table: every role may GET it
    def probe(request: Request) -> dict[str, str]:
        return {"sender": sender_of(request), "role": role_of(request)}

    with TestClient(api) as http:
        first = http.get(
            "/api/dashboard/whoami-probe", headers={"Authorization": "Bearer first-secret"}
        )
        second = http.get(
            "/api/dashboard/whoami-probe", headers={"Authorization": "Bearer second-secret"}
        )
        stocked = http.put(
            "/inventory/ASPIRIN",
            json={"on_hand": 3},
            headers={"Authorization": "Bearer second-secret"},
        )
        erased = http.delete(
            "/customers/cust-7/personal-data", headers={"Authorization": "Bearer first-secret"}
        )

    assert first.json() == {"sender": "key1", "role": "admin"}
    assert second.json() == {"sender": "key2", "role": "admin"}
    assert stocked.status_code == 200, stocked.text
    assert erased.status_code not in (401, 403)


# --- what no route serves: the application's answer, not 403 --------------------------------


@SQLITE_ONLY
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nowhere", 404),
        ("GET", "/orders/o-1/unknown", 404),
        ("PATCH", "/orders", 405),
        ("DELETE", "/orders", 405),
        ("PUT", "/orders", 405),
        ("HEAD", "/nowhere", 404),  # HEAD is served as GET (api_headers.HeadAsGet)
        ("HEAD", "/webhooks/carrier", 405),  # no GET there
        ("POST", "/events", 405),
        ("DELETE", "/inventory/ASPIRIN", 405),
    ],
)
def test_unknown_paths_and_methods_stay_404_and_405_for_every_role(
    http: TestClient, role: str, method: str, path: str, status: int
) -> None:
    answer = http.request(method, path, headers=as_role(role))

    assert answer.status_code == status, answer.text


@SQLITE_ONLY
def test_a_route_the_policy_has_no_row_for_is_refused_to_all_but_admins(
    keyed: App,
) -> None:
    api = create_api(keyed)

    @api.get("/reports/unlisted")
    def unlisted() -> dict[str, str]:
        return {"ok": "yes"}

    with TestClient(api) as http:
        for role in ("viewer", "client", "pharmacist", "operator"):
            assert_forbidden(http.get("/reports/unlisted", headers=as_role(role)))
        assert http.get("/reports/unlisted", headers=as_role("admin")).status_code == 200
        assert http.get("/reports/other", headers=as_role("viewer")).status_code == 404


@SQLITE_ONLY
def test_every_route_of_the_api_is_in_the_policy_or_open(keyed: App) -> None:
    api: FastAPI = create_api(keyed)
    missing = []
    for route in api.routes:
        path = getattr(route, "path", "")
        if path in OPEN_PATHS:
            continue
        concrete = "/".join("x" if p.startswith("{") else p for p in path.split("/"))
        for method in sorted(getattr(route, "methods", None) or ()):
            if method == "HEAD":
                continue
            if allowed("admin", method, concrete) is not True:
                missing.append(f"{method} {path}")
    assert missing == [], "add these routes to api_roles.POLICY"


# --- the dashboard's timeline without patient data ------------------------------------------


@SQLITE_ONLY
@pytest.mark.parametrize(
    ("role", "sees_phi"),
    [
        ("viewer", False),
        ("client", False),
        ("pharmacist", True),
        ("operator", True),
        ("admin", True),
    ],
)
def test_the_timeline_leaves_the_prescription_and_address_out_for_viewers_and_clients(
    keyed: App, http: TestClient, role: str, sees_phi: bool
) -> None:
    saga_testkit.place_order(keyed, "o-1", stock=5, customer_id="cust-7", patient_name=PATIENT)
    run_jobs(keyed)

    answer = http.get("/api/dashboard/orders/o-1/timeline", headers=as_role(role))

    assert answer.status_code == 200, answer.text
    timeline = answer.json()
    events = {e["type"]: e["data"] for e in timeline["events"]}
    assert {"OrderCreated", "OrderFulfillmentSagaStarted"} <= set(events)
    if not sees_phi:
        for data in events.values():
            assert "prescription" not in data and "shipping_address" not in data
    if sees_phi:
        assert events["OrderCreated"]["prescription"]["patient_name"] == PATIENT
        assert "shipping_address" in events["OrderCreated"]
    else:
        assert PATIENT not in answer.text
        assert events["OrderCreated"]["customer_id"] == "cust-7"  # the rest is kept
    assert timeline["order"]["order_id"] == "o-1"


@SQLITE_ONLY
def test_without_keys_everyone_is_an_anonymous_admin(app: App) -> None:
    saga_testkit.place_order(app, "o-1", stock=5, patient_name=PATIENT)
    with TestClient(create_api(app), base_url=LOOPBACK) as http:
        assert http.get("/events").status_code == 200
        timeline = http.get("/api/dashboard/orders/o-1/timeline")
        assert PATIENT in timeline.text
        assert http.put("/inventory/ASPIRIN", json={"on_hand": 1}).status_code == 200


def test_a_dashboard_timeline_with_patient_data_is_the_views_default(keyed: App) -> None:
    saga_testkit.place_order(keyed, "o-1", stock=5, customer_id="cust-7", patient_name=PATIENT)

    full = views.order_timeline(keyed, "o-1")
    bare = views.order_timeline(keyed, "o-1", include_phi=False)

    assert full is not None and bare is not None
    assert PATIENT in str(full["events"]) and PATIENT not in str(bare["events"])
    assert [e["type"] for e in full["events"]] == [e["type"] for e in bare["events"]]
    assert {k: v for k, v in full.items() if k != "events"} == {
        k: v for k, v in bare.items() if k != "events"
    }

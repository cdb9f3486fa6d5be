"""The pharmacy lifecycle over HTTP (the ASGI app in-process) on every backend: a
pharmacist's verification, cancellation until pickup, the carrier's signed tracking
webhooks and the FHIR export (docs/api.md)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from conftest import LOOPBACK
from fastapi.testclient import TestClient
from saga_testkit import run_jobs

from fulfillment.adapters.carrier import SimulatedCarrier
from fulfillment.bootstrap import App
from fulfillment.entrypoints.api import create_api
from fulfillment.entrypoints.webhook_signature import sign
from fulfillment.service_layer import commands as c

SECRET = "whsec-test-0123456789abcdef"
SKU = "AMOXICILLIN-500"


def order_body(sku: str = SKU, quantity: int = 2) -> dict[str, Any]:
    return {
        "customer_id": "cust-9",
        "items": [{"sku": sku, "quantity": quantity}],
        "prescription": {
            "prescriber_id": "dr-house",
            "patient_name": "Grace Hopper",
            "expires_on": (date.today() + timedelta(days=90)).isoformat(),
        },
        "shipping_address": {
            "name": "Grace Hopper",
            "line1": "1 Compiler Road",
            "city": "Arlington",
            "postal_code": "22201",
            "country": "US",
        },
    }


@pytest.fixture
def client_for(make_app: Callable[..., App]) -> Iterator[Callable[..., tuple[App, TestClient]]]:
    clients: list[TestClient] = []

    def factory(**settings: Any) -> tuple[App, TestClient]:
        settings.setdefault("carrier_webhook_secret", SECRET)
        app = make_app(**settings)
        app.bus.handle(c.SetInventory(SKU, 50))
        client = TestClient(create_api(app), base_url=LOOPBACK)
        client.__enter__()
        clients.append(client)
        return app, client

    yield factory
    for client in clients:
        client.__exit__(None, None, None)


def place(client: TestClient, **kw: Any) -> str:
    answer = client.post("/orders", json=order_body(**kw))
    assert answer.status_code == 202, answer.text
    order_id: str = answer.json()["order_id"]
    return order_id


def order(client: TestClient, order_id: str) -> dict[str, Any]:
    answer = client.get(f"/orders/{order_id}")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def event_types(client: TestClient, order_id: str) -> list[str]:
    return [e["type"] for e in client.get(f"/orders/{order_id}/events").json()]


def webhook(
    client: TestClient,
    body: dict[str, Any],
    *,
    secret: str = SECRET,
    at: float | None = None,
    header: str | None = None,
) -> Any:
    raw = json.dumps(body).encode()
    signature = header if header is not None else sign(secret, raw, int(at or time.time()))
    return client.post(
        "/webhooks/carrier",
        content=raw,
        headers={"Content-Type": "application/json", "Carrier-Signature": signature},
    )


def update(tracking: str, status: str, event_id: str) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "tracking_number": tracking,
        "status": status,
        "occurred_at": datetime.now(UTC).isoformat(),
        "location": "Memphis hub",
    }


# --- verification -----------------------------------------------------------------------


def test_an_order_waits_for_a_pharmacist_who_approves_it(client_for: Any) -> None:
    app, client = client_for(verification_required_for="all")
    order_id = place(client)
    run_jobs(app)

    waiting = order(client, order_id)
    assert waiting["status"] == "awaiting_verification"
    assert waiting["verification"] == {"status": "pending", "by": None}

    answer = client.post(
        f"/orders/{order_id}/verification",
        json={"decision": "approve", "pharmacist_id": "ph-12", "note": "ok"},
    )
    assert answer.status_code == 202, answer.text
    assert answer.json() == {"order_id": order_id, "status": "pending"}
    run_jobs(app)

    done = order(client, order_id)
    assert done["status"] == "fulfilled"
    assert done["verification"] == {"status": "approved", "by": "ph-12"}
    assert done["lots"] == [{"sku": SKU, "lot": "default", "quantity": 2}]
    assert done["shipment"]["status"] == "in_transit"
    types = event_types(client, order_id)
    assert types.index("PrescriptionVerified") < types.index("InventoryReserved")


def test_a_rejected_prescription_cancels_the_order(client_for: Any) -> None:
    app, client = client_for(verification_required_for="all")
    order_id = place(client)
    run_jobs(app)

    answer = client.post(
        f"/orders/{order_id}/verification",
        json={"decision": "reject", "pharmacist_id": "ph-12", "reason": "duplicate therapy"},
    )
    assert answer.status_code == 202, answer.text
    run_jobs(app)

    done = order(client, order_id)
    assert (done["status"], done["reason"]) == ("cancelled", "verification_rejected")
    assert done["verification"] == {"status": "rejected", "by": "ph-12"}
    assert "PrescriptionRejected" in event_types(client, order_id)


def test_a_decision_on_an_order_that_does_not_wait_is_409_and_changes_nothing(
    client_for: Any,
) -> None:
    app, client = client_for(verification_required_for="none")
    order_id = place(client)
    run_jobs(app)
    before = event_types(client, order_id)

    answer = client.post(
        f"/orders/{order_id}/verification", json={"decision": "approve", "pharmacist_id": "p"}
    )

    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["code"] == "verification_not_pending"
    assert event_types(client, order_id) == before
    assert order(client, order_id)["verification"] == {"status": "not_required", "by": "policy"}


@pytest.mark.parametrize(
    "body",
    [
        {"decision": "maybe", "pharmacist_id": "p"},
        {"decision": "approve"},
        {"decision": "approve", "pharmacist_id": "p", "note": "x" * 2001},
        {"decision": "approve", "pharmacist_id": "p", "extra": 1},
    ],
)
def test_a_malformed_decision_is_422(client_for: Any, body: dict[str, Any]) -> None:
    app, client = client_for(verification_required_for="all")
    order_id = place(client)
    run_jobs(app)

    answer = client.post(f"/orders/{order_id}/verification", json=body)

    assert answer.status_code == 422, answer.text
    assert order(client, order_id)["status"] == "awaiting_verification"


def test_a_decision_on_an_unknown_order_is_404(client_for: Any) -> None:
    _, client = client_for()
    answer = client.post(
        "/orders/nope/verification", json={"decision": "approve", "pharmacist_id": "p"}
    )
    assert answer.status_code == 404


# --- cancellation -----------------------------------------------------------------------


def test_a_cancellation_while_awaiting_verification_cancels_with_its_reason(
    client_for: Any,
) -> None:
    app, client = client_for(verification_required_for="all")
    order_id = place(client)
    run_jobs(app)

    answer = client.post(f"/orders/{order_id}/cancel", json={"reason": "prescriber_cancelled"})
    assert answer.status_code == 202, answer.text
    again = client.post(f"/orders/{order_id}/cancel", json={"reason": "prescriber_cancelled"})
    assert again.status_code in (202, 409), again.text  # cancelling, or already cancelled
    run_jobs(app)

    done = order(client, order_id)
    assert (done["status"], done["reason"]) == ("cancelled", "prescriber_cancelled")
    late = client.post(f"/orders/{order_id}/cancel", json={"reason": "customer_request"})
    assert late.status_code == 409
    assert late.json()["error"]["code"] == "too_late_to_cancel"


def test_a_cancellation_before_the_saga_ran_undoes_nothing_it_did_not_do(
    client_for: Any,
) -> None:
    app, client = client_for()
    order_id = place(client)

    answer = client.post(
        f"/orders/{order_id}/cancel", json={"reason": "customer_request", "note": "oops"}
    )
    assert answer.status_code == 202, answer.text
    run_jobs(app)

    done = order(client, order_id)
    assert (done["status"], done["reason"]) == ("cancelled", "customer_request")
    assert client.get(f"/inventory/{SKU}").json()["reserved"] == 0
    assert "OrderCancellationRequested" in event_types(client, order_id)


def test_a_cancellation_with_an_idempotency_key_is_answered_again_once_done(
    client_for: Any,
) -> None:
    app, client = client_for(verification_required_for="all")
    order_id = place(client)
    run_jobs(app)
    url, key = f"/orders/{order_id}/cancel", {"Idempotency-Key": "cancel-1"}

    first = client.post(url, json={"reason": "customer_request"}, headers=key)
    run_jobs(app)
    again = client.post(url, json={"reason": "customer_request"}, headers=key)
    other = client.post(url, json={"reason": "prescriber_cancelled"}, headers=key)

    assert first.status_code == 202, first.text
    assert again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == {"order_id": order_id, "status": "cancelled"}
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert event_types(client, order_id).count("OrderCancellationRequested") == 1


def test_after_pickup_it_is_too_late_to_cancel(client_for: Any) -> None:
    app, client = client_for()
    order_id = place(client)
    run_jobs(app)

    answer = client.post(f"/orders/{order_id}/cancel", json={"reason": "customer_request"})

    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "too_late_to_cancel"
    assert order(client, order_id)["status"] == "fulfilled"


@pytest.mark.parametrize(
    "body", [{}, {"reason": "bored"}, {"reason": "customer_request", "why": "x"}]
)
def test_a_malformed_cancellation_is_422(client_for: Any, body: dict[str, Any]) -> None:
    _, client = client_for()
    order_id = place(client)
    assert client.post(f"/orders/{order_id}/cancel", json=body).status_code == 422


# --- pickup and tracking ----------------------------------------------------------------


def pickup_later(client_for: Any) -> tuple[App, TestClient]:
    carrier = SimulatedCarrier(("US",), pickup_delay_ms=60_000)
    return client_for(carrier=carrier)  # type: ignore[no-any-return]


def test_the_carriers_pickup_completes_the_order_then_tracking_follows(
    client_for: Any,
) -> None:
    app, client = pickup_later(client_for)
    order_id = place(client)
    run_jobs(app)
    waiting = order(client, order_id)
    assert waiting["status"] == "pending"
    assert waiting["shipment"]["status"] == "initiated"
    number = waiting["shipment"]["tracking_number"]

    assert webhook(client, update(number, "in_transit", "e1")).json() == {"accepted": True}
    run_jobs(app)
    assert order(client, order_id)["status"] == "fulfilled"

    for event_id, status in (("e2", "out_for_delivery"), ("e3", "delivered")):
        assert webhook(client, update(number, status, event_id)).status_code == 200
    repeat = webhook(client, update(number, "delivered", "e3"))
    assert repeat.status_code == 200 and repeat.json() == {"accepted": False}
    late = webhook(client, update(number, "in_transit", "e4"))
    assert late.json() == {"accepted": True}

    done = order(client, order_id)
    assert done["status"] == "delivered"
    assert done["shipment"]["status"] == "delivered"
    assert event_types(client, order_id).count("ShipmentDelivered") == 1


def test_a_cancellation_while_waiting_for_pickup_voids_the_label(client_for: Any) -> None:
    app, client = pickup_later(client_for)
    order_id = place(client)
    run_jobs(app)

    answer = client.post(f"/orders/{order_id}/cancel", json={"reason": "customer_request"})
    assert answer.status_code == 202, answer.text
    run_jobs(app)

    done = order(client, order_id)
    assert (done["status"], done["shipment"]["status"]) == ("cancelled", "cancelled")
    types = event_types(client, order_id)
    assert types[-4:] == [
        "ShipmentCancelled",
        "InventoryReleased",
        "PrescriptionCancelled",
        "OrderCancelled",
    ]


def test_a_returned_parcel_shows_as_returned(client_for: Any) -> None:
    app, client = client_for()
    order_id = place(client)
    run_jobs(app)
    number = order(client, order_id)["shipment"]["tracking_number"]

    webhook(client, update(number, "returned_to_sender", "r1"))

    assert order(client, order_id)["status"] == "returned"


@pytest.mark.parametrize(
    "how",
    ["no header", "wrong secret", "old", "future", "malformed", "tampered"],
)
def test_an_unsigned_or_badly_signed_update_is_401_and_changes_nothing(
    client_for: Any, how: str
) -> None:
    app, client = client_for()
    order_id = place(client)
    run_jobs(app)
    number = order(client, order_id)["shipment"]["tracking_number"]
    body = update(number, "delivered", "bad-1")
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if how == "wrong secret":
        headers["Carrier-Signature"] = sign("another-secret-0123456789", raw, int(time.time()))
    elif how == "old":
        headers["Carrier-Signature"] = sign(SECRET, raw, int(time.time()) - 301)
    elif how == "future":
        headers["Carrier-Signature"] = sign(SECRET, raw, int(time.time()) + 301)
    elif how == "malformed":
        headers["Carrier-Signature"] = "v1=abc"
    elif how == "tampered":
        headers["Carrier-Signature"] = sign(SECRET, raw, int(time.time()))
        raw = raw.replace(b"delivered", b"returned_to_sender")

    answer = client.post("/webhooks/carrier", content=raw, headers=headers)

    assert answer.status_code == 401, answer.text
    assert order(client, order_id)["status"] == "fulfilled"


def test_an_update_for_an_unknown_tracking_number_is_404(client_for: Any) -> None:
    _, client = client_for()
    assert webhook(client, update("SPNOPE", "delivered", "x1")).status_code == 404


def test_a_signed_but_malformed_update_is_422(client_for: Any) -> None:
    _, client = client_for()
    answer = webhook(client, {"event_id": "x", "status": "lost"})
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "validation_error"


def test_without_a_webhook_secret_the_route_is_404(client_for: Any) -> None:
    _, client = client_for(carrier_webhook_secret=None)
    assert webhook(client, update("SP1", "delivered", "x1")).status_code == 404


# --- FHIR -------------------------------------------------------------------------------


def test_the_fhir_export_is_a_valid_r5_bundle_that_follows_the_saga(client_for: Any) -> None:
    from fhir.resources.bundle import Bundle

    app, client = client_for(verification_required_for="all")
    order_id = place(client)
    run_jobs(app)

    def statuses() -> tuple[str, str]:
        answer = client.get(f"/orders/{order_id}/fhir")
        assert answer.status_code == 200, answer.text
        bundle = Bundle.model_validate(answer.json())
        kinds = {e.resource.get_resource_type(): e.resource.status for e in bundle.entry}
        return kinds["MedicationRequest"], kinds["MedicationDispense"]

    assert statuses() == ("on-hold", "preparation")
    client.post(
        f"/orders/{order_id}/verification", json={"decision": "approve", "pharmacist_id": "p"}
    )
    run_jobs(app)
    assert statuses() == ("completed", "completed")
    assert client.get("/orders/nope/fhir").status_code == 404

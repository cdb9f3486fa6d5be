"""Whole lifecycles through a real `fulfillment serve`, on every backend: roles, a
pharmacist's verification over HTTP, and the simulated carrier's pickup and delivery
arriving through the server's own signed webhook (docs/api.md)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pytest

from .server import Server, poll, start_server

pytestmark = pytest.mark.slow

CLIENT = "shop:client:shop-secret-0001"
PHARMACIST = "ph:pharmacist:pharmacist-secret-0001"
VIEWER = "wall:viewer:viewer-secret-0001"
ADMIN = "ops:admin:admin-secret-0001"


@pytest.fixture(scope="module")
def server(server_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        "FULFILLMENT_API_KEYS": ",".join((CLIENT, PHARMACIST, VIEWER, ADMIN)),
        "FULFILLMENT_CARRIER_WEBHOOK_SECRET": "whsec-serve-0123456789abcdef",
        "FULFILLMENT_CARRIER_PICKUP_DELAY_MS": "1500",
    }
    log_dir: Path = tmp_path_factory.mktemp("serve")
    with start_server(server_database_url, env=env, log_dir=log_dir) as srv:
        yield srv


def as_(server: Server, entry: str) -> Any:
    return server.client(headers={"Authorization": f"Bearer {entry.rsplit(':', 1)[1]}"})


def order_body(sku: str) -> dict[str, Any]:
    return {
        "customer_id": "cust-e2e",
        "items": [{"sku": sku, "quantity": 1}],
        "prescription": {
            "prescriber_id": "dr-e2e",
            "patient_name": "Edsger Dijkstra",
            "expires_on": (date.today() + timedelta(days=60)).isoformat(),
        },
        "shipping_address": {
            "name": "Edsger Dijkstra",
            "line1": "1 Shortest Path",
            "city": "Austin",
            "postal_code": "78701",
            "country": "US",
        },
    }


def test_a_controlled_order_is_verified_picked_up_and_delivered(server: Server) -> None:
    admin, shop, pharmacist, viewer = (as_(server, k) for k in (ADMIN, CLIENT, PHARMACIST, VIEWER))
    put = admin.put("/inventory/OXY-5", json={"on_hand": 10, "dea_schedule": "II"})
    assert put.status_code == 200, put.text
    assert shop.put("/inventory/OXY-5", json={"on_hand": 1}).status_code == 403

    placed = shop.post("/orders", json=order_body("OXY-5"))
    assert placed.status_code == 202, placed.text
    order_id = placed.json()["order_id"]
    url = f"/orders/{order_id}"
    waiting = poll(lambda: viewer.get(url).json(), lambda o: o["status"] == "awaiting_verification")
    assert waiting["status"] == "awaiting_verification", server.output()

    decision = {"decision": "approve", "pharmacist_id": "ph-e2e"}
    assert viewer.post(f"{url}/verification", json=decision).status_code == 403
    assert shop.post(f"{url}/verification", json=decision).status_code == 403
    approved = pharmacist.post(f"{url}/verification", json=decision)
    assert approved.status_code == 202, approved.text

    done = poll(lambda: viewer.get(url).json(), lambda o: o["status"] == "delivered", 60)
    assert done["status"] == "delivered", server.output()
    assert done["verification"] == {"status": "approved", "by": "ph-e2e"}
    assert done["shipment"]["status"] == "delivered"
    assert viewer.get(f"{url}/events").status_code == 403  # patient data
    events = pharmacist.get(f"{url}/events").json()
    by_type = {e["type"]: e for e in events}
    assert by_type["PrescriptionVerified"]["data"]["by"] == "ph"
    assert by_type["ShipmentPickedUp"]["data"]["carrier_event_id"].startswith("sim-")
    assert "ShipmentDelivered" in by_type
    types = [e["type"] for e in events]
    assert types.index("ShipmentPickedUp") < types.index("OrderFulfilled")
    assert types.index("OrderFulfilled") < types.index("ShipmentDelivered")


def test_an_order_cancelled_while_it_waits_for_pickup_voids_its_label(server: Server) -> None:
    admin, shop = as_(server, ADMIN), as_(server, CLIENT)
    admin.put("/inventory/IBU-200", json={"on_hand": 10}).raise_for_status()
    order_id = shop.post("/orders", json=order_body("IBU-200")).json()["order_id"]
    url = f"/orders/{order_id}"
    # Booked: it waits for the carrier's pickup, 1.5 s after the booking.
    poll(lambda: shop.get(url).json(), lambda o: o["shipment"] is not None, 30)

    answer = shop.post(f"{url}/cancel", json={"reason": "customer_request"})

    assert answer.status_code == 202, answer.text
    done = poll(lambda: shop.get(url).json(), lambda o: o["status"] == "cancelled", 30)
    assert (done["reason"], done["shipment"]["status"]) == ("customer_request", "cancelled")
    assert admin.get("/inventory/IBU-200").json()["reserved"] == 0

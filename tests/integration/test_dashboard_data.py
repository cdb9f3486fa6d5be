"""What the dashboard and `fulfillment sagas show` display, on every backend.

The timeline of one saga (steps, attempts, errors, durations, compensations in the order
they ran, events), an order's lifecycle (verification, cancellation, pickup, tracking,
lots; notes left out for roles that may not read patient data), the overview (outcomes,
throughput, queue, stuck sagas), the pharmacist's queue, the orders list, the
dashboard's HTTP routes with and without API keys, and the terminal timeline.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import saga_testkit
from conftest import LOOPBACK
from fastapi.testclient import TestClient
from rich.console import Console
from saga_testkit import failing_job, run_jobs

from fulfillment.adapters.carrier import SimulatedCarrier
from fulfillment.adapters.projections import Projector
from fulfillment.bootstrap import App
from fulfillment.domain.errors import TransientFailure
from fulfillment.entrypoints import cli_common, cli_sagas
from fulfillment.entrypoints.api import create_api
from fulfillment.entrypoints.dashboard import SHELL_PATHS
from fulfillment.service_layer import commands as c
from fulfillment.views import dashboard_orders, get_order, order_timeline, overview
from fulfillment.views.dashboard import verification_queue

MakeApp = Callable[..., App]
STATIC = Path(__file__).parents[2] / "src" / "fulfillment" / "entrypoints" / "static"


# The assertions name this SKU and customer.
place_order = partial(saga_testkit.place_order, sku="NAPROXEN", customer_id="cust-7")


def catch_up(app: App) -> None:
    Projector(app.engine, app.mapper).catch_up()


def steps_of(timeline: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in timeline["steps"]}


def titles(timeline: dict[str, Any]) -> list[str]:
    return [e["title"] for e in timeline["events"] if e["title"] is not None]


def decide(app: App, order_id: str, decision: str, **payload: Any) -> None:
    """A pharmacist's decision, as `POST /orders/{id}/verification` sends it."""
    app.bus.handle(c.SignalSaga(order_id, decision, payload, "rx-desk", None, "pharmacist"))


def track(
    app: App, order_id: str, status: str, event_id: str, location: str = "Memphis hub"
) -> None:
    """A carrier's tracking update, as `POST /webhooks/carrier` records it."""
    order = get_order(app, order_id)
    assert order is not None and order["shipment"] is not None, order
    number = order["shipment"]["tracking_number"]
    app.bus.handle(
        c.RecordTrackingUpdate(event_id, number, status, datetime.now(UTC), location),
        sender="carrier",
    )


@pytest.fixture
def stocked(app: App) -> App:
    app.bus.handle(c.SetInventory(sku="NAPROXEN", on_hand=50))
    return app


# --- the timeline of one saga ---------------------------------------------------------------


def test_a_shipment_failure_shows_the_failed_step_and_compensations_in_lifo_order(
    stocked: App,
) -> None:
    place_order(stocked, "o-br", country="BR")
    run_jobs(stocked)

    timeline = order_timeline(stocked, "o-br")
    assert timeline is not None
    assert timeline["order"]["status"] == "cancelled"
    assert timeline["saga"]["status"] == "compensated"
    assert timeline["saga"]["reason"] == "unsupported_destination"
    assert timeline["saga"]["failed_step"] == "initiate_shipment"

    steps = steps_of(timeline)
    assert [s["name"] for s in timeline["steps"]] == [
        "create_prescription",
        "verify_prescription",
        "reserve_inventory",
        "initiate_shipment",
        "await_pickup",
        "complete",
    ]
    assert {name: s["status"] for name, s in steps.items()} == {
        "create_prescription": "compensated",
        "verify_prescription": "succeeded",  # by the policy: NAPROXEN is not controlled
        "reserve_inventory": "compensated",
        "initiate_shipment": "failed",
        "await_pickup": "skipped",
        "complete": "skipped",
    }
    for name, undone_by in (
        ("create_prescription", "PrescriptionCancelled"),
        ("reserve_inventory", "InventoryReleased"),
    ):
        assert steps[name]["attempt_log"][0]["outcome"] == "succeeded"
        assert steps[name]["compensation"]["event"] == undone_by
        assert steps[name]["compensation"]["status"] == "done"
    shipment = steps["initiate_shipment"]
    assert shipment["attempts"] == 1
    assert shipment["errors"] == ["carrier does not ship to BR"]
    assert shipment["attempt_log"][0]["reason"] == "unsupported_destination"
    assert shipment["compensation"] is None

    compensation = timeline["compensation"]
    assert compensation["planned"] == ["release_inventory", "cancel_prescription"]
    ran = compensation["ran"]
    assert [(x["order"], x["event"], x["undoes"]) for x in ran] == [
        (1, "InventoryReleased", "reserve_inventory"),
        (2, "PrescriptionCancelled", "create_prescription"),
    ]
    assert ran[0]["position"] < ran[1]["position"]
    assert compensation["pending"] == []

    types = [e["type"] for e in timeline["events"]]
    assert types[0] == "OrderCreated" and types[-1] == "OrderCancelled"
    assert types.index("ShipmentInitiationFailed") < types.index("InventoryReleased")
    assert types.index("InventoryReleased") < types.index("PrescriptionCancelled")
    assert [e["position"] for e in timeline["events"]] == sorted(
        e["position"] for e in timeline["events"]
    )


def test_a_fulfilled_order_has_every_step_succeeded_with_durations_and_nothing_to_undo(
    stocked: App,
) -> None:
    place_order(stocked, "o-ok")
    run_jobs(stocked)

    timeline = order_timeline(stocked, "o-ok")
    assert timeline is not None
    assert timeline["saga"]["status"] == "completed"
    # The simulated carrier picks up as it books: no wait.
    assert timeline["order"]["shipment"]["status"] == "in_transit"
    for step in timeline["steps"]:
        # A wait passed at once is not an attempt.
        attempts = 0 if step["kind"] == "wait" else 1
        assert (step["status"], step["attempts"], step["compensation"]) == (
            "succeeded",
            attempts,
            None,
        )
        assert step["duration_ms"] is not None and step["duration_ms"] >= 0
        # A wait passed at once shows no start (no attempt), only its end.
        assert step["started_at"] is None if attempts == 0 else step["started_at"] is not None
        assert (step["started_at"] or step["finished_at"]) <= step["finished_at"]
    saga = timeline["saga"]
    assert saga["duration_ms"] >= sum(s["duration_ms"] for s in timeline["steps"]) - 0.01
    assert timeline["compensation"] == {
        "started_at": None,
        "planned": [],
        "ran": [],
        "pending": [],
    }


def test_a_retried_step_shows_each_attempt_and_its_error(make_app: MakeApp) -> None:
    app = make_app()
    app.bus.handle(c.SetInventory(sku="NAPROXEN", on_hand=5))
    failing_job(
        app, "reserve_inventory", lambda: TransientFailure("inventory service timed out"), 1
    )
    place_order(app, "o-flaky")
    run_jobs(app)

    timeline = order_timeline(app, "o-flaky")
    assert timeline is not None
    reserve = steps_of(timeline)["reserve_inventory"]
    assert (reserve["status"], reserve["attempts"]) == ("succeeded", 2)
    assert reserve["errors"] == ["inventory service timed out"]
    assert [(a["attempt"], a["outcome"]) for a in reserve["attempt_log"]] == [
        (1, "retried"),
        (2, "succeeded"),
    ]
    assert reserve["attempt_log"][0]["error"] == "inventory service timed out"
    assert timeline["saga"]["status"] == "completed"


def test_a_parked_saga_shows_the_failing_compensation_and_what_is_left_to_undo(
    make_app: MakeApp,
) -> None:
    app = make_app(max_attempts=2)

    failing_job(app, "release_inventory", lambda: TransientFailure("inventory service unreachable"))
    app.bus.handle(c.SetInventory(sku="NAPROXEN", on_hand=5))
    place_order(app, "o-parked", country="BR")
    run_jobs(app)
    catch_up(app)

    timeline = order_timeline(app, "o-parked")
    assert timeline is not None
    assert timeline["order"]["status"] == "needs_attention"
    assert timeline["saga"]["status"] == "compensation_failed"
    assert timeline["saga"]["stuck"] is True
    assert timeline["saga"]["parked_error"] == "inventory service unreachable"
    reserve = steps_of(timeline)["reserve_inventory"]
    assert reserve["status"] == "compensation_failed"
    assert reserve["compensation"]["status"] == "failed"
    assert [a["outcome"] for a in reserve["compensation"]["attempts"]] == ["retried", "failed"]
    assert steps_of(timeline)["create_prescription"]["compensation"]["status"] == "pending"
    assert timeline["compensation"]["ran"] == []
    assert [(p["name"], p["status"]) for p in timeline["compensation"]["pending"]] == [
        ("release_inventory", "failed"),
        ("cancel_prescription", "pending"),
    ]


def test_a_saga_in_flight_shows_the_step_being_worked_on(app: App) -> None:
    place_order(app, "o-new")  # no worker runs: its first job waits in the queue

    timeline = order_timeline(app, "o-new")
    assert timeline is not None
    assert [s["status"] for s in timeline["steps"]] == ["running"] + ["pending"] * 5
    first = timeline["steps"][0]
    assert first["started_at"] == timeline["saga"]["started_at"]
    assert first["job"]["kind"] == "create_prescription"
    assert first["job"]["status"] == "ready"
    assert timeline["saga"]["finished_at"] is None and timeline["saga"]["duration_ms"] is None


def test_an_unknown_order_has_no_timeline(app: App) -> None:
    place_order(app, "o-known")
    assert order_timeline(app, "o-unknown") is None


# --- overview and the orders list -----------------------------------------------------------


def test_the_overview_counts_outcomes_throughput_queue_and_stuck_sagas(
    make_app: MakeApp,
) -> None:
    app = make_app(max_attempts=2)

    failing_job(app, "release_inventory", lambda: TransientFailure("inventory service unreachable"))
    app.bus.handle(c.SetInventory(sku="NAPROXEN", on_hand=5))
    place_order(app, "o-ok-1")
    place_order(app, "o-ok-2")
    place_order(app, "o-none-left", qty=50)  # fails at step 2: nothing reserved to release
    place_order(app, "o-parked", country="BR")
    run_jobs(app)
    place_order(app, "o-waiting")
    catch_up(app)

    summary = overview(app)
    assert summary["orders"] == {
        "total": 5,
        "pending": 1,
        "awaiting_verification": 0,
        "fulfilled": 2,
        "delivered": 0,
        "returned": 0,
        "cancelled": 1,
        "needs_attention": 1,
    }
    assert summary["sagas"]["completed"] == 2
    assert summary["sagas"]["compensation_failed"] == 1
    buckets = summary["throughput"]["buckets"]
    assert len(buckets) == summary["throughput"]["minutes"]
    assert sum(b["placed"] for b in buckets) == 5
    assert sum(b["fulfilled"] for b in buckets) == 2
    assert sum(b["cancelled"] for b in buckets) == 1
    assert summary["throughput"]["finished_per_minute_5m"] == pytest.approx(3 / 5)
    assert summary["queue"] == {"ready": 1, "scheduled": 0, "running": 0, "dead": 0, "depth": 1}
    assert summary["stuck"]["count"] == 1
    assert [s["saga_id"] for s in summary["stuck"]["sagas"]] == ["o-parked"]
    assert summary["projections"]["order_summaries"]["behind"] == 0


def test_an_empty_system_has_an_overview_of_zeros(app: App) -> None:
    summary = overview(app)
    assert summary["orders"]["total"] == 0
    assert summary["queue"]["depth"] == 0
    assert summary["stuck"] == {"count": 0, "more": False, "sagas": []}
    assert all(b["placed"] == 0 for b in summary["throughput"]["buckets"])


def test_the_orders_list_pages_newest_first_with_times_and_filters_by_status(
    stocked: App,
) -> None:
    for n in range(3):
        place_order(stocked, f"o-{n}")
    place_order(stocked, "o-br", country="BR")
    run_jobs(stocked)
    catch_up(stocked)

    first, cursor = dashboard_orders(stocked, None, 3, None)
    assert [o["order_id"] for o in first] == ["o-br", "o-2", "o-1"]
    assert cursor is not None
    rest, cursor = dashboard_orders(stocked, None, 3, cursor)
    assert [o["order_id"] for o in rest] == ["o-0"] and cursor is None
    for order in first + rest:
        assert order["customer_id"] == "cust-7"
        assert order["placed_at"] <= order["finished_at"]
        assert order["duration_ms"] >= 0
    cancelled, _ = dashboard_orders(stocked, "cancelled", 10, None)
    assert [(o["order_id"], o["reason"]) for o in cancelled] == [
        ("o-br", "unsupported_destination")
    ]


def test_the_overview_counts_orders_awaiting_verification_delivered_and_returned(
    make_app: MakeApp,
) -> None:
    app = make_app(verification_required_for="all")
    app.bus.handle(c.SetInventory(sku="NAPROXEN", on_hand=50))
    for order_id in ("o-delivered", "o-returned", "o-fulfilled", "o-waiting"):
        place_order(app, order_id)
    run_jobs(app)
    for order_id in ("o-delivered", "o-returned", "o-fulfilled"):
        decide(app, order_id, "approve", pharmacist_id="ph-12")
    run_jobs(app)
    catch_up(app)
    track(app, "o-delivered", "delivered", "d-1")
    track(app, "o-returned", "returned_to_sender", "r-1")
    catch_up(app)

    summary = overview(app)
    assert summary["orders"] == {
        "total": 4,
        "pending": 0,
        "awaiting_verification": 1,
        "fulfilled": 1,
        "delivered": 1,
        "returned": 1,
        "cancelled": 0,
        "needs_attention": 0,
    }
    buckets = summary["throughput"]["buckets"]
    # Delivered and returned orders were fulfilled first: their sagas completed.
    assert sum(b["fulfilled"] for b in buckets) == 3
    assert set(buckets[0]) == {"minute", "placed", "fulfilled", "cancelled", "needs_attention"}
    listing, _ = dashboard_orders(app, "awaiting_verification", 10, None)
    assert [o["order_id"] for o in listing] == ["o-waiting"]
    assert listing[0]["verification"] == {"status": "pending", "by": None}


# --- the pharmacist's queue -----------------------------------------------------------------


def test_the_queue_lists_the_orders_awaiting_verification_longest_waiting_first(
    make_app: MakeApp,
) -> None:
    app = make_app(verification_required_for="all")
    app.bus.handle(c.SetInventory(sku="NAPROXEN", on_hand=50))
    for order_id in ("o-1", "o-2", "o-3", "o-4"):
        place_order(app, order_id, qty=2)
    run_jobs(app)
    decide(app, "o-2", "request_clarification", pharmacist_id="ph-7", note="which strength?")
    decide(app, "o-3", "approve", pharmacist_id="ph-12")
    decide(app, "o-4", "reject", pharmacist_id="ph-12", reason="duplicate therapy")
    run_jobs(app)
    catch_up(app)

    queue = verification_queue(app)
    assert (queue["count"], queue["more"]) == (2, False)
    first, second = queue["items"]
    assert [first["order_id"], second["order_id"]] == ["o-1", "o-2"]  # oldest first
    assert first["items"] == [{"sku": "NAPROXEN", "quantity": 2}]
    assert first["customer_id"] == "cust-7"
    assert first["verification"] == {"status": "pending", "by": None}
    # Asking the prescriber keeps the order waiting, with who asked.
    assert second["verification"] == {"status": "clarification_requested", "by": "ph-7"}
    for item in queue["items"]:
        assert item["placed_at"] <= item["waiting_since"]
        waited = datetime.fromisoformat(item["waiting_since"])
        timeout_at = datetime.fromisoformat(item["timeout_at"])
        assert timeout_at - waited == timedelta(seconds=86400)  # the default timeout
        assert item["waiting_ms"] >= 0
    assert "which strength?" not in str(queue)  # the queue holds no notes

    one = verification_queue(app, limit=1)
    assert (one["count"], one["more"], [i["order_id"] for i in one["items"]]) == (2, True, ["o-1"])

    decide(app, "o-1", "approve", pharmacist_id="ph-12")
    run_jobs(app)
    catch_up(app)
    assert [i["order_id"] for i in verification_queue(app)["items"]] == ["o-2"]


def test_an_empty_queue(app: App) -> None:
    place_order(app, "o-1", stock=5)  # controlled substances only, by default: no wait
    run_jobs(app)
    catch_up(app)
    assert verification_queue(app) == {"count": 0, "more": False, "items": []}


# --- an order's lifecycle -------------------------------------------------------------------


def test_the_timeline_shows_the_verification_pickup_tracking_and_lots(make_app: MakeApp) -> None:
    app = make_app(
        verification_required_for="all",
        carrier=SimulatedCarrier(("US",), pickup_delay_ms=60_000),  # the pickup is a webhook
    )
    app.bus.handle(c.SetInventory(sku="NAPROXEN", on_hand=50))
    place_order(app, "o-1", qty=3)
    run_jobs(app)

    waiting = order_timeline(app, "o-1")
    assert waiting is not None
    assert waiting["order"]["status"] == "awaiting_verification"
    assert steps_of(waiting)["verify_prescription"]["status"] == "waiting"
    verification = waiting["lifecycle"]["verification"]
    assert (verification["status"], verification["waiting"]) == ("pending", True)
    assert verification["timeout_at"] is not None and verification["decisions"] == []
    assert waiting["lifecycle"]["lots"] == [] and waiting["lifecycle"]["pickup"] is None

    decide(app, "o-1", "request_clarification", pharmacist_id="ph-7", note="which strength?")
    decide(app, "o-1", "approve", pharmacist_id="ph-12", note="dose checked")
    run_jobs(app)
    catch_up(app)
    shipped = order_timeline(app, "o-1")
    assert shipped is not None
    assert shipped["lifecycle"]["awaiting_pickup"]["timeout_at"] is not None
    track(app, "o-1", "in_transit", "e-1")  # the pickup
    run_jobs(app)
    catch_up(app)
    track(app, "o-1", "out_for_delivery", "e-2", location="Springfield")
    track(app, "o-1", "delivered", "e-3", location="Springfield")
    track(app, "o-1", "in_transit", "e-4")  # late: recorded, not applied
    catch_up(app)

    timeline = order_timeline(app, "o-1")
    assert timeline is not None
    order = timeline["order"]
    assert order["status"] == "delivered"
    assert order["verification"] == {"status": "approved", "by": "ph-12"}
    assert order["lots"] == [{"sku": "NAPROXEN", "lot": "default", "quantity": 3}]
    life = timeline["lifecycle"]
    verification = life["verification"]
    assert (verification["status"], verification["by"], verification["waiting"]) == (
        "approved",
        "ph-12",
        False,
    )
    assert [
        (d["decision"], d["pharmacist_id"], d["by"], d["note"], d["note_hidden"])
        for d in verification["decisions"]
    ] == [
        ("request_clarification", "ph-7", "rx-desk", "which strength?", False),
        ("approve", "ph-12", "rx-desk", "dose checked", False),
    ]
    assert life["cancellation"] is None and life["awaiting_pickup"] is None
    assert life["pickup"]["location"] == "Memphis hub"
    assert life["pickup"]["carrier_event_id"] == "e-1"
    assert [
        (u["event"], u["status"], u["location"], u["applied"], u["carrier_event_id"])
        for u in life["tracking"]
    ] == [
        ("ShipmentPickedUp", "in_transit", "Memphis hub", True, "e-1"),
        ("ShipmentTrackingUpdated", "out_for_delivery", "Springfield", True, "e-2"),
        ("ShipmentDelivered", "delivered", "Springfield", True, "e-3"),
        ("ShipmentTrackingUpdated", "in_transit", "Memphis hub", False, "e-4"),
    ]
    assert all(u["reported_at"] and u["at"] for u in life["tracking"])
    assert [u["position"] for u in life["tracking"]] == sorted(
        u["position"] for u in life["tracking"]
    )
    assert life["lots"] == order["lots"]
    assert titles(timeline) == [
        "Waiting for a pharmacist's decision",
        "Signal request_clarification received: wait",
        "Clarification asked of the prescriber by ph-7",
        "Signal approve received: continue",
        "Verified by ph-12",
        "Waiting for the carrier's pickup",
        "Signal picked_up received: continue",
        "Picked up by the carrier at Memphis hub",
        "Out for delivery at Springfield",
        "Delivered at Springfield",
        "In transit at Memphis hub (out of order: not applied)",
    ]
    assert "dose checked" not in str(titles(timeline))  # a title never holds the note


def test_a_rejection_and_a_verification_by_policy_have_their_titles(make_app: MakeApp) -> None:
    app = make_app(verification_required_for="all")
    app.bus.handle(c.SetInventory(sku="NAPROXEN", on_hand=50))
    place_order(app, "o-rejected")
    run_jobs(app)
    decide(app, "o-rejected", "reject", pharmacist_id="ph-12", reason="duplicate therapy")
    run_jobs(app)
    by_policy = make_app(verification_required_for="none")
    place_order(by_policy, "o-policy")
    run_jobs(by_policy)

    rejected = order_timeline(app, "o-rejected")
    assert rejected is not None
    assert (rejected["order"]["status"], rejected["order"]["reason"]) == (
        "cancelled",
        "verification_rejected",
    )
    (decision,) = rejected["lifecycle"]["verification"]["decisions"]
    assert (decision["decision"], decision["reason"]) == ("reject", "duplicate therapy")
    assert "Rejected by ph-12: duplicate therapy" in titles(rejected)
    assert rejected["lifecycle"]["lots"] == []  # the wait came before the reservation

    policy = order_timeline(by_policy, "o-policy")
    assert policy is not None
    verification = policy["lifecycle"]["verification"]
    assert (verification["status"], verification["by"]) == ("not_required", "policy")
    assert [d["decision"] for d in verification["decisions"]] == ["policy"]
    assert "Verified by policy: no pharmacist review required" in titles(policy)
    assert "Picked up by the carrier" in titles(policy)  # at booking: no location


def test_a_cancellation_request_shows_its_reason_note_and_sender(make_app: MakeApp) -> None:
    app = make_app(verification_required_for="all")
    app.bus.handle(c.SetInventory(sku="NAPROXEN", on_hand=50))
    place_order(app, "o-1")
    run_jobs(app)
    app.bus.handle(c.CancelSaga("o-1", "customer_request", "ordered twice", "shop-web"))
    run_jobs(app)

    timeline = order_timeline(app, "o-1")
    assert timeline is not None
    assert (timeline["order"]["status"], timeline["order"]["reason"]) == (
        "cancelled",
        "customer_request",
    )
    cancellation = timeline["lifecycle"]["cancellation"]
    assert {k: cancellation[k] for k in ("reason", "by", "note", "note_hidden", "event")} == {
        "reason": "customer_request",
        "by": "shop-web",
        "note": "ordered twice",
        "note_hidden": False,
        "event": "OrderCancellationRequested",
    }
    assert "Cancellation requested: customer_request" in titles(timeline)
    verification = timeline["lifecycle"]["verification"]
    assert (verification["waiting"], verification["decisions"]) == (False, [])


# --- the dashboard over HTTP ----------------------------------------------------------------


@pytest.fixture
def client(stocked: App) -> Iterator[TestClient]:
    with TestClient(create_api(stocked), base_url=LOOPBACK) as http:
        yield http


def test_the_dashboard_page_and_its_data_are_served(stocked: App, client: TestClient) -> None:
    place_order(stocked, "o-br", country="BR")
    run_jobs(stocked)
    catch_up(stocked)

    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert '<script src="/dashboard/app.js"' in page.text
    for path in SHELL_PATHS:
        assert client.get(path).status_code == 200

    summary = client.get("/api/dashboard/overview").json()
    assert summary["orders"]["cancelled"] == 1
    listing = client.get("/api/dashboard/orders", params={"status": "cancelled"}).json()
    assert [o["order_id"] for o in listing["items"]] == ["o-br"]
    timeline = client.get("/api/dashboard/orders/o-br/timeline").json()
    assert [x["event"] for x in timeline["compensation"]["ran"]] == [
        "InventoryReleased",
        "PrescriptionCancelled",
    ]


@pytest.mark.parametrize(
    "path, status, code",
    [
        ("/api/dashboard/orders/o-nobody/timeline", 404, "not_found"),
        ("/api/dashboard/orders?status=shipped", 422, "validation_error"),
        ("/api/dashboard/orders?cursor=not-a-cursor", 422, "invalid_cursor"),
        ("/api/dashboard/orders?limit=0", 422, "validation_error"),
        (f"/api/dashboard/orders/{'x' * 201}/timeline", 422, "validation_error"),
    ],
)
def test_bad_dashboard_requests_get_a_json_error(
    client: TestClient, path: str, status: int, code: str
) -> None:
    response = client.get(path)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_with_api_keys_the_page_is_open_but_every_bit_of_data_needs_a_key(
    make_app: MakeApp,
) -> None:
    app = make_app(api_keys=("k-dash",))
    place_order(app, "o-secret")
    with TestClient(create_api(app)) as http:
        for path in SHELL_PATHS:
            assert http.get(path).status_code == 200, path
        for path in (
            "/api/dashboard/overview",
            "/api/dashboard/orders",
            "/api/dashboard/orders/o-secret/timeline",
            "/orders",
            "/events",
        ):
            assert http.get(path).status_code == 401, path
            wrong = http.get(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401, path
            right = http.get(path, headers={"Authorization": "Bearer k-dash"})
            assert right.status_code == 200, path
        # Open means exactly the shell, not what lies under it.
        assert http.get("/dashboard/app.js/../../orders").status_code in (401, 404)
        assert http.get("/dashboard/").status_code == 401
        assert "Rosalind" not in http.get("/").text


KEYS = (
    "watch:viewer:k-viewer",
    "shop-web:client:k-client",
    "rx-desk:pharmacist:k-pharmacist",
    "ops:operator:k-operator",
    "root:admin:k-admin",
)


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer k-{role}"}


def test_every_role_reads_the_queue_and_only_a_pharmacist_or_admin_decides(
    make_app: MakeApp,
) -> None:
    app = make_app(api_keys=KEYS, verification_required_for="all")
    app.bus.handle(c.SetInventory(sku="NAPROXEN", on_hand=50))
    place_order(app, "o-1")
    run_jobs(app)
    catch_up(app)
    with TestClient(create_api(app)) as http:
        assert http.get("/api/dashboard/verifications").status_code == 401
        for role in ("viewer", "client", "pharmacist", "operator", "admin"):
            answer = http.get("/api/dashboard/verifications", headers=bearer(role))
            assert answer.status_code == 200, (role, answer.text)
            assert answer.headers["cache-control"] == "no-store"
            assert [i["order_id"] for i in answer.json()["items"]] == ["o-1"]
        body = {"decision": "approve", "pharmacist_id": "ph-12"}
        for role in ("viewer", "client", "operator"):
            refused = http.post("/orders/o-1/verification", json=body, headers=bearer(role))
            assert refused.status_code == 403, role
            assert refused.json()["error"]["code"] == "forbidden"
        assert (
            http.get("/api/dashboard/verifications?limit=0", headers=bearer("viewer")).status_code
            == 422
        )
        approved = http.post(
            "/orders/o-1/verification",
            json=body,
            headers={**bearer("pharmacist"), "Idempotency-Key": "dashboard-1"},
        )
        assert approved.status_code == 202, approved.text
        again = http.post(
            "/orders/o-1/verification",
            json=body,
            headers={**bearer("pharmacist"), "Idempotency-Key": "dashboard-1"},
        )
        assert again.status_code == 200  # the dashboard's retry of the same decision
        run_jobs(app)
        catch_up(app)
        queue = http.get("/api/dashboard/verifications", headers=bearer("viewer")).json()
        assert queue == {"count": 0, "more": False, "items": []}
        late = http.post("/orders/o-1/verification", json=body, headers=bearer("admin"))
        assert late.status_code == 409
        assert late.json()["error"]["code"] == "verification_not_pending"


@pytest.mark.parametrize(
    ("role", "sees_notes"),
    [("viewer", False), ("client", False), ("pharmacist", True), ("admin", True)],
)
def test_notes_are_patient_data_the_timeline_leaves_out_for_viewers_and_clients(
    make_app: MakeApp, role: str, sees_notes: bool
) -> None:
    app = make_app(api_keys=KEYS, verification_required_for="all")
    app.bus.handle(c.SetInventory(sku="NAPROXEN", on_hand=50))
    place_order(app, "o-1")
    run_jobs(app)
    decide(app, "o-1", "request_clarification", pharmacist_id="ph-7", note="eGFR 28: dose?")
    app.bus.handle(c.CancelSaga("o-1", "prescriber_cancelled", "patient in hospital", "shop-web"))
    run_jobs(app)

    with TestClient(create_api(app)) as http:
        answer = http.get("/api/dashboard/orders/o-1/timeline", headers=bearer(role))
    assert answer.status_code == 200, answer.text
    timeline = answer.json()
    life = timeline["lifecycle"]
    (asked,) = life["verification"]["decisions"]
    cancellation = life["cancellation"]
    events = {e["type"]: e for e in timeline["events"]}
    signal = events["SagaSignalReceived"]["data"]
    if sees_notes:
        assert (asked["note"], asked["note_hidden"]) == ("eGFR 28: dose?", False)
        assert cancellation["note"] == "patient in hospital"
        assert signal["payload"]["note"] == "eGFR 28: dose?"
        assert events["OrderCancellationRequested"]["data"]["note"] == "patient in hospital"
    else:
        for text in ("eGFR 28", "patient in hospital", "Ada Lovelace"):
            assert text not in answer.text, text
        assert (asked["note"], asked["note_hidden"]) == (None, True)
        assert (cancellation["note"], cancellation["note_hidden"]) == (None, True)
        assert "note" not in signal["payload"]
        assert signal["payload"]["pharmacist_id"] == "ph-7"
        for kind in ("PrescriptionClarificationRequested", "OrderCancellationRequested"):
            assert "note" not in events[kind]["data"], kind
    # What is not patient data is kept for every role.
    assert (asked["pharmacist_id"], cancellation["reason"]) == ("ph-7", "prescriber_cancelled")
    assert "Clarification asked of the prescriber by ph-7" in titles(timeline)
    assert "Cancellation requested: prescriber_cancelled" in titles(timeline)


def test_the_page_loads_nothing_from_another_origin() -> None:
    text = {name: (STATIC / name).read_text() for name in ("index.html", "app.js", "app.css")}
    external = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//|url\(\s*["']?(?:https?:)?//""")
    for name, body in text.items():
        assert not external.search(body), name
        assert "@import" not in body, name
    # The one absolute URL is the SVG namespace, an identifier that is never fetched.
    urls = set(re.findall(r"https?://[^\s\"'`)]+", text["app.js"]))
    assert urls <= {"http://www.w3.org/2000/svg"}
    assert "innerHTML" not in text["app.js"]  # data is written as text, never as HTML


# --- `fulfillment sagas show` ---------------------------------------------------------------


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch, database_url: str) -> io.StringIO:
    """The operator CLI's consoles, writing plain text 200 columns wide into a buffer."""
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None, highlight=False)
    monkeypatch.setattr(cli_common, "console", console)
    monkeypatch.setattr(cli_common, "errors", console)
    monkeypatch.setenv("FULFILLMENT_DATABASE_URL", database_url)
    return out


def test_sagas_show_prints_the_steps_then_the_compensations_in_lifo_order_then_the_events(
    stocked: App, terminal: io.StringIO
) -> None:
    place_order(stocked, "o-br", country="BR")
    run_jobs(stocked)

    cli_sagas.sagas_show("o-br")
    text = terminal.getvalue()
    assert "Saga o-br  compensated  (unsupported_destination)" in text
    lines = text.splitlines()

    def row(first: str) -> str:
        return next(line for line in lines if re.search(rf"\b{first}\b", line))

    assert "succeeded" in row("create_prescription") and "compensated" in row("create_prescription")
    assert "undone by PrescriptionCancelled" in row("create_prescription")
    assert "undone by InventoryReleased" in row("reserve_inventory")
    assert "failed" in row("initiate_shipment")
    assert "attempt 1: carrier does not ship to BR" in row("initiate_shipment")
    assert "skipped" in row("complete")

    steps_at = text.index("Steps")
    compensations_at = text.index("Compensations (last in, first out")
    events_at = text.index("Events")
    assert steps_at < compensations_at < events_at
    section = text[compensations_at:events_at]
    assert section.index("InventoryReleased") < section.index("PrescriptionCancelled")
    history = text[events_at:]
    assert history.index("ShipmentInitiationFailed") < history.index("OrderCancelled")


def test_sagas_show_of_an_unknown_saga_says_so_and_exits_1(app: App, terminal: io.StringIO) -> None:
    with pytest.raises(cli_sagas.typer.Exit) as exit_info:
        cli_sagas.sagas_show("o-nobody")
    assert exit_info.value.exit_code == 1
    assert "unknown saga 'o-nobody'" in terminal.getvalue()

"""What the dashboard and `fulfillment sagas show` display, on every backend.

The timeline of one saga (steps, attempts, errors, durations, compensations in the order
they ran, events), the overview (outcomes, throughput, queue, stuck sagas), the orders
list, the dashboard's HTTP routes with and without API keys, and the terminal timeline.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import saga_testkit
from fastapi.testclient import TestClient
from rich.console import Console
from saga_testkit import failing_job, run_jobs

from fulfillment.adapters.projections import Projector
from fulfillment.bootstrap import App
from fulfillment.domain.errors import TransientFailure
from fulfillment.entrypoints import cli_common, cli_sagas
from fulfillment.entrypoints.api import create_api
from fulfillment.entrypoints.dashboard import SHELL_PATHS
from fulfillment.service_layer import commands as c
from fulfillment.views import dashboard_orders, order_timeline, overview

MakeApp = Callable[..., App]
STATIC = Path(__file__).parents[2] / "src" / "fulfillment" / "entrypoints" / "static"


# The assertions name this SKU and customer.
place_order = partial(saga_testkit.place_order, sku="NAPROXEN", customer_id="cust-7")


def catch_up(app: App) -> None:
    Projector(app.engine, app.mapper).catch_up()


def steps_of(timeline: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in timeline["steps"]}


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
        "reserve_inventory",
        "initiate_shipment",
        "complete",
    ]
    assert {name: s["status"] for name, s in steps.items()} == {
        "create_prescription": "compensated",
        "reserve_inventory": "compensated",
        "initiate_shipment": "failed",
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
    assert timeline["order"]["shipment"]["status"] == "initiated"
    for step in timeline["steps"]:
        assert (step["status"], step["attempts"], step["compensation"]) == ("succeeded", 1, None)
        assert step["duration_ms"] is not None and step["duration_ms"] >= 0
        assert step["started_at"] <= step["finished_at"]
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
    assert [s["status"] for s in timeline["steps"]] == ["running", "pending", "pending", "pending"]
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
        "fulfilled": 2,
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


# --- the dashboard over HTTP ----------------------------------------------------------------


@pytest.fixture
def client(stocked: App) -> Iterator[TestClient]:
    with TestClient(create_api(stocked)) as http:
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

"""The query side on every backend: what the HTTP API and the operator CLI read.

The views read the projection, fall back to the event streams while it lags, page
through orders without repeats or gaps, and pick out the sagas an operator must look at.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import pytest
import saga_testkit
from saga_testkit import run_jobs

from fulfillment import views
from fulfillment.adapters.clock import FixedClock
from fulfillment.adapters.projections import Projector
from fulfillment.bootstrap import App
from fulfillment.domain.errors import TransientFailure
from fulfillment.service_layer import commands as c
from fulfillment.service_layer.unit_of_work import AbstractUnitOfWork

MakeApp = Callable[..., App]
ORDER_KEYS = {"order_id", "status", "reason", "items", "saga", "shipment", "verification", "lots"}
EVENT_KEYS = {"position", "stream_id", "version", "type", "event_version", "recorded_at", "data"}


# The assertions name this SKU.
place_order = partial(saga_testkit.place_order, sku="IBUPROFEN")


def catch_up(app: App) -> None:
    Projector(app.engine, app.mapper).catch_up()


def projected_ids(app: App) -> set[str]:
    items, _ = views.list_orders(app, None, views.MAX_LIMIT, None)
    return {o["order_id"] for o in items}


# --- orders ---------------------------------------------------------------------------------


def test_an_order_just_created_is_found_before_the_projector_has_seen_it(app: App) -> None:
    app.bus.handle(c.SetInventory(sku="IBUPROFEN", on_hand=5))
    place_order(app, "o-fresh", qty=2)
    assert "o-fresh" not in projected_ids(app)

    fresh = views.get_order(app, "o-fresh")
    assert fresh == {
        "order_id": "o-fresh",
        "status": "pending",
        "reason": None,
        "items": [{"sku": "IBUPROFEN", "quantity": 2}],
        "saga": {
            "status": "running",
            "steps": [
                {"name": "create_prescription", "status": "pending", "attempts": 0},
                {"name": "verify_prescription", "status": "pending", "attempts": 0},
                {"name": "reserve_inventory", "status": "pending", "attempts": 0},
                {"name": "initiate_shipment", "status": "pending", "attempts": 0},
                {"name": "await_pickup", "status": "pending", "attempts": 0},
            ],
        },
        "shipment": None,
        "verification": {"status": "pending", "by": None},
        "lots": [],
    }

    run_jobs(app)
    from_streams = views.get_order(app, "o-fresh")
    catch_up(app)
    assert "o-fresh" in projected_ids(app)
    from_projection = views.get_order(app, "o-fresh")
    assert from_projection == from_streams
    assert from_projection is not None and from_projection["status"] == "fulfilled"
    assert set(from_projection) == ORDER_KEYS
    assert from_projection["shipment"]["status"] == "in_transit"  # picked up as booked


def test_an_unknown_order_has_no_view_and_no_events(app: App) -> None:
    place_order(app, "o-known")
    catch_up(app)
    assert views.get_order(app, "o-unknown") is None
    assert views.order_events(app, "o-unknown") is None


def test_an_orders_events_are_its_and_its_sagas_in_commit_order(app: App) -> None:
    place_order(app, "o-1", country="ZZ")  # no stock, nowhere to ship: cancelled
    place_order(app, "o-2")
    run_jobs(app)

    events = views.order_events(app, "o-1")
    assert events is not None
    assert all(set(e) == EVENT_KEYS for e in events)
    assert {e["stream_id"] for e in events} == {"order-o-1", "saga-o-1"}
    positions = [e["position"] for e in events]
    assert positions == sorted(positions)
    types = [e["type"] for e in events]
    assert (types[0], types[-1]) == ("OrderCreated", "OrderCancelled")
    assert events[-1]["data"]["reason"] == "insufficient_stock"


def test_paging_through_orders_shows_each_once_while_new_orders_arrive(app: App) -> None:
    for i in range(7):
        place_order(app, f"o-{i}")
    catch_up(app)

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        page, cursor = views.list_orders(app, None, 3, cursor)
        seen += [o["order_id"] for o in page]
        pages += 1
        place_order(app, f"late-{pages}")  # a new order between two pages
        catch_up(app)
        if cursor is None:
            break

    assert seen == [f"o-{i}" for i in reversed(range(7))]  # newest first, none twice
    assert pages == 3
    newest, _ = views.list_orders(app, None, 2, None)
    assert [o["order_id"] for o in newest] == ["late-3", "late-2"]


def test_orders_can_be_listed_by_status(app: App) -> None:
    app.bus.handle(c.SetInventory(sku="IBUPROFEN", on_hand=5))
    place_order(app, "o-ok")
    place_order(app, "o-nowhere", country="ZZ")
    place_order(app, "o-too-many", qty=50)
    run_jobs(app)
    place_order(app, "o-waiting")
    catch_up(app)

    def listed(status: str) -> list[tuple[str, str | None]]:
        items, cursor = views.list_orders(app, status, 10, None)
        assert cursor is None
        return [(o["order_id"], o["reason"]) for o in items]

    assert listed("fulfilled") == [("o-ok", None)]
    assert listed("cancelled") == [
        ("o-too-many", "insufficient_stock"),
        ("o-nowhere", "unsupported_destination"),
    ]
    assert listed("pending") == [("o-waiting", None)]
    assert listed("needs_attention") == []


@pytest.mark.parametrize(
    "status, limit, cursor",
    [
        ("shipped", 10, None),
        (None, 0, None),
        (None, 10, "not a cursor!"),
        (None, 10, "eyJxIjoxfQ"),  # valid base64 JSON, wrong content
    ],
)
def test_a_bad_listing_query_is_refused(
    app: App, status: str | None, limit: int, cursor: str | None
) -> None:
    with pytest.raises(views.InvalidQuery):
        views.list_orders(app, status, limit, cursor)
    with pytest.raises(views.InvalidQuery):
        views.list_sagas(app, status, limit, cursor)


# --- sagas ----------------------------------------------------------------------------------


def _scenario_with_stuck_sagas(app: App) -> None:
    """o-done completes; o-parked parks on a failing release; o-dead's job dies."""

    real = app.bus.handlers[c.RunSagaJob]

    def faults(cmd: c.RunSagaJob, uow: AbstractUnitOfWork) -> Any:
        if cmd.kind == "release_inventory":
            raise TransientFailure("inventory service unreachable")
        if cmd.kind == "create_prescription" and cmd.saga_id == "o-dead":
            raise RuntimeError("a bug in the prescription adapter")
        return real(cmd, uow)

    app.bus.handlers[c.RunSagaJob] = faults
    app.bus.handle(c.SetInventory(sku="IBUPROFEN", on_hand=5))
    place_order(app, "o-done")
    place_order(app, "o-parked", country="ZZ")
    place_order(app, "o-dead")
    run_jobs(app)


def test_stuck_sagas_are_the_parked_and_those_whose_job_died(make_app: MakeApp) -> None:
    app = make_app(max_attempts=2, max_job_failures=1)
    _scenario_with_stuck_sagas(app)
    catch_up(app)

    stuck, cursor = views.list_sagas(app, "stuck", 10, None)
    assert cursor is None
    by_id = {s["saga_id"]: s for s in stuck}
    assert list(by_id) == ["o-dead", "o-parked"]
    assert all(s["stuck"] for s in stuck)

    parked = by_id["o-parked"]
    assert (parked["status"], parked["reason"], parked["job"]) == (
        "compensation_failed",
        "unsupported_destination",
        None,
    )
    dead = by_id["o-dead"]
    assert dead["status"] == "running"
    assert dead["job"]["kind"] == "create_prescription"
    assert dead["job"]["status"] == "dead"
    assert "a bug in the prescription adapter" in dead["job"]["last_error"]

    everything, _ = views.list_sagas(app, None, 10, None)
    assert {s["saga_id"]: s["stuck"] for s in everything} == {
        "o-done": False,
        "o-parked": True,
        "o-dead": True,
    }
    assert [s["saga_id"] for s in views.list_sagas(app, "completed", 10, None)[0]] == ["o-done"]
    assert [s["saga_id"] for s in views.list_sagas(app, "compensation_failed", 10, None)[0]] == [
        "o-parked"
    ]

    detail = views.saga_detail(app, "o-parked")
    assert detail is not None and detail["stuck"]
    assert detail["parked_error"] == "inventory service unreachable"
    assert detail["pending_compensations"] == [
        {"name": "release_inventory", "undoes": "reserve_inventory"},
        {"name": "cancel_prescription", "undoes": "create_prescription"},
    ]
    release = {s["name"]: s for s in detail["steps"]}["reserve_inventory"]
    assert release["status"] == "compensation_failed"
    assert release["compensation_attempts"] == 2
    assert views.saga_detail(app, "o-nobody") is None


def test_a_saga_without_progress_for_a_step_timeout_is_stuck(make_app: MakeApp) -> None:
    app = make_app(step_timeout_seconds=60)
    place_order(app, "o-quiet")  # its first job waits in the queue: no worker runs
    catch_up(app)
    assert views.list_sagas(app, "stuck", 10, None)[0] == []

    later = make_app(
        step_timeout_seconds=60, clock=FixedClock(datetime.now(UTC) + timedelta(0, 61))
    )
    stuck, _ = views.list_sagas(later, "stuck", 10, None)
    assert [(s["saga_id"], s["status"], s["job"]["status"]) for s in stuck] == [
        ("o-quiet", "running", "ready")
    ]


# --- events, projections, inventory ---------------------------------------------------------


def test_the_event_feed_pages_by_position(app: App) -> None:
    place_order(app, "o-1")
    place_order(app, "o-2")
    everything = views.events_after(app, 0, 100)
    assert len(everything) == 4 and all(set(e) == EVENT_KEYS for e in everything)

    first_two = views.events_after(app, 0, 2)
    rest = views.events_after(app, first_two[-1]["position"], 100)
    assert first_two + rest == everything
    assert views.events_after(app, everything[-1]["position"], 100) == []
    assert views.latest_events(app, 3) == everything[1:]
    assert views.latest_events(app, 10) == everything


def test_projection_status_reports_how_far_the_read_model_lags(app: App) -> None:
    place_order(app, "o-1")
    status = views.projection_status(app)["order_summaries"]
    assert status["checkpoint"] == 0
    assert status["behind"] == 2 and status["lag"] == status["head"] > 0

    catch_up(app)
    status = views.projection_status(app)["order_summaries"]
    assert status["checkpoint"] == status["head"]
    assert (status["lag"], status["behind"]) == (0, 0)


def test_inventory_shows_on_hand_reserved_and_available(app: App) -> None:
    assert views.get_inventory(app, "IBUPROFEN") is None
    app.bus.handle(c.SetInventory(sku="IBUPROFEN", on_hand=7))
    assert views.get_inventory(app, "IBUPROFEN") == {
        "sku": "IBUPROFEN",
        "on_hand": 7,
        "reserved": 0,
        "available": 7,
        "dea_schedule": None,
        "lots": [
            {"lot": "default", "on_hand": 7, "reserved": 0, "available": 7, "expires_on": None}
        ],
    }

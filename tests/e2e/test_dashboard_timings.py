"""The dashboard's JSON, from a real `fulfillment serve`, about jobs: a dead job's step is
`dead` with the command that puts it back, a step's time is split into its wait in the
queue and its run, and the queue's depth leaves the dead jobs out (they are counted
apart). The scene is in `stuck_orders.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .stuck_orders import BUG, CARRIER_LATENCY_MS, QUEUE_WAIT, StuckShop, stuck_shop
from .test_operator_cli import Cli


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StuckShop]:
    with stuck_shop(tmp_path_factory.mktemp("stuck")) as shop:
        yield shop


def timeline(shop: StuckShop, order_id: str) -> dict[str, Any]:
    with shop.server.client() as client:
        response = client.get(f"/api/dashboard/orders/{order_id}/timeline")
    assert response.status_code == 200, response.text
    return dict(response.json())


def steps(shop: StuckShop, order_id: str) -> dict[str, dict[str, Any]]:
    return {step["name"]: step for step in timeline(shop, order_id)["steps"]}


def test_a_dead_jobs_step_is_dead_with_the_command_that_puts_it_back(shop: StuckShop) -> None:
    shipment = steps(shop, shop.dead)["initiate_shipment"]
    assert shipment["status"] == "dead"  # not "running": no worker will take it
    assert shipment["attempts"] == 0  # the job died before the step recorded an attempt
    assert shipment["job"]["status"] == "dead" and shipment["job"]["failures"] == 1
    assert shipment["job"]["last_error"] == BUG
    assert shipment["action"] == f"fulfillment jobs retry {shop.dead}"
    others = steps(shop, shop.dead)
    assert others["reserve_inventory"]["status"] == "succeeded"
    assert all(s["action"] is None for n, s in others.items() if n != "initiate_shipment")

    # The command is the real one: it puts the job back, and the step runs again.
    cli = Cli(shop.app.settings.database_url, shop.server.log_path.parent)
    assert "is back in the queue" in cli("jobs", "retry", shop.dead)
    revived = steps(shop, shop.dead)["initiate_shipment"]
    assert (revived["status"], revived["action"]) == ("running", None)
    # No worker runs here: the job is taken and dies again, for the other tests.
    (job,) = shop.app.queue.claim(1, "test-worker", 30)
    assert job.saga_id == shop.dead, job
    shop.app.queue.fail(job, BUG, 0.0, dead=True)
    assert steps(shop, shop.dead)["initiate_shipment"]["status"] == "dead"


def test_a_steps_time_is_its_wait_in_the_queue_then_its_run(shop: StuckShop) -> None:
    timed = steps(shop, shop.timed)
    first = timed["create_prescription"]
    # Due at the saga's start, it waited for a worker; its run took a moment.
    assert first["queued_ms"] >= QUEUE_WAIT * 1000, first
    assert first["run_ms"] < first["queued_ms"], first
    shipment = timed["initiate_shipment"]
    assert shipment["run_ms"] >= CARRIER_LATENCY_MS, shipment  # the carrier's call
    assert shipment["queued_ms"] < CARRIER_LATENCY_MS, shipment  # run on at once
    for name, step in timed.items():
        if step["kind"] == "wait" or not step["attempts"]:
            assert step["queued_ms"] is None and step["run_ms"] is None, step
            continue
        # The whole is the wait in the queue, the run and any retries' backoff.
        whole = step["queued_ms"] + step["run_ms"] + step["backoff_ms"]
        assert abs(whole - step["duration_ms"]) < 0.01, (name, step)
        for attempt in step["attempt_log"]:
            assert attempt["due_at"] <= attempt["started_at"] <= attempt["at"], attempt


def test_the_queue_depth_counts_the_jobs_to_run_and_the_dead_ones_apart(shop: StuckShop) -> None:
    with shop.server.client() as client:
        queue = client.get("/api/dashboard/overview").json()["queue"]
    assert queue["dead"] == 1, queue
    assert queue["depth"] == queue["ready"] + queue["scheduled"] + queue["running"], queue

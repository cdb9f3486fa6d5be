"""The operator commands, run as a user runs them: `fulfillment ...` in a subprocess.

Orders are placed and worked on in this process (no projector runs here), on a SQLite
file the commands then read through FULFILLMENT_DATABASE_URL: each read command must
bring the projection up to date by itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import saga_testkit
from saga_testkit import failing_job

from fulfillment import views
from fulfillment.adapters.db import create_nullpool_engine
from fulfillment.adapters.migrate import migrate
from fulfillment.bootstrap import App, bootstrap
from fulfillment.config import Settings
from fulfillment.domain.errors import TransientFailure
from fulfillment.domain.values import OrderLine
from fulfillment.service_layer import commands as c

SCRIPT = Path(sys.executable).with_name("fulfillment")


class Cli:
    """Runs `fulfillment` against one database, and an in-process App on the same one."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        self.url = url
        self.cwd = tmp_path
        self.env = {
            **os.environ,
            "FULFILLMENT_DATABASE_URL": url,
            "FULFILLMENT_RETRY_BACKOFF_SECONDS": "0.01",
            "FULFILLMENT_MAX_ATTEMPTS": "2",
            "COLUMNS": "220",  # wide tables: nothing truncated
            "NO_COLOR": "1",
            "PYTHONIOENCODING": "utf-8",  # box-drawing characters, whatever the locale
        }

    def command(self, *args: str) -> list[str]:
        if SCRIPT.exists():
            return [str(SCRIPT), *args]
        return [sys.executable, "-m", "fulfillment.entrypoints.cli", *args]

    def __call__(self, *args: str, expect: int = 0) -> str:
        done = subprocess.run(
            self.command(*args),
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == expect, (done.returncode, done.stdout, done.stderr)
        return done.stdout + done.stderr

    def app(self, **overrides: Any) -> App:
        values: dict[str, Any] = {
            "database_url": self.url,
            "master_key": os.environ["FULFILLMENT_MASTER_KEY"],  # the subprocesses' key
            "retry_backoff_seconds": 0.01,
            "max_attempts": 2,
            "max_job_failures": 1,
            "poll_interval_seconds": 0.01,
        }
        values.update(overrides)
        return bootstrap(Settings(**values))


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Cli]:
    url = f"sqlite:///{tmp_path / 'ops.db'}"
    engine = create_nullpool_engine(url)
    migrate(engine)
    engine.dispose()
    yield Cli(url, tmp_path)


@pytest.fixture
def app(cli: Cli) -> Iterator[App]:
    app = cli.app()
    yield app
    app.close()


# The assertions name this SKU and quantity.
place_order = partial(saga_testkit.place_order, sku="PARACETAMOL", qty=2)
run_jobs = partial(saga_testkit.run_jobs, concurrency=2)


def park_an_order(app: App, order_id: str) -> Any:
    """The order goes nowhere and its reservation's release keeps failing: it parks."""
    restore = failing_job(
        app, "release_inventory", lambda: TransientFailure("inventory service unreachable")
    )
    place_order(app, order_id, country="ZZ")
    run_jobs(app)
    return restore


def line_of(output: str, text: str) -> str:
    """The one output line that mentions `text`."""
    lines = [line for line in output.splitlines() if text in line]
    assert len(lines) == 1, (text, output)
    return lines[0]


def field(output: str, name: str) -> str:
    """The value of a `name  value` line of `orders show`."""
    lines = [line for line in output.splitlines() if line.startswith(f"{name} ")]
    assert len(lines) == 1, (name, output)
    return lines[0][len(name) :].strip()


# --- inventory ------------------------------------------------------------------------------


def test_inventory_set_and_show_print_the_stock_level(cli: Cli, app: App) -> None:
    out = line_of(cli("inventory", "set", "PARACETAMOL", "10"), "PARACETAMOL")
    assert [cell.strip() for cell in out.split("│")[1:5]] == ["PARACETAMOL", "10", "0", "10"]
    park_an_order(app, "o-holding")  # keeps 2 units reserved

    shown = line_of(cli("inventory", "show", "PARACETAMOL"), "PARACETAMOL")
    assert [cell.strip() for cell in shown.split("│")[1:5]] == ["PARACETAMOL", "10", "2", "8"]

    refused = cli("inventory", "set", "PARACETAMOL", "1", expect=1)
    assert "below the 2 units reserved" in refused
    level = views.get_inventory(app, "PARACETAMOL")
    assert level is not None
    assert (level["on_hand"], level["reserved"], level["available"]) == (10, 2, 8)
    assert "unknown SKU 'ASPIRIN'" in cli("inventory", "show", "ASPIRIN", expect=1)


def test_inventory_lots_schedules_and_recalls(cli: Cli, app: App) -> None:
    cli("inventory", "set", "OXY-5", "4", "--dea-schedule", "ii")
    out = cli("inventory", "lot", "OXY-5", "B-2", "6", "--expires-on", "2099-01-31")
    assert [c.strip() for c in line_of(out, "OXY-5").split("│")[1:6]] == [
        "OXY-5",
        "10",
        "0",
        "10",
        "II",
    ]
    assert [c.strip() for c in line_of(out, "B-2").split("│")[1:6]] == [
        "B-2",
        "2099-01-31",
        "6",
        "0",
        "6",
    ]
    # The schedule stays unless given; `none` clears it.
    shown = cli("inventory", "show", "OXY-5")
    assert line_of(shown, "OXY-5").split("│")[5].strip() == "II"
    assert [c.strip() for c in line_of(shown, "default").split("│")[1:6]] == [
        "default",
        "-",
        "4",
        "0",
        "4",
    ]
    cleared = cli("inventory", "set", "OXY-5", "4", "--dea-schedule", "none")
    assert line_of(cleared, "OXY-5").split("│")[5].strip() == "-"

    with app.uow() as uow:  # an order's reservation takes the lot with an expiry first
        uow.inventory.reserve("o-recalled", (OrderLine("OXY-5", 3),), today=date(2030, 1, 1))
        uow.commit()
    recall = cli("inventory", "recall", "OXY-5", "B-2")
    assert [c.strip() for c in line_of(recall, "o-recalled").split("│")[1:4]] == [
        "o-recalled",
        "3",
        "pending",
    ]
    assert "no order took units of lot default" in cli("inventory", "recall", "OXY-5", "default")

    assert "below the 3 units reserved of lot B-2" in cli(
        "inventory", "lot", "OXY-5", "B-2", "2", "--expires-on", "2099-01-31", expect=1
    )
    for args, message in (
        (("set", "OXY-5", "1", "--dea-schedule", "VI"), "--dea-schedule must be one of"),
        (("lot", "OXY-5", "B-3", "1", "--expires-on", "2099-02-30"), "--expires-on must be"),
        (("lot", "OXY-5", "B-3", "1", "--expires-on", "31/01/2099"), "--expires-on must be"),
        (("lot", "OXY-5", "B\x01", "1", "--expires-on", "2099-01-31"), "must not contain U+0001"),
        (("lot", "OXY-5", "x" * 201, "1", "--expires-on", "2099-01-31"), "lot must be 1 to 200"),
    ):
        assert message in cli("inventory", *args, expect=2)
    assert "without an expiry date" in cli(
        "inventory", "lot", "OXY-5", "default", "1", "--expires-on", "2099-01-31", expect=1
    )
    assert "unknown lot 'B-9' of SKU 'OXY-5'" in cli(
        "inventory", "recall", "OXY-5", "B-9", expect=1
    )


# --- orders ---------------------------------------------------------------------------------


def test_orders_list_shows_fresh_rows_newest_first(cli: Cli, app: App) -> None:
    app.bus.handle(c.SetInventory(sku="PARACETAMOL", on_hand=10))
    place_order(app, "o-fulfilled")
    place_order(app, "o-nowhere", country="ZZ")
    run_jobs(app)
    place_order(app, "o-waiting")

    out = cli("orders", "list")
    lines = out.splitlines()
    rows = [line_of(out, oid) for oid in ("o-waiting", "o-nowhere", "o-fulfilled")]
    assert [lines.index(r) for r in rows] == sorted(lines.index(r) for r in rows)
    assert "pending" in rows[0] and "running" in rows[0]
    assert "cancelled" in rows[1] and "unsupported_destination" in rows[1]
    assert "fulfilled" in rows[2] and "completed" in rows[2] and "PARACETAMOL x2" in rows[2]

    cancelled = cli("orders", "list", "--status", "cancelled")
    assert "o-nowhere" in cancelled
    assert "o-fulfilled" not in cancelled and "o-waiting" not in cancelled

    first = cli("orders", "list", "--limit", "2")
    assert "o-fulfilled" not in first
    cursor = line_of(first, "--cursor").split("--cursor")[1].strip()
    assert "o-fulfilled" in cli("orders", "list", "--limit", "2", "--cursor", cursor)

    assert "unknown order status 'lost'" in cli("orders", "list", "--status", "lost", expect=2)


def test_orders_show_prints_the_steps_the_shipment_and_the_events(cli: Cli, app: App) -> None:
    app.bus.handle(c.SetInventory(sku="PARACETAMOL", on_hand=10))
    place_order(app, "o-1")
    run_jobs(app)

    out = cli("orders", "show", "o-1")
    assert field(out, "status") == "fulfilled"
    assert field(out, "shipment").endswith("(in_transit)")  # picked up as booked
    for step in ("create_prescription", "reserve_inventory", "initiate_shipment"):
        assert "succeeded" in line_of(out, f" {step} ")
    for event in ("OrderCreated", "InventoryReserved", "ShipmentInitiated", "OrderFulfilled"):
        assert event in line_of(out, f" {event} ")

    assert "unknown order 'o-2'" in cli("orders", "show", "o-2", expect=1)


# --- sagas ----------------------------------------------------------------------------------


def test_a_parked_saga_is_listed_as_stuck_and_retried(cli: Cli, app: App) -> None:
    app.bus.handle(c.SetInventory(sku="PARACETAMOL", on_hand=10))
    place_order(app, "o-fine")
    real_release = park_an_order(app, "o-parked")

    stuck = cli("sagas", "list", "--status", "stuck")
    row = line_of(stuck, "o-parked")
    assert "compensation_failed" in row and "stuck" in row and "stock:undo-failed" in row
    assert "o-fine" not in stuck
    shown = cli("orders", "show", "o-parked")
    assert field(shown, "status") == "needs_attention"
    assert field(shown, "parked on") == "inventory service unreachable"

    out = cli("sagas", "retry", "o-parked")
    assert "release_inventory" in out and "retried" in out
    assert views.saga_detail(app, "o-parked")["status"] == "compensating"  # type: ignore[index]

    real_release()  # the inventory service is back
    run_jobs(app)
    assert "cancelled" in line_of(cli("orders", "list"), "o-parked")
    assert "nothing to retry" in cli("sagas", "retry", "o-parked", expect=1)
    assert "unknown saga 'o-nobody'" in cli("sagas", "retry", "o-nobody", expect=1)


def test_sagas_retry_puts_a_dead_job_back_in_the_queue(cli: Cli, app: App) -> None:
    restore = failing_job(
        app, "create_prescription", lambda: RuntimeError("prescription registry bug")
    )
    app.bus.handle(c.SetInventory(sku="PARACETAMOL", on_hand=10))
    place_order(app, "o-dead")
    run_jobs(app)
    row = line_of(cli("sagas", "list", "--status", "stuck"), "o-dead")
    assert "create_prescription:dead(1)" in row

    out = cli("sagas", "retry", "o-dead")
    assert "dead job create_prescription is back in the queue" in out

    restore()
    run_jobs(app)
    assert "fulfilled" in line_of(cli("orders", "list"), "o-dead")


# --- jobs -----------------------------------------------------------------------------------


def test_jobs_list_shows_a_dead_job_with_its_error_and_jobs_retry_revives_it(
    cli: Cli, app: App
) -> None:
    restore = failing_job(
        app, "create_prescription", lambda: RuntimeError("prescription registry bug")
    )
    app.bus.handle(c.SetInventory(sku="PARACETAMOL", on_hand=10))
    place_order(app, "o-dead")
    run_jobs(app)
    place_order(app, "o-waiting")  # its first job waits in the queue: no worker runs now

    dead = cli("jobs", "list", "--status", "dead")
    row = line_of(dead, "o-dead")
    assert "create_prescription" in row and "dead" in row
    assert "RuntimeError: prescription registry bug" in row
    assert "o-waiting" not in dead
    assert "queue: 1 ready, 0 running, 1 dead (2 in all)" in dead
    waiting = line_of(cli("jobs", "list"), "o-waiting")
    assert "create_prescription" in waiting and "ready" in waiting
    assert " ago " in waiting or " now " in waiting  # run_at, relative to the DB clock
    oldest = cli("jobs", "list", "--limit", "1")
    assert "o-dead" in oldest and "o-waiting" not in oldest
    assert "showing the oldest 1 of 2" in oldest
    assert "unknown job status 'lost'" in cli("jobs", "list", "--status", "lost", expect=2)

    refused = cli("jobs", "retry", "o-waiting", expect=1)
    assert "no dead job for saga 'o-waiting' (its job is ready)" in refused
    out = cli("jobs", "retry", "o-dead")
    assert "saga o-dead: dead job create_prescription is back in the queue" in out
    assert "no dead jobs" in cli("jobs", "list", "--status", "dead")

    restore()
    run_jobs(app)
    assert "fulfilled" in line_of(cli("orders", "list"), "o-dead")
    assert "no dead job for saga 'o-dead' (it has no job)" in cli(
        "jobs", "retry", "o-dead", expect=1
    )


# --- events and projections -----------------------------------------------------------------


def test_events_tail_prints_the_feed_and_follows_it(cli: Cli, app: App) -> None:
    place_order(app, "o-1")
    place_order(app, "o-2")

    last = cli("events", "tail", "--limit", "2")
    assert "order-o-1" not in last
    assert "OrderCreated" in line_of(last, "order-o-2")
    assert "OrderFulfillmentSagaStarted" in line_of(last, "saga-o-2")
    after = cli("events", "tail", "--after", "1", "--limit", "1")
    assert "saga-o-1" in after and "order-o-2" not in after

    follower = subprocess.Popen(
        cli.command("events", "tail", "--after", "3", "--follow", "--interval", "0.05"),
        env=cli.env,
        cwd=cli.cwd,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        assert "saga-o-2#1 OrderFulfillmentSagaStarted" in follower.stdout.readline()
        place_order(app, "o-3")
        assert "order-o-3#1 OrderCreated" in follower.stdout.readline()
        assert "saga-o-3#1 OrderFulfillmentSagaStarted" in follower.stdout.readline()
    finally:
        follower.terminate()
        follower.wait(10)


def test_projections_status_and_rebuild(cli: Cli, app: App) -> None:
    place_order(app, "o-1")
    place_order(app, "o-2")

    status = line_of(cli("projections", "status"), "order_summaries")
    assert [cell.strip() for cell in status.split("│")[2:6]] == ["0", "4", "4", "4"]

    out = cli("projections", "rebuild")
    assert "4 events replayed up to position 4" in out
    status = line_of(cli("projections", "status"), "order_summaries")
    assert [cell.strip() for cell in status.split("│")[2:6]] == ["4", "4", "0", "0"]
    assert views.get_order(app, "o-2") is not None

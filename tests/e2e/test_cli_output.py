"""What the operator commands print, as a user runs them: at 80 columns (the width when
the output is not a terminal) and at 200, no table loses a column or a value; `--help`
names every value by a metavar; the server's JSON logs carry no terminal colours.

One SQLite database holds orders with UUID ids in every state the tables show: fulfilled,
cancelled (compensated), parked (a compensation keeps failing), with a dead job, and just
placed. Each table-printing command runs at both widths; every column header and every
row's values must be in its output, ids whole or shortened as the dashboard shortens
them, and no other value cut ("…").
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest
import typer
from saga_testkit import failing_job

from fulfillment import views
from fulfillment.adapters.db import create_nullpool_engine
from fulfillment.adapters.migrate import migrate
from fulfillment.bootstrap import App
from fulfillment.entrypoints.cli import app as cli_app
from fulfillment.entrypoints.cli_common import items_text
from fulfillment.entrypoints.cli_tables import short_id
from fulfillment.service_layer import commands as c

from .server import start_server
from .test_operator_cli import Cli, park_an_order, place_order, run_jobs

SKU = "PARACETAMOL"
LOT = "LOT-2099-A"
WIDTHS = (80, 200)
#: The statuses drawn with an ellipsis as their icon (`sagas show`): not a cut value.
ICON_LABELS = ("\u2026 to undo", "\u2026 pending")


@dataclass
class Shop:
    """The database, the CLI on it, an App on it, and the ids of its orders."""

    cli: Cli
    app: App
    orders: dict[str, str] = field(default_factory=dict)  # what happened -> order id
    customer: str = f"cust-{uuid.uuid4()}"  # of the fulfilled order


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    folder = tmp_path_factory.mktemp("cli-output")
    url = f"sqlite:///{folder / 'shop.db'}"
    engine = create_nullpool_engine(url)
    migrate(engine)
    engine.dispose()
    cli = Cli(url, folder)
    app = cli.app()
    shop = Shop(cli, app)
    ids = {name: str(uuid.uuid4()) for name in ("fulfilled", "cancelled", "parked", "dead", "new")}
    app.bus.handle(c.SetInventory(sku=SKU, on_hand=40))
    app.bus.handle(c.SetLot(SKU, LOT, 12, date(2099, 1, 31)))  # reserved first (expires first)
    place_order(app, ids["fulfilled"], customer_id=shop.customer)
    place_order(app, ids["cancelled"], country="ZZ")
    run_jobs(app)
    park_an_order(app, ids["parked"])()
    restore = failing_job(
        app, "create_prescription", lambda: RuntimeError("prescription registry bug")
    )
    place_order(app, ids["dead"])
    run_jobs(app)
    restore()
    place_order(app, ids["new"])  # its first job waits: no worker runs now
    cli("orders", "show", ids["fulfilled"])  # an access to audit
    shop.orders = ids
    yield shop
    app.close()


def squash(text: str) -> str:
    """`text` without whitespace: a value folded onto several lines reads whole again."""
    return re.sub(r"\s+", "", text)


@dataclass
class Expected:
    headers: list[str]
    values: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # whole, or shortened (`short_id`)

    def check(self, out: str) -> None:
        flat = squash(out)
        for text in (*self.headers, *self.values):
            assert squash(text) in flat, (text, out)
        rest = out
        for label in ICON_LABELS:
            rest = rest.replace(label, "")
        for id_ in self.ids:
            assert squash(id_) in flat or squash(short_id(id_)) in flat, (id_, out)
            rest = rest.replace(short_id(id_), "")
        assert "\u2026" not in rest, f"a value was cut:\n{out}"


def run_at(cli: Cli, columns: int, *args: str) -> str:
    wide = copy.copy(cli)
    wide.env = {**cli.env, "COLUMNS": str(columns)}
    return wide(*args)


def expect_orders_list(shop: Shop) -> Expected:
    orders, _ = views.list_orders(shop.app, None, 20, None)
    expected = Expected(["order_id", "status", "saga", "reason", "items", "tracking"])
    for o in orders:
        expected.ids.append(o["order_id"])
        expected.values += [o["status"], o["saga"]["status"], o["reason"] or ""]
        expected.values.append(items_text(o["items"]))
        if o["shipment"]:
            expected.ids.append(o["shipment"]["tracking_number"])
    return expected


def event_rows(events: list[dict[str, Any]]) -> Expected:
    expected = Expected(["position", "recorded_at", "stream#version", "type", "data"])
    for e in events:
        expected.values += [str(e["position"]), e["type"], e["recorded_at"][:23]]
        expected.values.append(f"#{e['version']}")
        expected.ids.append(e["stream_id"].partition("-")[2])
    return expected


def expect_orders_show(shop: Shop) -> Expected:
    order_id = shop.orders["parked"]
    saga = views.saga_detail(shop.app, order_id)
    assert saga is not None
    expected = event_rows(views.order_events(shop.app, order_id) or [])
    expected.headers += ["step", "attempts", "compensation attempts", "errors"]
    for step in saga["steps"]:
        expected.values += [step["name"], step["status"], *step["errors"]]
    return expected


def expect_sagas_list(shop: Shop) -> Expected:
    sagas, _ = views.list_sagas(shop.app, None, 20, None)
    expected = Expected(["saga_id", "status", "stuck", "steps", "reason", "job", "updated_at"])
    for s in sagas:
        expected.ids.append(s["saga_id"])
        expected.values += [s["status"], s["reason"] or "", s["updated_at"][:19].replace("T", " ")]
        if s["job"]:
            expected.values.append(f"{s['job']['kind']}:{s['job']['status']}")
    return expected


def expect_sagas_show(shop: Shop, name: str) -> Expected:
    timeline = views.saga_timeline(shop.app, shop.orders[name])
    assert timeline is not None
    expected = event_rows(timeline["events"])
    expected.headers += ["#", "step", "status", "attempts", "started", "queued", "ran"]
    expected.headers += ["duration", "compensation, errors"]
    for step in timeline["steps"]:
        expected.values += [step["name"], step["status"]]
        expected.values += [a["error"] for a in step["attempt_log"] if a.get("error")]
    if timeline["compensation"]["started_at"]:
        expected.headers += ["event", "compensation", "undoes", "at", "took"]
        for x in timeline["compensation"]["ran"] + timeline["compensation"]["pending"]:
            expected.values += [x["event"], x["name"], x["undoes"]]
    return expected


def expect_jobs_list(shop: Shop) -> Expected:
    headers = ["id", "saga_id", "kind", "status", "run_at", "lease", "claimed_by", "claims"]
    expected = Expected([*headers, "failures", "last_error"])
    for job in views.list_jobs(shop.app, None, 20).jobs:
        expected.ids.append(job.saga_id)
        expected.values += [str(job.id), job.kind, job.status, (job.last_error or "")]
        if job.claimed_by:
            expected.ids.append(job.claimed_by)
    return expected


COUNTS = ("on_hand", "reserved", "available")


def expect_stock(shop: Shop) -> Expected:
    """The SKU's totals (`inventory set`)."""
    level = views.get_inventory(shop.app, SKU)
    assert level is not None
    return Expected(["sku", *COUNTS, "dea_schedule"], [SKU, *(str(level[n]) for n in COUNTS)])


def expect_lots(shop: Shop) -> Expected:
    """The SKU's totals and its lots (`inventory show`, `inventory lot`)."""
    level = views.get_inventory(shop.app, SKU)
    assert level is not None
    expected = expect_stock(shop)
    expected.headers += ["lot", "expires_on"]
    for lot in level["lots"]:
        expected.values += [lot["lot"], lot["expires_on"] or "-"]
        expected.values += [str(lot[n]) for n in COUNTS]
    return expected


def expect_recall(shop: Shop) -> Expected:
    orders = views.lot_orders(shop.app, SKU, LOT)
    assert orders, orders
    expected = Expected(["order_id", "quantity", "status"])
    for o in orders:
        expected.ids.append(o["order_id"])
        expected.values += [str(o["quantity"]), o["status"]]
    return expected


def expect_projections(shop: Shop) -> Expected:
    status = views.projection_status(shop.app)
    return Expected(["projection", "checkpoint", "head", "lag", "behind"], list(status))


def expect_audit(shop: Shop) -> Expected:
    ids = [shop.orders["fulfilled"], shop.customer]
    return Expected(["at (UTC)", "key", "route", "order_id", "customer_id"], ["orders show"], ids)


def expect_events_tail(shop: Shop) -> Expected:
    return event_rows(views.latest_events(shop.app, 6))


COMMANDS: dict[str, tuple[tuple[str, ...], Any]] = {
    "orders list": (("orders", "list"), expect_orders_list),
    "orders show": (("orders", "show", "{parked}"), expect_orders_show),
    "sagas list": (("sagas", "list"), expect_sagas_list),
    "sagas show (parked)": (
        ("sagas", "show", "{parked}"),
        lambda shop: expect_sagas_show(shop, "parked"),
    ),
    "sagas show (dead job)": (
        ("sagas", "show", "{dead}"),
        lambda shop: expect_sagas_show(shop, "dead"),
    ),
    "jobs list": (("jobs", "list"), expect_jobs_list),
    "events tail": (("events", "tail", "--limit", "6"), expect_events_tail),
    "inventory show": (("inventory", "show", SKU), expect_lots),
    "inventory set": (("inventory", "set", SKU, "40"), expect_stock),
    "inventory lot": (
        ("inventory", "lot", SKU, LOT, "12", "--expires-on", "2099-01-31"),
        expect_lots,
    ),
    "inventory recall": (("inventory", "recall", SKU, LOT), expect_recall),
    "projections status": (("projections", "status"), expect_projections),
    "audit list": (("audit", "list"), expect_audit),
}


@pytest.mark.parametrize("columns", WIDTHS)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_table_loses_a_column_or_a_value(shop: Shop, command: str, columns: int) -> None:
    args, expect = COMMANDS[command]
    out = run_at(shop.cli, columns, *(a.format(**shop.orders) for a in args))
    expect(shop).check(out)


def test_ids_are_whole_when_they_fit_else_shortened_unless_full_ids(shop: Shop) -> None:
    new = shop.orders["new"]
    assert new in run_at(shop.cli, 200, "orders", "list")  # the table fits: ids whole
    # 130 columns: too narrow for whole UUIDs, wide enough once they are shortened.
    shortened = run_at(shop.cli, 130, "orders", "list")
    assert short_id(new) in shortened and new not in shortened, shortened
    assert "--full-ids shows them whole" in shortened
    assert "\u2503" in shortened  # still a table
    full = run_at(shop.cli, 130, "orders", "list", "--full-ids")
    assert new in full and short_id(new) not in full, full  # as records
    assert new in run_at(shop.cli, 80, "orders", "list")  # records: whole


def test_sagas_show_says_a_dead_job_is_dead_and_how_to_retry_it(shop: Shop) -> None:
    dead = shop.orders["dead"]
    for columns in WIDTHS:
        out = squash(run_at(shop.cli, columns, "sagas", "show", dead))
        assert squash("\u2298 dead") in out
        assert squash("RuntimeError: prescription registry bug") in out
        assert squash(f"to retry: fulfillment jobs retry {dead}") in out
        assert squash("\u25cf running") not in out


# --- help -----------------------------------------------------------------------------------

#: What Typer writes for a value without a metavar, and around a required argument.
PLACEHOLDERS = re.compile(r"<(bool|int|str|float|int range|float range|path)>|\{[A-Za-z_]+\}")


def command_paths() -> dict[tuple[str, ...], bool]:
    """Every command and group of `fulfillment`, as the words that name it: is it a group?"""
    paths: dict[tuple[str, ...], bool] = {}

    def walk(command: Any, path: tuple[str, ...]) -> None:
        subcommands = getattr(command, "commands", None)
        paths[path] = bool(subcommands)
        for name, sub in (subcommands or {}).items():
            walk(sub, (*path, name))

    walk(typer.main.get_command(cli_app), ())
    return paths


def test_every_help_names_its_values_by_metavar_and_shows_examples(tmp_path: Path) -> None:
    cli = Cli(f"sqlite:///{tmp_path / 'none.db'}", tmp_path)
    paths = command_paths()
    assert not paths[("inventory", "set")] and paths[("sagas",)]
    with ThreadPoolExecutor(8) as pool:
        texts = pool.map(lambda p: run_at(cli, 80, *p, "--help"), paths)
        helps = dict(zip(paths, texts, strict=True))
    for path, text in helps.items():
        flat = " ".join(text.split())
        assert not PLACEHOLDERS.search(flat), (path, PLACEHOLDERS.findall(flat), text)
        assert "Usage: fulfillment" in flat, (path, text)
        if not paths[path]:  # a command: its help shows how to run it
            assert re.search(r"Examples?: \$ ", flat), (path, text)
    assert "fulfillment inventory set [OPTIONS] SKU ON_HAND" in helps[("inventory", "set")]
    assert "--limit -n N" in " ".join(helps[("orders", "list")].split())
    assert "--follow -f Keep" in " ".join(helps[("events", "tail")].split())  # a flag: no type


# --- logs -----------------------------------------------------------------------------------


def test_the_servers_json_logs_carry_no_colour_escapes(tmp_path: Path) -> None:
    env = {"FULFILLMENT_LOG_FORMAT": "json", "FULFILLMENT_LOG_LEVEL": "INFO"}
    with start_server(f"sqlite:///{tmp_path / 'logs.db'}", env=env, log_dir=tmp_path) as server:
        with server.client() as client:
            assert client.get("/health").status_code == 200
            assert client.get("/orders").status_code == 200
        assert httpx.get(f"{server.url}/no-such-route").status_code == 404
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    loggers = {line["logger"] for line in lines}
    assert {"uvicorn.error", "uvicorn.access"} <= loggers, loggers
    started = [line for line in lines if "Started server process" in line["event"]]
    assert started, lines  # uvicorn gives this line a `color_message`
    for line in lines:
        assert "color_message" not in line, line
        assert "\x1b" not in json.dumps(line, ensure_ascii=False), line

"""Operator commands: `fulfillment orders|sagas|jobs|events|inventory|projections ...`.

Each command bootstraps from the environment (`FULFILLMENT_*`), brings the projections
up to date with the event log before it reads them, prints Rich tables, and exits 1 with
a one-line message when the thing asked for does not exist or cannot be done.

This module holds the orders, events, inventory and projections groups; the sagas and
jobs groups are in `cli_sagas`, the audit group in `cli_audit`, what they all share in
`cli_common`. The commands that print patient data record it (`cli_audit.recording`).
"""

from __future__ import annotations

import re
import time
from datetime import date
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from fulfillment import views
from fulfillment.adapters.access_log import subjects_of
from fulfillment.adapters.projections import Projector
from fulfillment.domain.errors import DomainError
from fulfillment.domain.saga import SignalNotExpected, TooLateToCancel
from fulfillment.entrypoints import cli_common as ui
from fulfillment.entrypoints import identifiers
from fulfillment.entrypoints.api_schemas import MAX_TEXT
from fulfillment.entrypoints.cli_audit import audit_app, recording
from fulfillment.entrypoints.cli_help import Typer, cursor_option, limit_option
from fulfillment.entrypoints.cli_patient_data import customers_app, keys_app, phi_app
from fulfillment.entrypoints.cli_sagas import jobs_app, sagas_app
from fulfillment.entrypoints.cli_tables import (
    Cell,
    Column,
    FullIds,
    Id,
    print_events,
    print_table,
)
from fulfillment.service_layer import commands as c
from fulfillment.service_layer.ports import DEA_SCHEDULES, UNCHANGED, Unchanged
from fulfillment.service_layer.saga_engine import InvalidSignalPayload, NotFound, UnknownSignal

orders_app = Typer(help="Inspect orders.", no_args_is_help=True)
events_app = Typer(help="Read the event log.", no_args_is_help=True)
inventory_app = Typer(help="Show and set stock levels.", no_args_is_help=True)
projections_app = Typer(help="Read models: status and rebuild.", no_args_is_help=True)

#: (typer sub-app, command group name): what `entrypoints/cli.py` registers.
GROUPS = (
    (orders_app, "orders"),
    (sagas_app, "sagas"),
    (jobs_app, "jobs"),
    (events_app, "events"),
    (inventory_app, "inventory"),
    (projections_app, "projections"),
    (audit_app, "audit"),
    (keys_app, "keys"),
    (customers_app, "customers"),
    (phi_app, "phi"),
)


# --- orders -------------------------------------------------------------------------------
@orders_app.command("list")
def orders_list(
    status: str | None = typer.Option(
        None,
        "--status",
        "-s",
        metavar="STATUS",
        help="pending, awaiting_verification, fulfilled, delivered, returned, cancelled "
        "or needs_attention.",
    ),
    limit: int = limit_option(20),
    cursor: str | None = cursor_option(),
    full_ids: FullIds = False,
) -> None:
    """Orders, newest first.

    Examples:
    $ fulfillment orders list
    $ fulfillment orders list --status needs_attention --limit 50
    """
    with ui.operator_app() as app:
        try:
            orders, next_cursor = views.list_orders(app, status, limit, cursor)
        except views.InvalidQuery as exc:
            raise ui.fail(str(exc), 2) from exc
    columns = [Column(c) for c in ("order_id", "status", "saga", "reason", "items", "tracking")]
    rows = [
        [
            Id(o["order_id"]),
            ui.styled(o["status"]),
            ui.styled(o["saga"]["status"]),
            o["reason"] or "",
            ui.items_text(o["items"]),
            Id(o["shipment"]["tracking_number"]) if o["shipment"] else "",
        ]
        for o in orders
    ]
    if orders:
        title = f"Orders{f' ({status})' if status else ''}"
        print_table(columns, rows, title=title, full_ids=full_ids)
    else:
        ui.console.print("no orders")
    ui.next_page(next_cursor)


@orders_app.command("show")
def orders_show(
    order_id: str = typer.Argument(..., metavar="ORDER_ID", help="The order id."),
    full_ids: FullIds = False,
) -> None:
    """One order: its saga's steps (attempts, errors), shipment, job and events.

    Example:
    $ fulfillment orders show ord-1004
    """
    with ui.operator_app() as app, recording(app, "orders show") as record:
        order = views.get_order(app, order_id)
        saga = views.saga_detail(app, order_id)
        events = views.order_events(app, order_id) or []
        if order is not None:
            record({order_id: subjects_of(events).get(order_id)})
    if order is None:
        raise ui.fail(f"unknown order {order_id!r}")

    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("order", order["order_id"])
    head.add_row("status", ui.styled(order["status"]))
    head.add_row("reason", order["reason"] or "-")
    head.add_row("items", ui.items_text(order["items"]))
    shipment = order["shipment"]
    head.add_row(
        "shipment",
        f"{shipment['tracking_number']} ({shipment['status']})" if shipment else "-",
    )
    verification = order["verification"]
    head.add_row(
        "verification",
        verification["status"] + (f" by {verification['by']}" if verification["by"] else ""),
    )
    if order["lots"]:
        head.add_row(
            "lots", ", ".join(f"{x['sku']} {x['lot']} x{x['quantity']}" for x in order["lots"])
        )
    if saga is not None:
        head.add_row("saga", ui.styled(saga["status"]))
        if saga["failed_step"]:
            head.add_row("failed step", saga["failed_step"])
        if saga["parked_error"]:
            head.add_row("parked on", Text(saga["parked_error"], style="red"))
        if saga["pending_compensations"]:
            head.add_row("to undo", ", ".join(p["name"] for p in saga["pending_compensations"]))
        head.add_row("job", ui.job_text(saga["job"]))
        if saga["job"] and saga["job"]["last_error"]:
            head.add_row("job error", Text(saga["job"]["last_error"], style="red"))
        if saga["stuck"]:
            head.add_row("stuck", Text("yes: `fulfillment sagas retry` may help", style="red"))
        head.add_row("started", saga["started_at"] or "-")
        head.add_row("finished", saga["finished_at"] or "-")
    ui.console.print(head)

    if saga is not None:
        columns = [
            Column("step"),
            Column("status"),
            Column("attempts", right=True),
            Column("compensation attempts", right=True),
            Column("errors"),
        ]
        rows = [
            [
                step["name"],
                ui.styled(step["status"]),
                str(step["attempts"]),
                str(step["compensation_attempts"]),
                "\n".join(step["errors"]),
            ]
            for step in saga["steps"]
        ]
        print_table(columns, rows, title="Saga steps")
    print_events(events, title="Events", full_ids=full_ids)


DECISIONS = ("approve", "reject", "request_clarification")
CANCEL_REASONS = ("customer_request", "prescriber_cancelled")


@orders_app.command("verify")
def orders_verify(
    order_id: str = typer.Argument(..., metavar="ORDER_ID", help="The order id."),
    decision: str = typer.Argument(
        ..., metavar="DECISION", help="approve, reject or request_clarification."
    ),
    pharmacist_id: str = typer.Option(
        ..., "--pharmacist-id", metavar="ID", help="Who decides (recorded with the decision)."
    ),
    note: str | None = typer.Option(
        None, "--note", metavar="TEXT", help="At most 2000 characters."
    ),
    reason: str | None = typer.Option(None, "--reason", metavar="TEXT", help="Why (a rejection)."),
) -> None:
    """Record a pharmacist's decision on an order awaiting verification (sent as `cli`).

    Examples:
    $ fulfillment orders verify ord-1 approve --pharmacist-id ph-12 --note "ok"
    $ fulfillment orders verify ord-2 reject --pharmacist-id ph-12 --reason "dup"
    """
    if decision not in DECISIONS:
        raise ui.fail(f"DECISION must be one of {', '.join(DECISIONS)}, not {decision!r}", 2)
    payload: dict[str, Any] = {"pharmacist_id": pharmacist_id}
    payload |= {k: v for k, v in (("note", note), ("reason", reason)) if v is not None}
    with ui.operator_app(catch_up=False) as app:
        try:
            app.bus.handle(c.SignalSaga(order_id, decision, payload, "cli"), sender="cli")
        except InvalidSignalPayload as exc:
            problems = "; ".join(f"{e['loc'][-1]}: {e['message']}" for e in exc.errors)
            raise ui.fail(f"{exc}: {problems}", 2) from exc
        except (SignalNotExpected, UnknownSignal) as exc:
            raise ui.fail(f"order {order_id} is not waiting for a pharmacist's decision") from exc
        except NotFound as exc:
            raise ui.fail(f"unknown order {order_id!r}") from exc
        status = (views.current_order(app, order_id) or {}).get("status")
    ui.console.print(f"order {order_id}: {decision} recorded; status {status}")


@orders_app.command("cancel")
def orders_cancel(
    order_id: str = typer.Argument(..., metavar="ORDER_ID", help="The order id."),
    reason: str = typer.Option(
        "customer_request",
        "--reason",
        metavar="REASON",
        help="customer_request or prescriber_cancelled.",
    ),
    note: str | None = typer.Option(
        None, "--note", metavar="TEXT", help="At most 2000 characters."
    ),
) -> None:
    """Stop an order until the carrier has picked it up: the saga compensates after the
    step in progress (sent as `cli`).

    Examples:
    $ fulfillment orders cancel ord-2
    $ fulfillment orders cancel ord-2 --reason prescriber_cancelled
    """
    if reason not in CANCEL_REASONS:
        raise ui.fail(f"--reason must be one of {', '.join(CANCEL_REASONS)}, not {reason!r}", 2)
    if note is not None and len(note) > 2000:
        raise ui.fail("--note is at most 2000 characters", 2)
    with ui.operator_app(catch_up=False) as app:
        try:
            accepted = app.bus.handle(c.CancelSaga(order_id, reason, note, "cli"), sender="cli")
        except TooLateToCancel as exc:
            raise ui.fail(str(exc)) from exc
        except NotFound as exc:
            raise ui.fail(f"unknown order {order_id!r}") from exc
    when = {
        "now": "it compensates now",
        "after_step": "it compensates after its step in progress",
        "already": "it was cancelling already",
        "replayed": "already asked with this key",
    }
    ui.console.print(f"order {order_id}: cancellation accepted; {when[accepted.value]}")


# --- events -------------------------------------------------------------------------------


@events_app.command("tail")
def events_tail(
    after: int | None = typer.Option(
        None,
        "--after",
        "-a",
        min=0,
        metavar="POSITION",
        help="Start after this position, 0 or more (default: the last N).",
    ),
    limit: int = limit_option(20),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new events."),
    interval: float = typer.Option(
        0.5,
        "--interval",
        min=0.01,
        metavar="SECONDS",
        help="With --follow: seconds between two looks, at least 0.01.",
    ),
    full_ids: FullIds = False,
) -> None:
    """The global event feed, in commit order.

    Examples:
    $ fulfillment events tail --limit 3
    $ fulfillment events tail --after 35 --follow
    """
    with (
        ui.operator_app(catch_up=False) as app,
        recording(app, "events tail", background=follow) as record,
    ):
        if after is None:
            events = views.latest_events(app, limit)
        else:
            events = views.events_after(app, after, limit)
        record(subjects_of(events))
        if not follow:
            if events:
                print_events(events, full_ids=full_ids)
            else:
                ui.console.print("no events")
            return
        last = events[-1]["position"] if events else (after or 0)
        for e in events:
            _print_event(e)
        try:
            while True:
                batch = views.events_after(app, last, views.MAX_LIMIT)
                record(subjects_of(batch))
                for e in batch:
                    _print_event(e)
                if batch:
                    last = batch[-1]["position"]
                else:
                    time.sleep(interval)
        except KeyboardInterrupt:
            return


def _print_event(e: dict[str, Any]) -> None:
    line = Text(f"{e['position']:>8} ")
    line.append(e["recorded_at"][:23], style="dim")
    line.append(f" {e['stream_id']}#{e['version']} ")
    line.append(e["type"], style="bold")
    line.append(f" {ui.compact_json(e['data'], 120)}", style="dim")
    ui.console.print(line, soft_wrap=True)


# --- inventory ----------------------------------------------------------------------------

_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
#: `--dea-schedule` values: a schedule, or `none` (not a controlled substance).
_SCHEDULES = {**{schedule: schedule for schedule in DEA_SCHEDULES}, "NONE": None}
#: Columns of counts, right-aligned.
_COUNTS = ("on_hand", "reserved", "available", "quantity")


def _name(kind: str, value: str) -> str:
    """`value` in NFC if it is a valid SKU or lot name (as the API takes them, by the
    rules of entrypoints/identifiers.py), else exit 2 saying why."""
    if not 1 <= len(value) <= MAX_TEXT:
        raise ui.fail(f"{kind} must be 1 to {MAX_TEXT} characters", 2)
    try:
        return identifiers.identifier(value, MAX_TEXT)
    except identifiers.InvalidText as exc:
        raise ui.fail(f"{kind} {exc}", 2) from exc


def _schedule(value: str | None) -> str | Unchanged | None:
    if value is None:
        return UNCHANGED
    if value.upper() not in _SCHEDULES:
        raise ui.fail(f"--dea-schedule must be one of {', '.join(DEA_SCHEDULES)} or none", 2)
    return _SCHEDULES[value.upper()]


def _date(value: str) -> date:
    try:
        if not _ISO_DATE.fullmatch(value):
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError as exc:
        raise ui.fail(
            f"--expires-on must be a real date written YYYY-MM-DD, got {value!r}", 2
        ) from exc


def _columns(*headers: str) -> list[Column]:
    """Columns named `headers`, the counts right-aligned."""
    return [Column(header, right=header in _COUNTS) for header in headers]


def _print_stock(level: dict[str, Any]) -> None:
    row = [str(level[count]) for count in ("on_hand", "reserved", "available")]
    print_table(
        _columns("sku", "on_hand", "reserved", "available", "dea_schedule"),
        [[level["sku"], *row, level["dea_schedule"] or "-"]],
    )


def _print_lots(lots: list[dict[str, Any]]) -> None:
    """The SKU's lots, first expiry first (`default`, without one, last)."""
    rows = [
        [
            lot["lot"],
            lot["expires_on"] or "-",
            *(str(lot[count]) for count in ("on_hand", "reserved", "available")),
        ]
        for lot in lots
    ]
    columns = _columns("lot", "expires_on", "on_hand", "reserved", "available")
    print_table(columns, rows, title="Lots")


@inventory_app.command("set")
def inventory_set(
    sku: str = typer.Argument(..., metavar="SKU", help="The SKU."),
    on_hand: int = typer.Argument(
        ..., min=0, metavar="ON_HAND", help="Units of lot `default` (no expiry), 0 or more."
    ),
    dea_schedule: str | None = typer.Option(
        None,
        "--dea-schedule",
        metavar="SCHEDULE",
        help="II, III, IV or V: a controlled substance; none: not one. Default: unchanged.",
    ),
) -> None:
    """Set a SKU's units without expiry (lot `default`; never below what is reserved of
    it), and its DEA schedule.

    Examples:
    $ fulfillment inventory set AMOX-500 40
    $ fulfillment inventory set OXY-5 12 --dea-schedule II
    """
    command = c.SetInventory(_name("SKU", sku), on_hand, _schedule(dea_schedule))
    with ui.operator_app(catch_up=False) as app:
        try:
            level = app.bus.handle(command)
        except DomainError as exc:
            raise ui.fail(str(exc)) from exc
    _print_stock(views.stock_view(level))


@inventory_app.command("lot")
def inventory_lot(
    sku: str = typer.Argument(..., metavar="SKU", help="The SKU."),
    lot: str = typer.Argument(..., metavar="LOT", help="The lot (batch) number."),
    on_hand: int = typer.Argument(
        ..., min=0, metavar="ON_HAND", help="Units of the lot on the shelf, 0 or more."
    ),
    expires_on: str = typer.Option(
        ..., "--expires-on", metavar="DATE", help="The lot's expiry date, YYYY-MM-DD."
    ),
) -> None:
    """Set a lot's units and expiry date (never below what is reserved of it); creates
    the lot, and the SKU.

    Example:
    $ fulfillment inventory lot AMOX-500 B-7 12 --expires-on 2027-03-31
    """
    sku = _name("SKU", sku)
    command = c.SetLot(sku, _name("lot", lot), on_hand, _date(expires_on))
    with ui.operator_app(catch_up=False) as app:
        try:
            app.bus.handle(command)
        except DomainError as exc:
            raise ui.fail(str(exc)) from exc
        level = views.get_inventory(app, sku)
    assert level is not None
    _print_stock(level)
    _print_lots(level["lots"])


@inventory_app.command("show")
def inventory_show(sku: str = typer.Argument(..., metavar="SKU", help="The SKU.")) -> None:
    """A SKU's units on hand, reserved and available, its DEA schedule, and its lots.

    Example:
    $ fulfillment inventory show AMOX-500
    """
    with ui.operator_app(catch_up=False) as app:
        level = views.get_inventory(app, sku)
    if level is None:
        raise ui.fail(f"unknown SKU {sku!r}")
    _print_stock(level)
    if level["lots"]:
        _print_lots(level["lots"])
    else:
        ui.console.print("no lots")


@inventory_app.command("recall")
def inventory_recall(
    sku: str = typer.Argument(..., metavar="SKU", help="The SKU."),
    lot: str = typer.Argument(..., metavar="LOT", help="The lot recalled."),
    full_ids: FullIds = False,
) -> None:
    """Every order that took units of the lot, in the order they reserved, with its status.

    Example:
    $ fulfillment inventory recall AMOX-500 B-7
    """
    with ui.operator_app() as app:
        orders = views.lot_orders(app, sku, lot)
    if orders is None:
        raise ui.fail(f"unknown lot {lot!r} of SKU {sku!r}")
    if not orders:
        ui.console.print(f"no order took units of lot {lot}")
        return
    rows: list[list[Cell]] = [
        [Id(o["order_id"]), str(o["quantity"]), ui.styled(o["status"])] for o in orders
    ]
    columns = _columns("order_id", "quantity", "status")
    print_table(columns, rows, title=f"Orders with units of lot {lot}", full_ids=full_ids)


# --- projections --------------------------------------------------------------------------


@projections_app.command("status")
def projections_status() -> None:
    """Each projection's checkpoint, the head of the log, and the lag between them.

    Example:
    $ fulfillment projections status
    """
    with ui.operator_app(catch_up=False) as app:
        status = views.projection_status(app)
    counts = ("checkpoint", "head", "lag", "behind")
    rows = [[name, *(str(s[count]) for count in counts)] for name, s in status.items()]
    print_table([Column("projection"), *(Column(c, right=True) for c in counts)], rows)


@projections_app.command("rebuild")
def projections_rebuild() -> None:
    """Empty the read models and replay the whole event log into them.

    Example:
    $ fulfillment projections rebuild
    """
    with ui.operator_app(catch_up=False) as app:
        projector = Projector(app.engine, app.mapper)
        started = time.perf_counter()
        events = projector.rebuild()
        elapsed = time.perf_counter() - started
        checkpoint = projector.checkpoint()
    ui.console.print(
        f"rebuilt {projector.name}: {events} events replayed "
        f"up to position {checkpoint} in {elapsed:.2f} s"
    )

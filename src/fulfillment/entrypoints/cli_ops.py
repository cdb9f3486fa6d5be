"""Operator commands: `fulfillment orders|sagas|jobs|events|inventory|projections ...`.

Each command bootstraps from the environment (`FULFILLMENT_*`), brings the projections
up to date with the event log before it reads them, prints Rich tables, and exits 1 with
a one-line message when the thing asked for does not exist or cannot be done.

This module holds the orders, events, inventory and projections groups; the sagas and
jobs groups are in `cli_sagas`, what they all share in `cli_common`.
"""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.table import Table
from rich.text import Text

from fulfillment import views
from fulfillment.adapters.projections import Projector
from fulfillment.domain.errors import InvalidInventory
from fulfillment.entrypoints import cli_common as ui
from fulfillment.entrypoints.cli_sagas import jobs_app, sagas_app
from fulfillment.service_layer import commands as c

orders_app = typer.Typer(help="Inspect orders.", no_args_is_help=True)
events_app = typer.Typer(help="Read the event log.", no_args_is_help=True)
inventory_app = typer.Typer(help="Show and set stock levels.", no_args_is_help=True)
projections_app = typer.Typer(help="Read models: status and rebuild.", no_args_is_help=True)

#: (typer sub-app, command group name): what `entrypoints/cli.py` registers.
GROUPS = (
    (orders_app, "orders"),
    (sagas_app, "sagas"),
    (jobs_app, "jobs"),
    (events_app, "events"),
    (inventory_app, "inventory"),
    (projections_app, "projections"),
)


# --- orders -------------------------------------------------------------------------------
@orders_app.command("list")
def orders_list(
    status: str | None = typer.Option(
        None, "--status", "-s", help="pending, fulfilled, cancelled or needs_attention."
    ),
    limit: int = typer.Option(20, "--limit", "-n", min=1, max=views.MAX_LIMIT),
    cursor: str | None = typer.Option(None, "--cursor", help="From the previous page."),
) -> None:
    """Orders, newest first."""
    with ui.operator_app() as app:
        try:
            orders, next_cursor = views.list_orders(app, status, limit, cursor)
        except views.InvalidQuery as exc:
            raise ui.fail(str(exc), 2) from exc
    table = Table(title=f"Orders{f' ({status})' if status else ''}", title_justify="left")
    table.add_column("order_id", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("saga", no_wrap=True)
    table.add_column("reason")
    table.add_column("items")
    table.add_column("tracking", no_wrap=True)
    for o in orders:
        table.add_row(
            o["order_id"],
            ui.styled(o["status"]),
            ui.styled(o["saga"]["status"]),
            o["reason"] or "",
            ui.items_text(o["items"]),
            o["shipment"]["tracking_number"] if o["shipment"] else "",
        )
    ui.console.print(table if orders else "no orders")
    ui.next_page(next_cursor)


@orders_app.command("show")
def orders_show(order_id: str = typer.Argument(..., help="The order id.")) -> None:
    """One order: its saga's steps (attempts, errors), shipment, job and events."""
    with ui.operator_app() as app:
        order = views.get_order(app, order_id)
        saga = views.saga_detail(app, order_id)
        events = views.order_events(app, order_id) or []
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
        steps = Table(title="Saga steps", title_justify="left")
        steps.add_column("step", no_wrap=True)
        steps.add_column("status")
        steps.add_column("attempts", justify="right")
        steps.add_column("compensation attempts", justify="right")
        steps.add_column("errors", overflow="fold")
        for step in saga["steps"]:
            steps.add_row(
                step["name"],
                ui.styled(step["status"]),
                str(step["attempts"]),
                str(step["compensation_attempts"]),
                "\n".join(step["errors"]),
            )
        ui.console.print(steps)
    ui.console.print(ui.events_table(events, title="Events"))


# --- events -------------------------------------------------------------------------------


@events_app.command("tail")
def events_tail(
    after: int | None = typer.Option(
        None, "--after", "-a", min=0, help="Start after this position (default: the last N)."
    ),
    limit: int = typer.Option(20, "--limit", "-n", min=1, max=views.MAX_LIMIT),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new events."),
    interval: float = typer.Option(0.5, "--interval", min=0.01, help="Poll interval (s)."),
) -> None:
    """The global event feed, in commit order."""
    with ui.operator_app(catch_up=False) as app:
        if after is None:
            events = views.latest_events(app, limit)
        else:
            events = views.events_after(app, after, limit)
        if not follow:
            ui.console.print(ui.events_table(events) if events else "no events")
            return
        last = events[-1]["position"] if events else (after or 0)
        for e in events:
            _print_event(e)
        try:
            while True:
                batch = views.events_after(app, last, views.MAX_LIMIT)
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


def _stock_table(level: dict[str, Any]) -> Table:
    table = Table()
    for column in ("sku", "on_hand", "reserved", "available"):
        table.add_column(column, justify="left" if column == "sku" else "right")
    table.add_row(
        level["sku"], str(level["on_hand"]), str(level["reserved"]), str(level["available"])
    )
    return table


@inventory_app.command("set")
def inventory_set(
    sku: str = typer.Argument(..., help="The SKU."),
    on_hand: int = typer.Argument(..., min=0, help="Units on the shelf."),
) -> None:
    """Set a SKU's units on hand (never below what is reserved)."""
    with ui.operator_app(catch_up=False) as app:
        try:
            level = app.bus.handle(c.SetInventory(sku=sku, on_hand=on_hand))
        except InvalidInventory as exc:
            raise ui.fail(str(exc)) from exc
    ui.console.print(
        _stock_table(
            {
                "sku": level.sku,
                "on_hand": level.on_hand,
                "reserved": level.reserved,
                "available": level.available,
            }
        )
    )


@inventory_app.command("show")
def inventory_show(sku: str = typer.Argument(..., help="The SKU.")) -> None:
    """A SKU's units on hand, reserved and available."""
    with ui.operator_app(catch_up=False) as app:
        level = views.get_inventory(app, sku)
    if level is None:
        raise ui.fail(f"unknown SKU {sku!r}")
    ui.console.print(_stock_table(level))


# --- projections --------------------------------------------------------------------------


@projections_app.command("status")
def projections_status() -> None:
    """Each projection's checkpoint, the head of the log, and the lag between them."""
    with ui.operator_app(catch_up=False) as app:
        status = views.projection_status(app)
    table = Table()
    for column in ("projection", "checkpoint", "head", "lag", "behind"):
        table.add_column(column, justify="left" if column == "projection" else "right")
    for name, s in status.items():
        table.add_row(name, str(s["checkpoint"]), str(s["head"]), str(s["lag"]), str(s["behind"]))
    ui.console.print(table)


@projections_app.command("rebuild")
def projections_rebuild() -> None:
    """Empty the read models and replay the whole event log into them."""
    with ui.operator_app(catch_up=False) as app:
        projector = Projector(app.engine, app.mapper)
        started = time.perf_counter()
        events = projector.rebuild()
        elapsed = time.perf_counter() - started
        checkpoint = projector.checkpoint()
    ui.console.print(
        f"rebuilt [bold]{projector.name}[/bold]: {events} events replayed "
        f"up to position {checkpoint} in {elapsed:.2f} s"
    )

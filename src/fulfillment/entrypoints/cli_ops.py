"""Operator commands: `fulfillment orders|sagas|events|inventory|projections ...`.

Each command bootstraps from the environment (`FULFILLMENT_*`), brings the projections
up to date with the event log before it reads them, prints Rich tables, and exits 1 with
a one-line message when the thing asked for does not exist or cannot be done.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import DBAPIError

from fulfillment import views
from fulfillment.adapters.projections import Projector
from fulfillment.bootstrap import App, bootstrap
from fulfillment.config import Settings
from fulfillment.domain.errors import DomainError, InvalidInventory
from fulfillment.domain.status import SagaStatus
from fulfillment.entrypoints.dashboard_data import order_timeline
from fulfillment.service_layer import commands as c

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)

orders_app = typer.Typer(help="Inspect orders.", no_args_is_help=True)
sagas_app = typer.Typer(help="Inspect sagas; retry parked ones.", no_args_is_help=True)
events_app = typer.Typer(help="Read the event log.", no_args_is_help=True)
inventory_app = typer.Typer(help="Show and set stock levels.", no_args_is_help=True)
projections_app = typer.Typer(help="Read models: status and rebuild.", no_args_is_help=True)

#: (typer sub-app, command group name): what `entrypoints/cli.py` registers.
GROUPS = (
    (orders_app, "orders"),
    (sagas_app, "sagas"),
    (events_app, "events"),
    (inventory_app, "inventory"),
    (projections_app, "projections"),
)

_STATUS_STYLE = {
    "pending": "cyan",
    "running": "cyan",
    "fulfilled": "green",
    "completed": "green",
    "succeeded": "green",
    "initiated": "green",
    "cancelled": "yellow",
    "compensating": "yellow",
    "compensated": "yellow",
    "failed": "red",
    "needs_attention": "bold red",
    "compensation_failed": "bold red",
    "dead": "bold red",
}
_SHORT_STEP = {
    "create_prescription": "rx",
    "reserve_inventory": "stock",
    "initiate_shipment": "ship",
}
_SHORT_STATUS = {
    "pending": "-",
    "succeeded": "ok",
    "failed": "failed",
    "compensated": "undone",
    "compensation_failed": "undo-failed",
}


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error line and return the Exit to raise."""
    errors.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


@contextmanager
def operator_app(*, catch_up: bool = True) -> Iterator[App]:
    """An App from the environment; with `catch_up`, projections are fresh before reads."""
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise fail(f"configuration: {exc}", 2) from exc
    app = bootstrap(settings, pool_size=2)
    try:
        if catch_up:
            Projector(app.engine, app.mapper).catch_up(timeout=120)
        yield app
    except DBAPIError as exc:
        raise fail(
            f"database: {str(exc.orig).strip().splitlines()[0]} "
            "(is the schema up to date? run `fulfillment migrate`)"
        ) from exc
    finally:
        app.close()


def styled(status: str | None) -> Text:
    if status is None:
        return Text("-", style="dim")
    return Text(status, style=_STATUS_STYLE.get(status, ""))


def _items(items: list[dict[str, Any]]) -> str:
    return ", ".join(f"{i['sku']} x{i['quantity']}" for i in items)


def _steps(steps: list[dict[str, Any]]) -> Text:
    """`rx:ok stock:undone ship:failed(3)`: each step, its status, attempts beyond one."""
    text = Text()
    for n, step in enumerate(steps):
        if n:
            text.append(" ")
        text.append(f"{_SHORT_STEP.get(step['name'], step['name'])}:")
        status = step["status"]
        text.append(_SHORT_STATUS.get(status, status), style=_STATUS_STYLE.get(status, ""))
        if step["attempts"] > 1:
            text.append(f"({step['attempts']})")
    return text


def _job(job: dict[str, Any] | None) -> Text:
    """`kind:status`, and `(failures)` once it has failed."""
    if job is None:
        return Text("-", style="dim")
    text = Text(f"{job['kind']}:")
    text.append(job["status"], style=_STATUS_STYLE.get(job["status"], ""))
    if job["failures"]:
        text.append(f"({job['failures']})")
    return text


def _data(data: Any, width: int = 90) -> str:
    raw = json.dumps(data, separators=(",", ":"), sort_keys=True)
    return raw if len(raw) <= width else raw[: width - 3] + "..."


def _events_table(events: list[dict[str, Any]], title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("position", justify="right", no_wrap=True)
    table.add_column("recorded_at", no_wrap=True)
    table.add_column("stream#version", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("data", no_wrap=True)
    streams = [f"{e['stream_id']}#{e['version']}" for e in events]
    # The data column gets what the others leave of the terminal (JSON cut short).
    fixed = 8 + 23 + 16  # position, recorded_at; borders and padding of 5 columns
    fixed += max((len(s) for s in streams), default=14)
    fixed += max((len(e["type"]) for e in events), default=4)
    width = max(10, console.width - fixed)
    for e, stream in zip(events, streams, strict=True):
        table.add_row(
            str(e["position"]),
            e["recorded_at"][:23],
            stream,
            e["type"],
            _data(e["data"], width),
        )
    return table


def _next_page(cursor: str | None) -> None:
    if cursor is not None:
        console.print(f"more: --cursor {cursor}", style="dim")


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
    with operator_app() as app:
        try:
            orders, next_cursor = views.list_orders(app, status, limit, cursor)
        except views.InvalidQuery as exc:
            raise fail(str(exc), 2) from exc
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
            styled(o["status"]),
            styled(o["saga"]["status"]),
            o["reason"] or "",
            _items(o["items"]),
            o["shipment"]["tracking_number"] if o["shipment"] else "",
        )
    console.print(table if orders else "no orders")
    _next_page(next_cursor)


@orders_app.command("show")
def orders_show(order_id: str = typer.Argument(..., help="The order id.")) -> None:
    """One order: its saga's steps (attempts, errors), shipment, job and events."""
    with operator_app() as app:
        order = views.get_order(app, order_id)
        saga = views.saga_detail(app, order_id)
        events = views.order_events(app, order_id) or []
    if order is None:
        raise fail(f"unknown order {order_id!r}")

    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("order", order["order_id"])
    head.add_row("status", styled(order["status"]))
    head.add_row("reason", order["reason"] or "-")
    head.add_row("items", _items(order["items"]))
    shipment = order["shipment"]
    head.add_row(
        "shipment",
        f"{shipment['tracking_number']} ({shipment['status']})" if shipment else "-",
    )
    if saga is not None:
        head.add_row("saga", styled(saga["status"]))
        if saga["failed_step"]:
            head.add_row("failed step", saga["failed_step"])
        if saga["parked_error"]:
            head.add_row("parked on", Text(saga["parked_error"], style="red"))
        if saga["pending_compensations"]:
            head.add_row("to undo", ", ".join(p["name"] for p in saga["pending_compensations"]))
        head.add_row("job", _job(saga["job"]))
        if saga["job"] and saga["job"]["last_error"]:
            head.add_row("job error", Text(saga["job"]["last_error"], style="red"))
        if saga["stuck"]:
            head.add_row("stuck", Text("yes: `fulfillment sagas retry` may help", style="red"))
        head.add_row("started", saga["started_at"] or "-")
        head.add_row("finished", saga["finished_at"] or "-")
    console.print(head)

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
                styled(step["status"]),
                str(step["attempts"]),
                str(step["compensation_attempts"]),
                "\n".join(step["errors"]),
            )
        console.print(steps)
    console.print(_events_table(events, title="Events"))


# --- sagas --------------------------------------------------------------------------------


@sagas_app.command("list")
def sagas_list(
    status: str | None = typer.Option(
        None,
        "--status",
        "-s",
        help="running, compensating, completed, compensated, compensation_failed or stuck.",
    ),
    limit: int = typer.Option(20, "--limit", "-n", min=1, max=views.MAX_LIMIT),
    cursor: str | None = typer.Option(None, "--cursor", help="From the previous page."),
) -> None:
    """Sagas, newest first; `--status stuck` lists those that need an operator."""
    with operator_app() as app:
        try:
            sagas, next_cursor = views.list_sagas(app, status, limit, cursor)
        except views.InvalidQuery as exc:
            raise fail(str(exc), 2) from exc
    table = Table(title=f"Sagas{f' ({status})' if status else ''}", title_justify="left")
    table.add_column("saga_id", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("stuck")
    table.add_column("steps", no_wrap=True)
    table.add_column("reason")
    table.add_column("job", no_wrap=True)
    table.add_column("updated_at", no_wrap=True)
    for s in sagas:
        table.add_row(
            s["saga_id"],
            styled(s["status"]),
            Text("stuck", style="bold red") if s["stuck"] else Text(""),
            _steps(s["steps"]),
            s["reason"] or "",
            _job(s["job"]),
            s["updated_at"][:19].replace("T", " "),
        )
    console.print(table if sagas else "no sagas")
    _next_page(next_cursor)


_ICON = {
    "succeeded": "\u2713",
    "failed": "\u2715",
    "compensated": "\u21ba",
    "compensation_failed": "!",
    "running": "\u25cf",
    "pending": "\u2026",
    "skipped": "\u2013",
}
_UNDO = {
    "done": ("\u21ba compensated", "yellow"),
    "running": ("\u25cf undoing", "cyan"),
    "pending": ("\u2026 to undo", "cyan"),
    "failed": ("! undo failed", "bold red"),
}


def _duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.1f} ms" if ms < 10 else f"{ms:.0f} ms"
    return f"{ms / 1000:.2f} s" if ms < 60_000 else f"{ms / 60_000:.1f} min"


def _offset(start: str | None, at: str | None) -> str:
    """`+12 ms`: how long after the saga started."""
    if start is None or at is None:
        return "-"
    delta = datetime.fromisoformat(at) - datetime.fromisoformat(start)
    return "+" + _duration(delta.total_seconds() * 1000)


def _step_status(step: dict[str, Any]) -> Text:
    """`✓ succeeded → ↺ compensated`, `✕ failed`, ... in status colours."""
    undo = step["compensation"]
    if undo is None:
        status = step["status"]
        return Text(f"{_ICON.get(status, '')} {status}", style=_STATUS_STYLE.get(status, "dim"))
    label, style = _UNDO[undo["status"]]
    text = Text("\u2713 succeeded", style="green")
    text.append(" \u2192 ", style="dim")
    text.append(label, style=style)
    return text


def _step_notes(step: dict[str, Any], start: str | None) -> Text:
    notes = Text()
    undo = step["compensation"]
    if undo is not None:
        verb = "undone by" if undo["status"] == "done" else "to undo:"
        notes.append(f"{verb} ")
        notes.append(undo["event"], style="yellow")
        if undo["at"]:
            notes.append(f" at {_offset(start, undo['at'])}", style="dim")
    for attempt in step["attempt_log"] + (undo["attempts"] if undo else []):
        if attempt.get("error"):
            if notes:
                notes.append("\n")
            retried = attempt["outcome"] == "retried"
            notes.append(f"attempt {attempt['attempt']}: ", style="bold red")
            notes.append(attempt["error"], style="red")
            if retried:
                notes.append(f" (retried in {_duration(attempt['retry_in_seconds'] * 1000)})")
    if step["job"]:
        if notes:
            notes.append("\n")
        notes.append("job ", style="dim")
        notes.append_text(_job(step["job"]))
    return notes


@sagas_app.command("show")
def sagas_show(saga_id: str = typer.Argument(..., help="The saga (= order) id.")) -> None:
    """One saga as a timeline: steps, compensations in the order they ran, then events."""
    with operator_app(catch_up=False) as app:
        timeline = order_timeline(app, saga_id)
    if timeline is None:
        raise fail(f"unknown saga {saga_id!r}")
    order, saga = timeline["order"], timeline["saga"]
    start = saga["started_at"]

    title = Text("Saga ", style="bold")
    title.append(saga["saga_id"], style="bold")
    title.append("  ")
    title.append_text(styled(saga["status"]))
    if saga["reason"]:
        title.append(f"  ({saga['reason']})", style="dim")
    if saga["stuck"]:
        title.append("  stuck: `fulfillment sagas retry` may help", style="bold red")
    console.print(title)
    took = f"took {_duration(saga['duration_ms'])}" if saga["finished_at"] else "still running"
    summary = Text(f"order {order['status']} \u00b7 customer {order['customer_id']} \u00b7 ")
    summary.append(f"{_items(order['items'])} \u00b7 started {start or '-'} \u00b7 {took}")
    console.print(summary, style="dim")
    if saga["parked_error"]:
        console.print(Text(f"parked on: {saga['parked_error']}", style="red"))

    steps = Table(title="Steps", title_justify="left", title_style="bold")
    steps.add_column("#", justify="right")
    steps.add_column("step", no_wrap=True)
    steps.add_column("status", no_wrap=True)
    steps.add_column("attempts", justify="right")
    steps.add_column("started", justify="right", no_wrap=True)
    steps.add_column("duration", justify="right", no_wrap=True)
    steps.add_column("compensation, errors", overflow="fold")
    for n, step in enumerate(timeline["steps"], 1):
        steps.add_row(
            str(n),
            step["name"],
            _step_status(step),
            str(step["attempts"]),
            _offset(start, step["started_at"]),
            _duration(step["duration_ms"]),
            _step_notes(step, start),
        )
    console.print(steps)

    compensation = timeline["compensation"]
    if compensation["started_at"] is None:
        console.print(Text("Compensations: none", style="bold"), Text("(no step failed)"))
    else:
        table = Table(
            title="Compensations (last in, first out, in the order they ran)",
            title_justify="left",
            title_style="bold",
        )
        table.add_column("#", justify="right")
        table.add_column("event", no_wrap=True)
        table.add_column("compensation", no_wrap=True)
        table.add_column("undoes", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("at", justify="right", no_wrap=True)
        table.add_column("took", justify="right", no_wrap=True)
        table.add_column("attempts", justify="right")
        ran, pending = compensation["ran"], compensation["pending"]
        for n, c in enumerate(ran, 1):
            table.add_row(
                str(n),
                Text(c["event"], style="yellow"),
                c["name"],
                c["undoes"],
                Text("done", style="green"),
                _offset(start, c["finished_at"]),
                _duration(c["duration_ms"]),
                str(sum(1 for a in c["attempts"] if a["attempt"])),
            )
        for n, c in enumerate(pending, len(ran) + 1):
            label, style = _UNDO[c["status"]]
            table.add_row(
                str(n), c["event"], c["name"], c["undoes"], Text(label, style=style), "-", "-", "-"
            )
        if not ran and not pending:
            table.add_row("", Text("nothing to undo: the first step failed", style="dim"))
        console.print(table)
    console.print(_events_table(timeline["events"], title="Events"))


@sagas_app.command("retry")
def sagas_retry(saga_id: str = typer.Argument(..., help="The saga (= order) id.")) -> None:
    """Retry a parked saga's compensation, or put its dead job back in the queue."""
    with operator_app(catch_up=False) as app:
        saga = views.saga_detail(app, saga_id)
        if saga is None:
            raise fail(f"unknown saga {saga_id!r}")
        job = saga["job"]
        if job is not None and job["status"] == "dead":
            if not app.queue.retry_dead(saga_id):
                raise fail(f"the dead job of saga {saga_id} changed meanwhile; look again")
            console.print(
                f"saga {saga_id}: dead job [bold]{job['kind']}[/bold] is back in the queue; "
                "a worker will run it"
            )
            return
        if saga["status"] != SagaStatus.COMPENSATION_FAILED.value:
            raise fail(
                f"saga {saga_id} is {saga['status']}"
                f"{' with its job ' + job['status'] if job else ''}: nothing to retry"
            )
        pending = saga["pending_compensations"][0]["name"]
        try:
            app.bus.handle(c.RetrySagaCompensation(saga_id=saga_id))
        except DomainError as exc:
            raise fail(str(exc)) from exc
    console.print(
        f"saga {saga_id}: compensation [bold]{pending}[/bold] retried; "
        "the saga is compensating again and a worker will run it"
    )


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
    with operator_app(catch_up=False) as app:
        if after is None:
            events = views.latest_events(app, limit)
        else:
            events = views.events_after(app, after, limit)
        if not follow:
            console.print(_events_table(events) if events else "no events")
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
    line.append(f" {_data(e['data'], 120)}", style="dim")
    console.print(line, soft_wrap=True)


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
    with operator_app(catch_up=False) as app:
        try:
            level = app.bus.handle(c.SetInventory(sku=sku, on_hand=on_hand))
        except InvalidInventory as exc:
            raise fail(str(exc)) from exc
    console.print(
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
    with operator_app(catch_up=False) as app:
        level = views.get_inventory(app, sku)
    if level is None:
        raise fail(f"unknown SKU {sku!r}")
    console.print(_stock_table(level))


# --- projections --------------------------------------------------------------------------


@projections_app.command("status")
def projections_status() -> None:
    """Each projection's checkpoint, the head of the log, and the lag between them."""
    with operator_app(catch_up=False) as app:
        status = views.projection_status(app)
    table = Table()
    for column in ("projection", "checkpoint", "head", "lag", "behind"):
        table.add_column(column, justify="left" if column == "projection" else "right")
    for name, s in status.items():
        table.add_row(name, str(s["checkpoint"]), str(s["head"]), str(s["lag"]), str(s["behind"]))
    console.print(table)


@projections_app.command("rebuild")
def projections_rebuild() -> None:
    """Empty the read models and replay the whole event log into them."""
    with operator_app(catch_up=False) as app:
        projector = Projector(app.engine, app.mapper)
        started = time.perf_counter()
        events = projector.rebuild()
        elapsed = time.perf_counter() - started
        checkpoint = projector.checkpoint()
    console.print(
        f"rebuilt [bold]{projector.name}[/bold]: {events} events replayed "
        f"up to position {checkpoint} in {elapsed:.2f} s"
    )

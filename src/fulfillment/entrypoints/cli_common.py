"""What the operator commands share: consoles, errors, bootstrapping and Rich rendering.

The command modules (`cli_ops`, `cli_sagas`) use these through the module
(`ui.console.print(...)`), so there is one console to redirect, in tests or elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import DBAPIError

from fulfillment.adapters.patient_data import PatientDataLocked
from fulfillment.adapters.projections import Projector
from fulfillment.bootstrap import App, bootstrap
from fulfillment.config import Settings

# No markup: what the commands print is data ("[erased]", ids with brackets), shown as is;
# styles come from Text objects.
console = Console(highlight=False, markup=False)
errors = Console(stderr=True, highlight=False, markup=False)

#: The colour of each status, whichever kind of thing has it (order, saga, step, job).
STATUS_STYLE = {
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


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error line and return the Exit to raise."""
    errors.print(Text.assemble(("error:", "red"), " ", message))
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
    except PatientDataLocked as exc:
        raise fail(str(exc)) from exc
    except DBAPIError as exc:
        raise fail(
            f"database: {str(exc.orig).strip().splitlines()[0]} "
            "(is the schema up to date? run `fulfillment migrate`)"
        ) from exc
    finally:
        app.close()


def styled(status: str | None) -> Text:
    """A status in its colour; `-` for none."""
    if status is None:
        return Text("-", style="dim")
    return Text(status, style=STATUS_STYLE.get(status, ""))


def items_text(items: list[dict[str, Any]]) -> str:
    """`AMOX-500 x2, ATOR-20 x1`: an order's lines."""
    return ", ".join(f"{i['sku']} x{i['quantity']}" for i in items)


def job_text(job: dict[str, Any] | None) -> Text:
    """`kind:status`, and `(failures)` once it has failed."""
    if job is None:
        return Text("-", style="dim")
    text = Text(f"{job['kind']}:")
    text.append(job["status"], style=STATUS_STYLE.get(job["status"], ""))
    if job["failures"]:
        text.append(f"({job['failures']})")
    return text


def cut(text: str, width: int) -> str:
    """`text` if it fits in `width` characters, else its start and `...`."""
    return text if len(text) <= width else text[: width - 3] + "..."


def compact_json(data: Any, width: int = 90) -> str:
    """`data` as one line of JSON, cut to `width`."""
    return cut(json.dumps(data, separators=(",", ":"), sort_keys=True), width)


def events_table(events: list[dict[str, Any]], title: str | None = None) -> Table:
    """Events in commit order, their JSON payloads cut to what the terminal leaves."""
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
            compact_json(e["data"], width),
        )
    return table


def next_page(cursor: str | None) -> None:
    """Print where the next page starts, if there is one."""
    if cursor is not None:
        console.print(f"more: --cursor {cursor}", style="dim")

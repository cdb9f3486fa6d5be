"""What the operator commands share: consoles, errors, bootstrapping and Rich rendering.

The command modules (`cli_ops`, `cli_sagas`) use these through the module
(`ui.console.print(...)`), so there is one console to redirect, in tests or elsewhere.
"""

from __future__ import annotations

import getpass
import json
import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.text import Text
from sqlalchemy.exc import DBAPIError

from fulfillment.adapters.db_startup import DatabaseProblem, check_schema, describe
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


def cli_sender() -> str:
    """Who an operator command acts as, in the events' metadata: `cli:<user>`."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print an error line and return the Exit to raise."""
    errors.print(Text.assemble(("error:", "red"), " ", message), soft_wrap=True)
    return typer.Exit(code)


_tracebacks = False


def show_tracebacks(on: bool = True) -> bool:
    """`--debug` (before the command, or after `migrate`, `serve`, `worker`): whether
    errors come with their traceback from now on."""
    global _tracebacks
    _tracebacks = on
    return on


def debugging() -> bool:
    """`--debug` was given, or FULFILLMENT_LOG_LEVEL=debug is set."""
    return _tracebacks or os.environ.get("FULFILLMENT_LOG_LEVEL", "").strip().lower() == "debug"


def database_failure(exc: DBAPIError | DatabaseProblem, url: str, advice: str = "") -> typer.Exit:
    """Print why the database at `url` cannot be used, in one line (after the traceback
    when `debugging`), and return the Exit to raise. `advice` follows an error that is
    not about reaching the database (a missing table, say)."""
    if debugging():
        traceback.print_exception(exc)
    problem = describe(exc, url)
    return fail(f"database: {problem}{advice if problem.kind == 'other' else ''}")


@contextmanager
def database_errors(url: str, advice: str = "") -> Iterator[None]:
    """A database that cannot be used ends the command with one line (`database_failure`)."""
    try:
        yield
    except (DBAPIError, DatabaseProblem) as exc:
        raise database_failure(exc, url, advice) from exc


@contextmanager
def operator_app(*, catch_up: bool = True) -> Iterator[App]:
    """An App from the environment; with `catch_up`, projections are fresh before reads."""
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        raise fail(f"configuration: {exc}", 2) from exc
    url = settings.database_url
    with database_errors(url):
        check_schema(url)  # before the App: it would create an SQLite file and its key file
    app = bootstrap(settings, pool_size=2)
    try:
        with database_errors(url, " (is the schema up to date? run `fulfillment migrate`)"):
            if catch_up:
                Projector(app.engine, app.mapper).catch_up(timeout=120)
            yield app
    except PatientDataLocked as exc:
        raise fail(str(exc)) from exc
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


def next_page(cursor: str | None) -> None:
    """Print where the next page starts, if there is one."""
    if cursor is not None:
        console.print(f"more: --cursor {cursor}", style="dim")

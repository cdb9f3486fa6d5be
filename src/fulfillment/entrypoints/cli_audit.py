"""The access audit of patient data from the command line: `fulfillment audit list`.

Also what the commands that print patient data (`orders show`, `events tail`, `sagas
show`) record it with (`recording`): the same `access_log` rows as the API's
(adapters/access_log.py), with the key name `cli:<OS user>` and the command as route,
written before the command exits.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import typer

from fulfillment.adapters.access_log import AccessLog, list_accesses
from fulfillment.bootstrap import App
from fulfillment.entrypoints import cli_common as ui
from fulfillment.entrypoints.cli_help import Typer, limit_option
from fulfillment.entrypoints.cli_tables import Cell, Column, FullIds, Id, print_table

audit_app = Typer(help="The access audit of patient data.", no_args_is_help=True)

#: `--since` as a span back from now: a number and a unit.
_SPAN = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhdw])\s*")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

Record = Callable[[Mapping[str, str | None]], None]


@contextmanager
def recording(app: App, command: str, *, background: bool = False) -> Iterator[Record]:
    """A function that records the orders (order id -> customer id) whose patient data
    `command` prints; every record is written when the block ends. `background`: also
    while it runs (a command that follows the log until Ctrl-C)."""
    access_log = AccessLog(app.engine)
    if background:
        access_log.start()
    key_name = ui.cli_sender()  # the name its operator actions are recorded with, too
    try:
        yield lambda subjects: access_log.record_all(key_name, command, subjects)
    finally:
        access_log.close()


def parse_since(value: str, now: datetime) -> datetime:
    """`--since`: an ISO 8601 date or date and time (UTC unless it has an offset), or a
    span back from `now` (`90s`, `15m`, `24h`, `7d`, `2w`). ValueError otherwise."""
    span = _SPAN.fullmatch(value)
    if span is not None:
        amount, unit = span.groups()
        return now - timedelta(**{_UNITS[unit]: float(amount)})
    at = datetime.fromisoformat(value.strip())
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


@audit_app.command("list")
def audit_list(
    customer: str | None = typer.Option(
        None, "--customer", "-c", metavar="ID", help="Only this customer's records."
    ),
    key: str | None = typer.Option(
        None, "--key", "-k", metavar="NAME", help="Only this API key's (or `cli:<user>`'s)."
    ),
    since: str | None = typer.Option(
        None,
        "--since",
        metavar="WHEN",
        help="From this time on: ISO 8601 (UTC unless it says), or back from now: 15m, 24h, 7d.",
    ),
    limit: int = limit_option(100),
    full_ids: FullIds = False,
) -> None:
    """Who read patient data, newest first: the key, the route or command, the order and
    the customer.

    Examples:
    $ fulfillment audit list
    $ fulfillment audit list --customer cust-42 --since 24h
    $ fulfillment audit list --key cli:maria --since 2026-11-25T19:42 --limit 10
    """
    start = None
    if since is not None:
        try:
            start = parse_since(since, datetime.now(UTC))
        except (ValueError, OverflowError) as exc:
            raise ui.fail(
                f"--since must be an ISO 8601 date or time, or a span like 15m, 24h or 7d; "
                f"got {since!r}",
                2,
            ) from exc
    with ui.operator_app(catch_up=False) as app:
        rows = list_accesses(
            app.engine, customer_id=customer, key_name=key, since=start, limit=limit + 1
        )
    more, rows = len(rows) > limit, rows[:limit]
    filters = [f"customer {customer}" if customer else "", f"key {key}" if key else ""]
    filters.append(f"since {start.isoformat(timespec='seconds')}" if start else "")
    shown = ", ".join(f for f in filters if f)
    cells: list[list[Cell]] = [
        [
            row.at.isoformat(sep=" ", timespec="milliseconds")[:23],
            row.key_name,
            row.route,
            Id(row.order_id) if row.order_id else "-",
            Id(row.customer_id) if row.customer_id else "-",
        ]
        for row in rows
    ]
    if rows:
        columns = [Column(h) for h in ("at (UTC)", "key", "route", "order_id", "customer_id")]
        title = f"Access log{f' ({shown})' if shown else ''}"
        print_table(columns, cells, title=title, full_ids=full_ids)
    else:
        ui.console.print("no records")
    if more:
        ui.console.print(f"showing the newest {limit}: --limit N for more", style="dim")

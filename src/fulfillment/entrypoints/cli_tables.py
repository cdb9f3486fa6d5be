"""The operator commands' tables, which never lose a column, whatever the width.

Rich squeezes a table wider than the terminal (80 columns when the output is not a
terminal) until its columns read "…" or vanish. `print_table` never lets it; it prints

1. the table, when it fits;
2. else the table with its ids shortened as the dashboard shortens them
   (`ord-7d4e…0008`: the first 8 and the last 4 characters of an id longer than 13),
   when that fits and the command was not given `--full-ids`; a line under it says so;
3. else one record per row: a `column  value` line for each column, every value whole
   (a long one folds onto the next lines).

A `fill` column (an event's JSON, a job's last error) gets what the other columns leave
of the width, and its values are cut to it with `...`: the only values ever cut.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from fulfillment.entrypoints import cli_common as ui

#: Ids longer than this are shortened to their first 8 and last 4 characters
#: (static/app.js `shortId`).
SHORT_ID_OVER = 13
#: The `--full-ids` option of the commands whose tables show ids.
FullIds = Annotated[
    bool,
    typer.Option("--full-ids", help="Show ids whole, never shortened to fit the width."),
]


def short_id(value: str) -> str:
    """`ord-7d4e…0008`: an id as the dashboard shows it (whole up to 13 characters)."""
    if len(value) <= SHORT_ID_OVER:
        return value
    return f"{value[:8]}\u2026{value[-4:]}"


@dataclass(frozen=True)
class Id:
    """A cell holding an id, between fixed text: `saga-` + id + `#3`."""

    value: str
    before: str = ""
    after: str = ""

    def shown(self, short: bool) -> str:
        return f"{self.before}{short_id(self.value) if short else self.value}{self.after}"


@dataclass(frozen=True)
class Column:
    header: str
    right: bool = False
    #: (at least, at most) characters: the column takes what the others leave of the
    #: width (up to `at most`, None: all of it), and its values are cut to that; the
    #: table needs at least that many.
    fill: tuple[int, int | None] | None = None


Cell = str | Text | Id


def stream_id(stream: str, version: int | None = None) -> Id:
    """`saga-<id>#<version>`: an event stream's id (`<kind>-<aggregate id>`), the
    aggregate's id the part shortened."""
    kind, dash, aggregate = stream.partition("-")
    if not dash:
        return Id(stream)
    return Id(aggregate, f"{kind}-", "" if version is None else f"#{version}")


def print_table(
    columns: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
    *,
    title: str | None = None,
    title_style: str | None = None,
    full_ids: bool = False,
) -> None:
    """Print `rows` on `cli_common.console`: a table if it fits (with shortened ids
    unless `full_ids`), else one record per row."""
    console = ui.console
    shortens = not full_ids and any(
        isinstance(cell, Id) and short_id(cell.value) != cell.value for row in rows for cell in row
    )
    for short in (False, True) if shortens else (False,):
        table = _table(columns, rows, short, console.width, title, title_style)
        if table is not None:
            console.print(table)
            if short:
                console.print("ids shortened to fit: --full-ids shows them whole", style="dim")
            return
    _print_records(columns, rows, title, title_style)


def _shown(cell: Cell, short: bool) -> str | Text:
    return cell.shown(short) if isinstance(cell, Id) else cell


def _cut(cell: str | Text, width: int) -> str | Text:
    if isinstance(cell, Text):
        return Text(ui.cut(cell.plain, width), style=cell.style)
    return ui.cut(cell, width)


def _width(renderable: RenderableType) -> int:
    """How wide `renderable` is when nothing limits it (a table: nothing wrapped)."""
    options = ui.console.options.update_width(1_000_000)
    return ui.console.measure(renderable, options=options).maximum


def _build(
    columns: Sequence[Column],
    rows: Sequence[Sequence[str | Text]],
    title: str | None,
    title_style: str | None,
) -> Table:
    table = Table(title=title, title_justify="left", title_style=title_style)
    for column in columns:
        table.add_column(column.header, justify="right" if column.right else "left", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


def _table(
    columns: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
    short: bool,
    width: int,
    title: str | None,
    title_style: str | None,
) -> Table | None:
    """The table, its fill column cut to what is left of `width`; None if it does not fit."""
    cells = [[_shown(cell, short) for cell in row] for row in rows]
    fills = [n for n, column in enumerate(columns) if column.fill is not None]
    if fills:
        (n,) = fills  # one fill column at most
        least, most = columns[n].fill or (0, None)
        without = [[*row[:n], "", *row[n + 1 :]] for row in cells]
        room = width - _width(_build(columns, without, None, None)) + len(columns[n].header)
        if room < least:
            return None
        room = room if most is None else min(room, most)
        cells = [[*row[:n], _cut(row[n], room), *row[n + 1 :]] for row in cells]
    table = _build(columns, cells, title, title_style)
    return table if _width(table) <= width else None


def _print_records(
    columns: Sequence[Column],
    rows: Sequence[Sequence[Cell]],
    title: str | None,
    title_style: str | None,
) -> None:
    """One `column  value` block per row, a blank line between two."""
    console = ui.console
    if title:
        console.print(Text(title, style=title_style or "italic"))
    label = max(len(column.header) for column in columns)
    room = max(console.width - label - 2, 10)
    for n, row in enumerate(rows):
        if n:
            console.print()
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True, min_width=label)
        grid.add_column(overflow="fold")
        for column, cell in zip(columns, row, strict=True):
            value = _shown(cell, short=False)
            if column.fill is not None:
                most = column.fill[1]
                value = _cut(value, room if most is None else min(room, most))
            grid.add_row(column.header, value)
        console.print(grid)


def print_events(
    events: list[dict[str, Any]], title: str | None = None, *, full_ids: bool = False
) -> None:
    """Events in commit order, their JSON payloads cut to what the width leaves."""
    columns = [
        Column("position", right=True),
        Column("recorded_at"),
        Column("stream#version"),
        Column("type"),
        Column("data", fill=(10, None)),
    ]
    rows = [
        [
            str(e["position"]),
            e["recorded_at"][:23],
            stream_id(e["stream_id"], e["version"]),
            e["type"],
            ui.compact_json(e["data"], sys.maxsize),
        ]
        for e in events
    ]
    print_table(columns, rows, title=title, full_ids=full_ids)

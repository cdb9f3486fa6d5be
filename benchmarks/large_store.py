"""A large store: throughput, `GET /orders/{id}` latency and projector lag with millions
of events already in the log (issue 15, "Large stores").

1. Load (bulk inserts). A few orders (`--template-orders`, 10% compensated) are placed
   and run to the end by the product in a scratch database; their rows (events, the
   `order_summaries` read model, `prescriptions`, `inventory_reservations`,
   `reservation_lots`, `shipments`) are then copied into a fresh, migrated database again
   and again, each copy with new order ids, new uuids and tracking numbers, its
   timestamps spread over the `--days` before now and its patient data sealed again for
   its new place (so every copy opens like a real order), until `--events` events are in
   the store: `COPY` on PostgreSQL, `LOAD DATA LOCAL INFILE` on MariaDB (multi-row
   INSERTs where the server refuses local files), multi-row INSERTs on SQLite. The copies
   take the positions 1..N, below every position a later transaction gets (PostgreSQL:
   (transaction id << 16) + n, migration 0013), so they are final and in order. The
   projector's checkpoint is left at the head and the metric counters hold the copies'
   counts: a store that has been running, its sagas finished, no job left. Then VACUUM
   ANALYZE (MariaDB: ANALYZE TABLE), as autovacuum would have done.
2. Throughput, empty vs loaded: the same backlog (`--orders`, 1 worker, no carrier
   latency, the projector as a process: benchmarks/ours.py `run_backlog`) on a brand-new
   empty database and on the loaded one, alternately (`--repeats` pairs); the ratio
   loaded / empty of the medians. Only the events after the head are read to count.
3. Latency and lag at half the loaded store's throughput: `fulfillment serve --workers 0`
   (the API and its projector) and `fulfillment worker --no-projector` processes; orders
   are POSTed at half the loaded median for `--seconds`, while `GET /orders/{id}` is
   sampled (`--get-rate` per second, alternately a preloaded order and one placed during
   the run; in a process of its own) and the projector lag every 0.2 s: events after its
   checkpoint, and the age of the oldest of them (0 when caught up). The same run on an
   empty store at the same rate is the control (`--no-control` skips it).
4. The plans of the product's queries on the loaded store (EXPLAIN ANALYZE on
   PostgreSQL, EXPLAIN on MariaDB), and on PostgreSQL the sequential scans of each table
   during steps 2 and 3 (`pg_stat_user_tables`): a query that reads the whole log shows
   there. A few other reads are timed over HTTP (`GET /orders`, `/orders/{id}/events`,
   `/metrics`).

    .venv/bin/python -m benchmarks.large_store --backend postgresql
    .venv/bin/python -m benchmarks.large_store --backend postgresql --events 5000000 \\
        --keep --json large_store.json
    .venv/bin/python -m benchmarks.large_store --backend postgresql \\
        --database-url postgresql://postgres@127.0.0.1/bench_0123456789

`--keep` keeps the loaded database and prints its URL; `--database-url` runs steps 2-4 on
one loaded earlier (its master key and what was loaded are kept in its table
`bench_large_store`, so the copies' patient data still opens). `--load-only` stops after
step 1; `--repeats 0 --rate R` skips step 2.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing
import os
import queue
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    String,
    Text,
    bindparam,
    cast,
    create_engine,
    func,
    insert,
    select,
    text,
    type_coerce,
)
from sqlalchemy import Table as SqlTable
from sqlalchemy.engine import make_url
from sqlalchemy.sql import ClauseElement

from benchmarks.common import (
    BACKENDS,
    Database,
    OrderSpec,
    RssSampler,
    RunMetrics,
    fresh_database,
    latency_summary,
    pace,
    percentile,
    server_reachable,
    server_version,
    workload,
)
from benchmarks.ours import (
    MASTER_KEY,
    OursConfig,
    WorkerFleet,
    metrics_from_engine,
    place_all,
    product_env,
    run_backlog,
    setup_app,
    wait_projected,
    wait_terminal,
)
from fulfillment.adapters import tables as t
from fulfillment.adapters.db import backend_of, normalize_url, read_connection
from fulfillment.adapters.event_store import _READ_STREAM, _READ_TAIL, _read_streams, visible
from fulfillment.adapters.mapper import to_utc
from fulfillment.adapters.metric_counters import EVENT_COLUMNS
from fulfillment.adapters.patient_data import (
    PATIENT_DATA_EVENTS,
    PATIENT_DATA_FIELDS,
    PRESCRIPTION_COLUMNS,
    event_place,
    table_place,
)
from fulfillment.adapters.phi_crypto import MasterKeys, is_sealed, open_field, seal_field
from fulfillment.adapters.projections import ORDER_SUMMARIES
from fulfillment.bootstrap import App

MIX = "compensate10"
#: The tables a finished order leaves rows in, copied for every copy of the templates.
ORDER_TABLES = (
    "events",
    "order_summaries",
    "prescriptions",
    "inventory_reservations",
    "reservation_lots",
    "shipments",
)
#: Columns holding an event position (mapped to the copy's positions).
POSITION_COLUMNS = {
    ("events", "position"),
    ("order_summaries", "created_position"),
    ("order_summaries", "last_position"),
}
#: Events per load transaction.
CHUNK_EVENTS = 100_000
#: Where the load records what it loaded (and the master key its patient data needs).
_META = MetaData()
bench_meta = SqlTable(
    "bench_large_store",
    _META,
    Column("name", String(40), primary_key=True),
    Column("value", Text, nullable=False),
)

console = Console()


# --- templates: real orders, run to the end by the product -----------------------------


class Part:
    """A piece of a value that differs between copies (see `Copy`)."""

    __slots__ = ()

    def render(self, copy: Copy) -> str:
        raise NotImplementedError


class OrderPrefix(Part):
    __slots__ = ()

    def render(self, copy: Copy) -> str:
        return copy.prefix


class Uuid(Part):
    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def render(self, copy: Copy) -> str:
        return copy.uuids[self.index]


class Tracking(Part):
    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def render(self, copy: Copy) -> str:
        return f"SP{copy.number:07X}{self.index:05X}"


class Stamp(Part):
    """A timestamp, shifted by the copy's delta: ISO 8601 with offset, or naive UTC."""

    __slots__ = ("at", "naive")

    def __init__(self, at: datetime, naive: bool = False) -> None:
        self.at = at
        self.naive = naive

    def render(self, copy: Copy) -> str:
        shifted = self.at + copy.delta
        if self.naive:
            return shifted.replace(tzinfo=None).isoformat(sep=" ")
        return shifted.isoformat()


class Position(Part):
    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def render(self, copy: Copy) -> str:
        return str(copy.base + self.index + 1)


class Sealed(Part):
    """Patient data, sealed again for its place in the copy (its stream or order id)."""

    __slots__ = ("after", "before", "keys", "plaintext")

    def __init__(self, plaintext: str, before: str, after: str, keys: DataKey) -> None:
        self.plaintext = plaintext
        self.before = before
        self.after = after
        self.keys = keys

    def render(self, copy: Copy) -> str:
        place = self.before + copy.prefix + self.after
        return seal_field(self.keys.key_id, self.keys.key, self.plaintext, place)


Value = str | Part | list[str | Part] | None


@dataclass(frozen=True)
class DataKey:
    key_id: str
    key: bytes


@dataclass(frozen=True)
class Copy:
    """What one copy of the templates substitutes: its order-id prefix, uuids, the shift
    of its timestamps and its first position (minus one)."""

    number: int
    prefix: str
    uuids: list[str]
    delta: timedelta
    base: int


@dataclass
class TableTemplate:
    columns: list[str]
    rows: list[list[Value]]


@dataclass
class Templates:
    prefix: str  # the template orders' id prefix, e.g. "btplab1-"
    suffixes: list[str]  # the rest of each template order's id
    tables: dict[str, TableTemplate]
    uuid_count: int
    counters: list[dict[str, Any]]
    data_keys: list[dict[str, Any]]
    events: int
    span: timedelta  # from the first template event to the last

    @property
    def orders(self) -> int:
        return len(self.suffixes)


def copy_prefix(number: int) -> str:
    return f"h{number:07d}-"


def copy_order_id(number: int, suffix: str) -> str:
    return copy_prefix(number) + suffix


_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_STAMP = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?\+00:00"
_SEALED = r"phi1:[A-Za-z0-9_.-]+:[A-Za-z0-9_-]+"
_TRACKING = r"SP[0-9A-F]{12}"


class Compiler:
    """Turns template values into parts: literal text and what each copy substitutes."""

    def __init__(self, prefix: str, seals: dict[str, tuple[str, str, str]], key: DataKey):
        self.prefix = prefix
        self.seals = seals
        self.key = key
        self.uuids: dict[str, int] = {}
        self.tracking: dict[str, int] = {}
        self.pattern = re.compile(
            f"(?P<sealed>{_SEALED})|(?P<prefix>{re.escape(prefix)})|(?P<uuid>{_UUID})"
            f"|(?P<tracking>{_TRACKING})|(?P<stamp>{_STAMP})"
        )

    def text(self, value: str) -> str | list[str | Part]:
        parts: list[str | Part] = []
        last = 0
        for match in self.pattern.finditer(value):
            if match.start() > last:
                parts.append(value[last : match.start()])
            parts.append(self._part(match))
            last = match.end()
        if not parts:
            return value
        if last < len(value):
            parts.append(value[last:])
        return parts

    def _part(self, match: re.Match[str]) -> Part:
        token = match.group()
        kind = match.lastgroup
        if kind == "sealed":
            if token not in self.seals:
                raise ValueError(f"sealed value of unknown place: {token[:24]}...")
            return Sealed(*self.seals[token], self.key)
        if kind == "prefix":
            return OrderPrefix()
        if kind == "uuid":
            return Uuid(self.uuids.setdefault(token, len(self.uuids)))
        if kind == "tracking":
            return Tracking(self.tracking.setdefault(token, len(self.tracking)))
        return Stamp(datetime.fromisoformat(token))


def _selectable(table: SqlTable, backend: str) -> list[Any]:
    """The table's columns, JSON ones as their stored text."""
    columns: list[Any] = []
    for column in table.columns:
        if column.type.__class__.__name__ == "JSON":
            as_text = cast(column, Text) if backend == "postgresql" else type_coerce(column, Text)
            columns.append(as_text.label(column.name))
        else:
            columns.append(column)
    return columns


def read_rows(conn: Connection, name: str) -> list[dict[str, Any]]:
    table = t.metadata.tables[name]
    query = select(*_selectable(table, backend_of(conn)))
    if name == "events":
        query = query.order_by(t.events.c.position)
    return [dict(r._mapping) for r in conn.execute(query)]


def _seals(
    rows: dict[str, list[dict[str, Any]]], prefix: str, key: DataKey
) -> dict[str, tuple[str, str, str]]:
    """Every sealed value of the templates: its plaintext and its place, split around the
    order id's prefix (each copy seals it again for its own place)."""
    found: dict[str, tuple[str, str, str]] = {}

    def note(sealed: Any, place: str) -> None:
        if is_sealed(sealed):
            before, _, after = place.partition(prefix)
            found[sealed] = (open_field(key.key, sealed, place), before, after)

    for row in rows["events"]:
        if row["type"] not in PATIENT_DATA_EVENTS:
            continue
        data = json.loads(row["data"])
        for value, fields in PATIENT_DATA_FIELDS.items():
            for name in fields:
                sealed = (data.get(value) or {}).get(name)
                note(sealed, event_place(row["stream_id"], row["version"], value, name))
    for row in rows["prescriptions"]:
        for column in PRESCRIPTION_COLUMNS:
            note(row[column], table_place("prescriptions", row["order_id"], column))
    return found


def compile_templates(
    rows: dict[str, list[dict[str, Any]]],
    prefix: str,
    suffixes: list[str],
    key: DataKey,
    backend: str,
    counters: list[dict[str, Any]],
    data_keys: list[dict[str, Any]],
) -> Templates:
    compiler = Compiler(prefix, _seals(rows, prefix, key), key)
    index = {int(r["position"]): n for n, r in enumerate(rows["events"])}
    tables: dict[str, TableTemplate] = {}
    for name in ORDER_TABLES:
        columns = [c.name for c in t.metadata.tables[name].columns]
        compiled = []
        for row in rows[name]:
            values: list[Value] = []
            for column in columns:
                value = row[column]
                if (name, column) in POSITION_COLUMNS:
                    values.append(Position(index[int(value)]))
                elif value is None:
                    values.append(None)
                elif isinstance(value, datetime):
                    values.append(Stamp(to_utc(value), naive=backend != "postgresql"))
                elif isinstance(value, date):
                    values.append(value.isoformat())
                elif isinstance(value, str):
                    values.append(compiler.text(value))
                else:
                    values.append(str(value))
            compiled.append(values)
        tables[name] = TableTemplate(columns, compiled)
    stamps = [to_utc(r["recorded_at"]) for r in rows["events"]]
    return Templates(
        prefix=prefix,
        suffixes=suffixes,
        tables=tables,
        uuid_count=len(compiler.uuids),
        counters=counters,
        data_keys=data_keys,
        events=len(rows["events"]),
        span=max(stamps) - min(stamps),
    )


def make_templates(backend: str, orders: int, log_dir: Path) -> Templates:
    """Run `orders` orders to the end in a scratch database; their rows as templates."""
    run = "tpl" + uuid.uuid4().hex[:3]
    specs = workload(orders, MIX, prefix=run)
    with fresh_database(backend) as scratch:
        app = setup_app(scratch)
        try:
            place_all(app, specs, 4)
            with RssSampler() as rss:
                fleet = WorkerFleet(scratch, OursConfig(), rss, log_dir)
                fleet.start()
                try:
                    if not wait_terminal(app, orders, fleet, 120.0):
                        raise RuntimeError(f"template orders did not finish; see {log_dir}")
                    if wait_projected(app) is None:
                        raise RuntimeError("template orders were not projected")
                finally:
                    fleet.stop()
            with read_connection(app.engine) as conn:
                rows = {name: read_rows(conn, name) for name in ORDER_TABLES}
                left = conn.execute(select(func.count()).select_from(t.jobs)).scalar_one()
                counters = read_rows(conn, "metric_counters")
                data_keys = read_rows(conn, "data_keys")
        finally:
            app.close()
    if left:
        raise RuntimeError(f"{left} jobs left after the template orders")
    (key_row,) = data_keys
    masters = MasterKeys.parse(os.environ["FULFILLMENT_MASTER_KEY"])
    key = DataKey(key_row["key_id"], masters.unwrap(key_row["wrapped"], key_row["customer_id"]))
    prefix = f"b{run}-"
    suffixes = [s.order_id.removeprefix(prefix) for s in specs]
    return compile_templates(rows, prefix, suffixes, key, backend, counters, data_keys)


# --- the load ---------------------------------------------------------------------------


def render(value: Value, copy: Copy) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Part):
        return value.render(copy)
    return "".join(p if isinstance(p, str) else p.render(copy) for p in value)


def _copy_escape(value: str | None) -> str:
    if value is None:
        return "\\N"
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        value = (
            value.replace("\\", "\\\\")
            .replace("\t", "\\t")
            .replace("\n", "\\n")
            .replace("\r", "\\r")
        )
    return value


@dataclass(frozen=True)
class LoadPlan:
    copies: int
    events_per_copy: int
    spacing: timedelta

    def copy(self, number: int, uuid_count: int) -> Copy:
        return Copy(
            number=number,
            prefix=copy_prefix(number),
            uuids=[str(uuid.uuid4()) for _ in range(uuid_count)],
            delta=-(self.copies - number) * self.spacing,
            base=number * self.events_per_copy,
        )


def copy_line(row: Sequence[Value]) -> list[str | Part]:
    """A row as one line of COPY's text format: the literal text escaped once, adjacent
    pieces merged (what a copy substitutes never needs escaping: ids, stamps, base64)."""
    flat: list[str | Part] = []

    def add(piece: str | Part) -> None:
        if isinstance(piece, str) and flat and isinstance(flat[-1], str):
            flat[-1] += piece
        else:
            flat.append(piece)

    for n, value in enumerate(row):
        if n:
            add("\t")
        pieces = value if isinstance(value, list) else [value]
        for piece in pieces:
            add(piece if isinstance(piece, Part) else _copy_escape(piece))
    return flat


def copy_text(lines: Sequence[list[str | Part]], copies: Sequence[Copy]) -> str:
    """The lines of every copy, in COPY's (and LOAD DATA's) text format."""
    return "".join(
        [
            p if type(p) is str else p.render(c)  # type: ignore[union-attr]
            for c in copies
            for line in lines
            for p in (*line, "\n")
        ]
    )


def _write_postgresql(conn: Connection, templates: Templates, copies: Sequence[Copy]) -> None:
    """`COPY ... FROM STDIN`, in text format."""
    raw: Any = conn.connection.driver_connection  # psycopg 3
    with raw.cursor() as cur:
        for name, table in templates.tables.items():
            columns = ", ".join(f'"{c}"' for c in table.columns)
            lines = [copy_line(row) for row in table.rows]
            with cur.copy(f"COPY {name} ({columns}) FROM STDIN") as out:
                for start in range(0, len(copies), 20):
                    out.write(copy_text(lines, copies[start : start + 20]))


def _write_mysql(conn: Connection, templates: Templates, copies: Sequence[Copy]) -> None:
    """`LOAD DATA LOCAL INFILE` of the same text (tab-separated, `\\N`, backslash
    escapes: its defaults), from a temporary file; multi-row INSERTs where the server
    refuses local files."""
    raw: Any = conn.connection.driver_connection  # pymysql
    if not getattr(raw, "_local_infile", False):
        _write_rows(conn, templates, copies)
        return
    with tempfile.TemporaryDirectory(prefix="large_store_") as directory:
        for name, table in templates.tables.items():
            path = Path(directory) / f"{name}.tsv"
            path.write_text(copy_text([copy_line(r) for r in table.rows], copies))
            columns = ", ".join(f"`{c}`" for c in table.columns)
            with raw.cursor() as cur:
                cur.execute(
                    f"LOAD DATA LOCAL INFILE '{path}' INTO TABLE {name} "
                    f"CHARACTER SET utf8mb4 ({columns})"
                )


def _write_rows(conn: Connection, templates: Templates, copies: Sequence[Copy]) -> None:
    """Multi-row INSERTs: pymysql's executemany folds the rows of an INSERT ... VALUES
    into statements of many rows (MariaDB); sqlite3 runs it as one prepared statement."""
    raw = conn.connection.dbapi_connection
    assert raw is not None
    mark, quote = ("?", '"') if conn.dialect.name == "sqlite" else ("%s", "`")
    cur = raw.cursor()
    try:
        for name, table in templates.tables.items():
            columns = ", ".join(f"{quote}{c}{quote}" for c in table.columns)
            marks = ", ".join([mark] * len(table.columns))
            statement = f"INSERT INTO {name} ({columns}) VALUES ({marks})"
            rows = [tuple(render(v, copy) for v in row) for copy in copies for row in table.rows]
            for start in range(0, len(rows), 2000):
                cur.executemany(statement, rows[start : start + 2000])
    finally:
        cur.close()


def _finish_load(conn: Connection, templates: Templates, plan: LoadPlan) -> int:
    """The checkpoint at the head, the metric counters of every copy, the data key."""
    head = plan.copies * plan.events_per_copy
    conn.execute(insert(t.projection_checkpoints).values(name=ORDER_SUMMARIES, position=head))
    conn.execute(
        insert(t.metric_counters),
        [{**c, "value": float(c["value"]) * plan.copies} for c in templates.counters],
    )
    conn.execute(insert(t.data_keys), templates.data_keys)
    return head


def analyze(db: Database, engine: Engine) -> None:
    """What autovacuum would have done by now: statistics and the visibility map."""
    if db.backend == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for name in (*ORDER_TABLES, "metric_counters"):
                conn.execute(text(f"VACUUM (ANALYZE) {name}"))
    elif db.backend == "mysql":
        with engine.connect() as conn:
            conn.execute(text(f"ANALYZE TABLE {', '.join(ORDER_TABLES)}")).all()
    else:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))


@dataclass
class Loaded:
    """A loaded store: what is in it, and how its loading went."""

    events: int
    orders: int
    copies: int
    head: int
    suffixes: list[str]
    load_seconds: float | None = None
    analyze_seconds: float | None = None
    template_seconds: float | None = None

    def preloaded_order_id(self, rng: random.Random) -> str:
        return copy_order_id(rng.randrange(self.copies), rng.choice(self.suffixes))

    def as_dict(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "orders": self.orders,
            "copies": self.copies,
            "head": self.head,
            "template_seconds": self.template_seconds,
            "load_seconds": self.load_seconds,
            "events_per_second": (
                round(self.events / self.load_seconds) if self.load_seconds else None
            ),
            "analyze_seconds": self.analyze_seconds,
        }


def load(db: Database, events: int, template_orders: int, days: float, log_dir: Path) -> Loaded:
    """Migrate `db`, then copy template orders into it until it holds `events` events."""
    started = time.perf_counter()
    templates = make_templates(db.backend, template_orders, log_dir)
    template_seconds = time.perf_counter() - started
    copies = -(-events // templates.events)
    spacing = max(timedelta(days=days) / copies, templates.span + timedelta(seconds=1))
    plan = LoadPlan(copies, templates.events, spacing)
    setup_app(db).close()  # migrated, stock set
    engine = _engine(db)
    try:
        write = {
            "postgresql": _write_postgresql,
            "mysql": _write_mysql,
            "sqlite": _write_rows,
        }[db.backend]
        per_chunk = max(1, CHUNK_EVENTS // templates.events)
        started = time.perf_counter()
        for first in range(0, copies, per_chunk):
            batch = [
                plan.copy(n, templates.uuid_count)
                for n in range(first, min(copies, first + per_chunk))
            ]
            with engine.begin() as conn:
                if db.backend == "postgresql":
                    conn.execute(text("SET LOCAL synchronous_commit = off"))
                write(conn, templates, batch)
            done = (first + len(batch)) * templates.events
            elapsed = time.perf_counter() - started
            console.print(
                f"  loaded {done:,} events ({done / elapsed:,.0f}/s)", end="\r", highlight=False
            )
        with engine.begin() as conn:
            head = _finish_load(conn, templates, plan)
        load_seconds = time.perf_counter() - started
        console.print()
        started = time.perf_counter()
        analyze(db, engine)
        analyze_seconds = time.perf_counter() - started
    finally:
        engine.dispose()
    loaded = Loaded(
        events=copies * templates.events,
        orders=copies * templates.orders,
        copies=copies,
        head=head,
        suffixes=templates.suffixes,
        load_seconds=round(load_seconds, 1),
        analyze_seconds=round(analyze_seconds, 1),
        template_seconds=round(template_seconds, 1),
    )
    save_meta(db, loaded)
    return loaded


def _engine(db: Database) -> Engine:
    """A plain engine, without the product's statement and lock timeouts (a VACUUM of
    millions of rows takes longer than a step may); MariaDB may load local files."""
    connect_args = {"local_infile": True} if db.backend == "mysql" else {}
    return create_engine(normalize_url(db.url), connect_args=connect_args)


def save_meta(db: Database, loaded: Loaded) -> None:
    engine = _engine(db)
    try:
        _META.create_all(engine)
        meta = {
            "master_key": os.environ["FULFILLMENT_MASTER_KEY"],
            **loaded.as_dict(),
            "suffixes": loaded.suffixes,
        }
        with engine.begin() as conn:
            conn.execute(insert(bench_meta).values(name="load", value=json.dumps(meta)))
    finally:
        engine.dispose()


def read_meta(db: Database) -> Loaded:
    """What an earlier run loaded into `db`; sets the master key its patient data needs."""
    engine = _engine(db)
    try:
        with engine.connect() as conn:
            value = conn.execute(
                select(bench_meta.c.value).where(bench_meta.c.name == "load")
            ).scalar_one()
    finally:
        engine.dispose()
    meta = json.loads(value)
    os.environ["FULFILLMENT_MASTER_KEY"] = meta.pop("master_key")
    suffixes = meta.pop("suffixes")
    meta.pop("events_per_second", None)
    return Loaded(suffixes=suffixes, **meta)


#: An empty store: the latency run's control (nothing preloaded).
EMPTY = Loaded(events=0, orders=0, copies=0, head=0, suffixes=[])


def database_of(url: str) -> Database:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    backend = "mysql" if backend == "mariadb" else backend
    if backend == "sqlite":
        path = Path(parsed.database or "")
        return Database("sqlite", url, path.name, path)
    return Database(backend, url, parsed.database or "")


def head_position(engine: Engine) -> int:
    with read_connection(engine) as conn:
        return int(conn.execute(select(func.max(t.events.c.position))).scalar() or 0)


# --- sequential scans (PostgreSQL) -------------------------------------------------------


def table_scans(db: Database) -> dict[str, tuple[int, int, int]]:
    """Per table: sequential scans, rows they read, index scans (PostgreSQL; else {})."""
    if db.backend != "postgresql":
        return {}
    time.sleep(1.2)  # backends report their counts at most once a second
    engine = _engine(db)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT relname, seq_scan, seq_tup_read, coalesce(idx_scan, 0) "
                    "FROM pg_stat_user_tables"
                )
            ).all()
    finally:
        engine.dispose()
    return {str(r[0]): (int(r[1]), int(r[2]), int(r[3])) for r in rows}


def scans_between(
    before: dict[str, tuple[int, int, int]], after: dict[str, tuple[int, int, int]]
) -> dict[str, dict[str, int]]:
    """The tables with sequential scans between two readings."""
    changed = {}
    for name, (seq, rows, idx) in after.items():
        seq0, rows0, idx0 = before.get(name, (0, 0, 0))
        if seq > seq0:
            changed[name] = {
                "seq_scans": seq - seq0,
                "rows_read": rows - rows0,
                "idx_scans": idx - idx0,
            }
    return changed


# --- step 2: throughput, empty vs loaded ------------------------------------------------


@dataclass
class ThroughputRun:
    store: str  # "empty" | "loaded"
    metrics: RunMetrics
    scans: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"store": self.store, **self.metrics.as_dict(), "seq_scans": self.scans}


def throughput_runs(
    db: Database, orders: int, repeats: int, config: OursConfig, log_dir: Path
) -> list[ThroughputRun]:
    runs: list[ThroughputRun] = []
    for n in range(repeats):
        for store in ("empty", "loaded"):
            logs = log_dir / f"{store}-{n}"
            logs.mkdir(parents=True, exist_ok=True)
            specs = workload(orders, MIX)
            if store == "empty":
                with fresh_database(db.backend) as empty:
                    metrics = run_backlog(empty, specs, MIX, config, logs)
                runs.append(ThroughputRun(store, metrics))
            else:
                engine = _engine(db)
                after = head_position(engine)
                engine.dispose()
                before = table_scans(db)
                metrics = run_backlog(db, specs, MIX, config, logs, after=after)
                runs.append(ThroughputRun(store, metrics, scans_between(before, table_scans(db))))
            console.print(
                f"  {store:6} run {n + 1}: {metrics.orders_per_second:,.1f} orders/s "
                f"({metrics.terminal}/{metrics.orders} in {metrics.seconds:.2f} s)",
                highlight=False,
            )
    return runs


def median_rate(runs: Sequence[ThroughputRun], store: str) -> float:
    return statistics.median(r.metrics.orders_per_second for r in runs if r.store == store)


# --- step 3: GET latency and projector lag under load -----------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def api_server(db: Database, log_dir: Path) -> Iterator[tuple[str, int]]:
    """`fulfillment serve --workers 0`: the API and its projector; yields (URL, pid)."""
    port = free_port()
    log = open(log_dir / "api.log", "wb")  # noqa: SIM115 (closed below)
    command = [sys.executable, "-m", "fulfillment.entrypoints.cli", "serve"]
    proc = subprocess.Popen(
        [*command, "--port", str(port), "--workers", "0"],
        env=product_env(db, 0.0),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the API server exited; see {log_dir / 'api.log'}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the API server did not become healthy in 60 s")
            time.sleep(0.2)
        yield url, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class Sampler(threading.Thread):
    """Calls `sample()` every `interval` seconds until stopped."""

    def __init__(self, interval: float, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        next_at = time.perf_counter()
        while not self._stop_event.is_set():
            self.sample()
            next_at += self.interval
            self._stop_event.wait(max(0.0, next_at - time.perf_counter()))

    def sample(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


class GetSampler(Sampler):
    """`GET /orders/{id}`, alternately a preloaded order and one placed during the run."""

    def __init__(self, url: str, rate: float, preloaded: Callable[[], str], placed: list[str]):
        super().__init__(1.0 / rate, "get-sampler")
        self.client = httpx.Client(base_url=url, timeout=10, limits=CLIENT_LIMITS)
        self.preloaded = preloaded
        self.placed = placed
        self.latencies: dict[str, list[float]] = {"preloaded": [], "new": []}
        self.errors: list[str] = []
        self._turn = itertools.cycle(("preloaded", "new"))

    def sample(self) -> None:
        kind = next(self._turn)
        if kind == "new" and not self.placed:
            kind = "preloaded"
        if kind == "preloaded":
            order_id = self.preloaded() or (random.choice(self.placed) if self.placed else "")
            if not order_id:
                return  # an empty store, nothing placed yet
        else:
            order_id = random.choice(self.placed[-200:])
        started = time.perf_counter()
        try:
            response = self.client.get(f"/orders/{order_id}")
        except httpx.HTTPError as exc:
            self.errors.append(f"{order_id}: {exc}")
            return
        elapsed = (time.perf_counter() - started) * 1000.0
        if response.status_code != 200:
            self.errors.append(f"{order_id}: {response.status_code}")
            return
        self.latencies[kind].append(elapsed)

    def stop(self) -> None:
        super().stop()
        self.client.close()


def _sample_gets(
    url: str,
    rate: float,
    copies: int,
    suffixes: list[str],
    placed: Any,
    stop: Any,
    out: Any,
) -> None:
    """A process of its own for the GET sampler: the placing threads of the benchmark
    never hold its interpreter lock while it times a request. `placed`: a queue of the
    ids of orders placed meanwhile; the latencies go to `out` once `stop` is set."""
    rng = random.Random(15)
    ids: list[str] = []

    def preloaded() -> str:
        """A preloaded order; on an empty store (no copies) "": one placed in the run."""
        return copy_order_id(rng.randrange(copies), rng.choice(suffixes)) if copies else ""

    sampler = GetSampler(url, rate, preloaded, ids)
    sampler.start()
    while not stop.is_set():
        with contextlib.suppress(queue.Empty):
            ids.append(placed.get(timeout=0.1))
    sampler.stop()
    out.put((sampler.latencies, sampler.errors))


@contextlib.contextmanager
def get_sampler_process(
    url: str, rate: float, loaded: Loaded
) -> Iterator[tuple[Callable[[str], None], dict[str, Any]]]:
    """Runs `_sample_gets` in a process; yields (tell it an order was placed, results:
    `latencies` and `errors`, filled in on exit)."""
    context = multiprocessing.get_context("spawn")
    placed, out, stop = context.Queue(), context.Queue(), context.Event()
    proc = context.Process(
        target=_sample_gets,
        args=(url, rate, loaded.copies, loaded.suffixes, placed, stop, out),
        daemon=True,
    )
    proc.start()
    results: dict[str, Any] = {}
    try:
        yield placed.put, results
    finally:
        stop.set()
        results["latencies"], results["errors"] = out.get(timeout=30)
        proc.join(10)


class LagSampler(Sampler):
    """The projector's lag: events after its checkpoint and the age of the oldest."""

    def __init__(self, engine: Engine, interval: float = 0.2) -> None:
        super().__init__(interval, "lag-sampler")
        self.engine = engine
        self.events: list[float] = []
        self.seconds: list[float] = []

    def sample(self) -> None:
        cp, e = t.projection_checkpoints.c, t.events.c
        with read_connection(self.engine) as conn:
            checkpoint = (
                conn.execute(select(cp.position).where(cp.name == ORDER_SUMMARIES)).scalar()
                or 0  # before the projector's first batch
            )
            behind, oldest = conn.execute(
                select(func.count(), func.min(e.recorded_at)).where(e.position > checkpoint)
            ).one()
        now = datetime.now(UTC)
        self.events.append(float(behind))
        self.seconds.append(max(0.0, (now - to_utc(oldest)).total_seconds()) if oldest else 0.0)


def _summary(values: Sequence[float], digits: int = 1) -> dict[str, float | None]:
    def rounded(v: float | None) -> float | None:
        return None if v is None else round(v, digits)

    return {
        "n": len(values),
        "p50": rounded(percentile(values, 50)),
        "p99": rounded(percentile(values, 99)),
        "max": rounded(max(values)) if values else None,
    }


def time_reads(url: str, order_id: str, times: int = 20) -> dict[str, dict[str, float]]:
    """Other reads of the API on the loaded store, each `times` times: p50 and max ms."""
    paths = {
        "GET /orders?limit=20": "/orders?limit=20",
        "GET /orders?status=cancelled": "/orders?status=cancelled&limit=20",
        "GET /orders/{id}/events": f"/orders/{order_id}/events",
        "GET /sagas?status=stuck": "/sagas?status=stuck&limit=20",
        "GET /metrics": "/metrics",
        "GET /api/dashboard/overview": "/api/dashboard/overview",
    }
    timed = {}
    with httpx.Client(base_url=url, timeout=30) as client:
        for label, path in paths.items():
            values = []
            for _ in range(times):
                started = time.perf_counter()
                response = client.get(path)
                values.append((time.perf_counter() - started) * 1000.0)
                if response.status_code != 200:
                    raise RuntimeError(f"{path}: {response.status_code} {response.text[:200]}")
            timed[label] = {
                "p50": round(statistics.median(values), 1),
                "max": round(max(values), 1),
            }
    return timed


#: Idle connections are closed before uvicorn closes them (5 s): no request is sent on a
#: connection the server is closing.
CLIENT_LIMITS = httpx.Limits(keepalive_expiry=2.0)


def post_order(client: httpx.Client, spec: OrderSpec, placed: Callable[[str], None]) -> None:
    """POST the order; sent again once (the same Idempotency-Key) if the connection fails."""
    headers = {"Idempotency-Key": spec.order_id}
    try:
        response = client.post("/orders", json=spec.request_body(), headers=headers)
    except httpx.TransportError:
        response = client.post("/orders", json=spec.request_body(), headers=headers)
    if response.status_code not in (200, 202):
        raise RuntimeError(f"POST /orders: {response.status_code} {response.text[:200]}")
    placed(response.json()["order_id"])


def latency_run(
    db: Database,
    loaded: Loaded,
    rate: float,
    seconds: float,
    get_rate: float,
    config: OursConfig,
    log_dir: Path,
) -> dict[str, Any]:
    """Orders POSTed at `rate` for `seconds` while GET latency and projector lag are
    sampled (see the module docstring, step 3)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    app: App = setup_app(db)
    rng = random.Random(15)
    specs = workload(max(1, round(rate * seconds)), MIX)
    placed_ids: list[str] = []
    try:
        after = head_position(app.engine)
        before = table_scans(db)
        with (
            RssSampler() as rss,
            api_server(db, log_dir) as (url, pid),
            httpx.Client(base_url=url, timeout=30, limits=CLIENT_LIMITS) as client,
        ):
            rss.register("api", pid)
            fleet = WorkerFleet(db, replace(config, projector="none"), rss, log_dir)
            fleet.start()
            lag = LagSampler(app.engine)
            try:
                time.sleep(2.0)  # the workers import and connect before the clock starts
                with get_sampler_process(url, get_rate, loaded) as (tell, gets):
                    lag.start()

                    def placed(order_id: str) -> None:
                        placed_ids.append(order_id)
                        tell(order_id)

                    achieved = pace(lambda s: post_order(client, s, placed), specs, rate)
                    done = wait_terminal(app, len(specs), fleet, config.timeout_seconds, after)
                    time.sleep(1.0)  # the last terminal events reach the read model
            finally:
                if lag.is_alive():
                    lag.stop()
                fleet.stop()
            reads = time_reads(
                url, loaded.preloaded_order_id(rng) if loaded.copies else placed_ids[0]
            )
        figures = metrics_from_engine(app.engine, window_from="created", after=after)
    finally:
        app.close()
    scans = scans_between(before, table_scans(db))
    latencies = gets["latencies"]
    all_gets = latencies["preloaded"] + latencies["new"]
    return {
        "store": "loaded" if loaded.copies else "empty",
        "offered_per_second": round(rate, 1),
        "achieved_offered_per_second": round(achieved, 1),
        "seconds": seconds,
        "orders": len(specs),
        "terminal": figures["fulfilled"] + figures["cancelled"],
        "done": done,
        "order_latency_ms": latency_summary(figures["latencies"]),
        "get_ms": {
            "all": _summary(all_gets),
            "preloaded": _summary(latencies["preloaded"]),
            "new": _summary(latencies["new"]),
        },
        "get_errors": gets["errors"][:10],
        "lag_events": _summary(lag.events, 0),
        "lag_seconds": _summary(lag.seconds, 3),
        "other_reads_ms": reads,
        "peak_rss_mib": rss.peaks_mib(),
        "seq_scans": scans,
    }


# --- step 4: query plans ----------------------------------------------------------------


def product_queries(backend: str, order_ids: Sequence[str], checkpoint: int) -> dict[str, Any]:
    """The queries the product runs per order or per poll, with their parameters
    (`order_ids`: preloaded orders; the first is the one read alone)."""
    e, s = t.events.c, t.order_summaries
    order_id = order_ids[0]
    stream = f"saga-{order_id}"
    many = [f"{kind}-{oid}" for oid in order_ids for kind in ("order", "saga")]
    return {
        "GET /orders/{id}: summary by order id": (
            select(s).where(s.c.order_id == bindparam("id")),
            {"id": order_id},
        ),
        "stream read (worker prefetch, GET fallback)": (
            _read_streams(2).statement,
            {"s0": f"order-{order_id}", "s1": stream},
        ),
        f"streams of a projector batch ({len(many)} streams)": (
            _read_streams(len(many)).statement,
            {f"s{n}": stream_id for n, stream_id in enumerate(many)},
        ),
        "stream tail (unit of work load)": (_READ_TAIL, {"stream_id": stream, "v": 3}),
        "whole stream (read_stream)": (_READ_STREAM, {"stream_id": stream}),
        "projector batch": (
            select(*EVENT_COLUMNS)
            .where(e.position > bindparam("cp"), visible(backend))
            .order_by(e.position)
            .limit(500),
            {"cp": checkpoint - 100},
        ),
        "projector idle poll": (
            select(e.position).where(e.position > bindparam("cp"), visible(backend)).limit(1),
            {"cp": checkpoint},
        ),
        "Projector.lag(): count behind": (
            select(func.count()).where(e.position > bindparam("cp")),
            {"cp": checkpoint},
        ),
        "head (max position)": (select(func.max(e.position)), {}),
        "saga start times (metric counters)": (
            select(e.stream_id, e.recorded_at).where(
                e.stream_id.in_([bindparam("s0"), bindparam("s1")]),
                e.type == "OrderFulfillmentSagaStarted",
            ),
            {"s0": stream, "s1": "saga-none"},
        ),
        "GET /orders: newest page": (
            select(s).order_by(s.c.created_position.desc()).limit(21),
            {},
        ),
        "/metrics: orders by status": (
            select(s.c.status, func.count()).group_by(s.c.status),
            {},
        ),
        "/metrics: sagas by status": (
            select(s.c.saga_status, func.count()).group_by(s.c.saga_status),
            {},
        ),
    }


_NODE = re.compile(
    r"((?:Parallel )?(?:Seq Scan|Index Scan|Index Only Scan|Bitmap Heap Scan|Bitmap Index Scan)"
    r"(?: Backward)?(?: using \S+)? on \S+)"
)


def explain(db: Database, order_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Each product query's plan on the loaded store: its scan nodes and run time."""
    engine = _engine(db)
    plans = []
    try:
        with engine.connect() as conn:
            checkpoint = conn.execute(
                select(t.projection_checkpoints.c.position).where(
                    t.projection_checkpoints.c.name == ORDER_SUMMARIES
                )
            ).scalar_one()
            for label, (query, params) in product_queries(
                db.backend, order_ids, int(checkpoint)
            ).items():
                plans.append({"query": label, **_plan(conn, db.backend, query, params)})
            conn.rollback()
    finally:
        engine.dispose()
    return plans


_ACTUAL_ROWS = re.compile(r"actual time=\S+ rows=(\d+) loops=(\d+)")
_ROWS = re.compile(r"rows=(\d+)")
#: A plan node reading more rows than this of a big table reads (nearly) all of it.
WHOLE_TABLE_ROWS = 10_000


def _node(line: str) -> str:
    """A PostgreSQL scan node and the rows it read: `Index Scan using pk on t rows=12`."""
    match = _NODE.search(line)
    assert match is not None
    actual = _ACTUAL_ROWS.search(line)
    rows = int(actual.group(1)) * int(actual.group(2)) if actual else None
    return f"{match.group(1)} rows={rows}" if rows is not None else match.group(1)


def _plan(conn: Connection, backend: str, query: ClauseElement, params: dict[str, Any]) -> Any:
    compiled = query.compile(dialect=conn.dialect)
    sql, params = str(compiled), {**compiled.params, **params}
    if backend == "postgresql":
        lines = [
            str(r[0]) for r in conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", params)
        ]
        nodes = [_node(line) for line in lines if _NODE.search(line)]
        ms = next(
            (float(x.split(":")[1].split()[0]) for x in lines if x.startswith("Execution Time")),
            None,
        )
        return {"nodes": nodes, "execution_ms": ms, "plan": lines}
    if backend == "mysql":
        result = conn.exec_driver_sql(f"EXPLAIN {sql}", params)
        keys = list(result.keys())
        rows = [dict(zip(keys, r, strict=True)) for r in result]
        nodes = [
            f"{r.get('table')}: type={r.get('type')} key={r.get('key')} rows={r.get('rows')}"
            f"{' (' + str(r.get('Extra')) + ')' if r.get('Extra') else ''}"
            for r in rows
        ]
        started = time.perf_counter()
        conn.exec_driver_sql(sql, params).all()
        return {"nodes": nodes, "execution_ms": round((time.perf_counter() - started) * 1000, 2)}
    positional = tuple(params[n] for n in getattr(compiled, "positiontup", None) or ())
    sql_lite = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", positional).all()
    return {"nodes": [str(r[-1]) for r in sql_lite], "execution_ms": None}


def scans_big_table(plans: Sequence[dict[str, Any]]) -> list[str]:
    """The plan nodes that read a big table whole: a sequential scan, or any scan of more
    than WHOLE_TABLE_ROWS rows (PostgreSQL: rows read; MariaDB: the estimate; SQLite: a SCAN)."""
    big = ("events", "order_summaries")
    found = []
    for p in plans:
        for node in p["nodes"]:
            if not any(f" on {b}" in node or node.startswith((f"{b}:", f"SCAN {b}")) for b in big):
                continue
            rows = _ROWS.search(node)
            if (
                "Seq Scan" in node
                or "type=ALL" in node
                or node.startswith("SCAN ")  # SQLite
                or (rows and int(rows.group(1)) > WHOLE_TABLE_ROWS)
            ):
                found.append(f"{p['query']}: {node}")
    return found


# --- the report -------------------------------------------------------------------------


def print_load(loaded: Loaded, backend: str) -> None:
    table = Table(title=f"Large store loaded ({backend})")
    for column in ("events", "orders", "templates (s)", "load (s)", "events/s", "analyze (s)"):
        table.add_column(column, justify="right")
    d = loaded.as_dict()
    table.add_row(
        f"{loaded.events:,}",
        f"{loaded.orders:,}",
        str(d["template_seconds"]),
        str(d["load_seconds"]),
        f"{d['events_per_second']:,}" if d["events_per_second"] else "-",
        str(d["analyze_seconds"]),
    )
    console.print(table)


def print_throughput(runs: Sequence[ThroughputRun]) -> None:
    table = Table(title="Backlog throughput, empty vs loaded store")
    for column in ("run", "store", "orders/s", "events/s", "seconds", "p50 ms", "p99 ms", "notes"):
        table.add_column(column, justify="right")
    for n, r in enumerate(runs, start=1):
        m = r.metrics
        table.add_row(
            str(n),
            r.store,
            f"{m.orders_per_second:,.1f}",
            f"{m.events_per_second:,.0f}",
            f"{m.seconds:.2f}",
            str(m.latency_ms["p50"]),
            str(m.latency_ms["p99"]),
            "; ".join(m.notes),
        )
    empty, full = median_rate(runs, "empty"), median_rate(runs, "loaded")
    console.print(table)
    console.print(
        f"median empty {empty:,.1f} orders/s, loaded {full:,.1f} orders/s: "
        f"loaded / empty = {full / empty:.3f} (target >= 0.90)",
        highlight=False,
    )


def print_latency(result: dict[str, Any]) -> None:
    rate, store = result["offered_per_second"], result["store"]
    table = Table(title=f"At {rate} orders/s on the {store} store")
    for column in ("measure", "n", "p50", "p99", "max", "target"):
        table.add_column(column, justify="right")
    g = result["get_ms"]
    for kind in ("all", "preloaded", "new"):
        s = g[kind]
        target = "p99 < 20" if kind == "all" else ""
        table.add_row(f"GET /orders/{{id}} ms ({kind})", *_cells(s), target)
    table.add_row("projector lag (s)", *_cells(result["lag_seconds"]), "p99 < 1")
    table.add_row("projector lag (events)", *_cells(result["lag_events"]), "")
    o = result["order_latency_ms"]
    table.add_row(
        "order created -> terminal ms",
        str(result["terminal"]),
        *map(str, (o["p50"], o["p99"], o["max"])),
        "",
    )
    console.print(table)
    console.print(
        f"offered {result['achieved_offered_per_second']} orders/s achieved; "
        f"{result['terminal']}/{result['orders']} terminal; "
        f"GET errors: {len(result['get_errors'])}",
        highlight=False,
    )
    reads = Table(title=f"Other reads on the {store} store (20 each, idle)")
    for column in ("request", "p50 ms", "max ms"):
        reads.add_column(column, justify="right")
    for label, v in result["other_reads_ms"].items():
        reads.add_row(label, str(v["p50"]), str(v["max"]))
    console.print(reads)


def _cells(s: dict[str, float | None]) -> list[str]:
    return [str(s["n"]), str(s["p50"]), str(s["p99"]), str(s["max"])]


def print_plans(plans: Sequence[dict[str, Any]], scans: dict[str, Any]) -> None:
    table = Table(title="Query plans on the loaded store")
    table.add_column("query")
    table.add_column("scans")
    table.add_column("ms", justify="right")
    for p in plans:
        table.add_row(p["query"], "\n".join(p["nodes"]) or "-", str(p["execution_ms"]))
    console.print(table)
    for step, changed in scans.items():
        console.print(f"sequential scans during {step}: {changed or 'none'}", highlight=False)


# --- main -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=BACKENDS, default="postgresql")
    parser.add_argument("--events", type=int, default=5_000_000, help="events to load")
    parser.add_argument("--template-orders", type=int, default=20)
    parser.add_argument("--days", type=float, default=30.0, help="history the copies span")
    parser.add_argument("--orders", type=int, default=1500, help="backlog per throughput run")
    parser.add_argument(
        "--repeats", type=int, default=3, help="empty/loaded pairs (0: none; needs --rate)"
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0, help="latency run length")
    parser.add_argument("--get-rate", type=float, default=20.0, help="GETs per second")
    parser.add_argument(
        "--rate", type=float, default=None, help="offered orders/s (default: half the loaded)"
    )
    parser.add_argument("--database-url", help="a database loaded earlier (skips the load)")
    parser.add_argument(
        "--no-control",
        dest="control",
        action="store_false",
        help="skip the latency run on an empty store at the same rate",
    )
    parser.add_argument("--keep", action="store_true", help="keep the loaded database")
    parser.add_argument("--load-only", action="store_true")
    parser.add_argument("--json", type=Path, help="write the figures there")
    return parser.parse_args(argv)


@contextlib.contextmanager
def loaded_store(args: argparse.Namespace, log_dir: Path) -> Iterator[tuple[Database, Loaded]]:
    if args.database_url:
        db = database_of(args.database_url)
        yield db, read_meta(db)
        return
    with fresh_database(args.backend, keep=args.keep) as db:
        console.print(f"loading {args.events:,} events into {db.name} ...", highlight=False)
        loaded = load(db, args.events, args.template_orders, args.days, log_dir)
        if args.keep:
            console.print(f"kept: --database-url {db.url}", highlight=False)
        yield db, loaded


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.repeats == 0 and args.rate is None:
        console.print("--repeats 0 needs --rate (there is no throughput to halve)")
        return 2
    os.environ.setdefault("FULFILLMENT_MASTER_KEY", MASTER_KEY)
    backend = database_of(args.database_url).backend if args.database_url else args.backend
    problem = server_reachable(backend)
    if problem:
        console.print(problem)
        return 1
    log_dir = Path(tempfile.mkdtemp(prefix="large_store_"))
    config = OursConfig(workers=args.workers, concurrency=args.concurrency)
    report: dict[str, Any] = {
        "backend": backend,
        "server": server_version(backend),
        "date": date.today().isoformat(),
        "cpus": os.cpu_count(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    with loaded_store(args, log_dir) as (db, loaded):
        report["load"] = loaded.as_dict()
        print_load(loaded, backend)
        if not args.load_only:
            runs = throughput_runs(db, args.orders, args.repeats, config, log_dir)
            if runs:
                print_throughput(runs)
                empty, full = median_rate(runs, "empty"), median_rate(runs, "loaded")
                report["throughput"] = {
                    "runs": [r.as_dict() for r in runs],
                    "median_empty": round(empty, 1),
                    "median_loaded": round(full, 1),
                    "ratio": round(full / empty, 3),
                }
            rate = args.rate or full / 2
            latency = latency_run(
                db, loaded, rate, args.seconds, args.get_rate, config, log_dir / "latency"
            )
            print_latency(latency)
            report["latency"] = latency
            if args.control:
                with fresh_database(db.backend) as scratch:
                    control = latency_run(
                        scratch,
                        EMPTY,
                        rate,
                        args.seconds,
                        args.get_rate,
                        config,
                        log_dir / "control",
                    )
                print_latency(control)
                report["latency_empty_store"] = control
            rng = random.Random(3)
            plans = explain(db, [loaded.preloaded_order_id(rng) for _ in range(512)])
            scans = {
                **{
                    f"loaded backlog run {n}": r.scans
                    for n, r in enumerate(runs)
                    if r.store == "loaded"
                },
                "latency run": latency["seq_scans"],
            }
            print_plans(plans, scans)
            report["plans"] = plans
            report["big_table_scans_in_plans"] = scans_big_table(plans)
            console.print(
                "plans that read a big table whole: "
                + ("; ".join(report["big_table_scans_in_plans"]) or "none"),
                highlight=False,
            )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        console.print(f"wrote {args.json}")
    console.print(f"logs: {log_dir}", highlight=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

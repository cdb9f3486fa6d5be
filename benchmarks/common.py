"""What every system under test shares: fresh databases, the order workload, RSS and metrics.

Every run (ours, a peer, the plain-SQL limit) gets a brand-new database on the same server:
a temporary SQLite file, or ``CREATE DATABASE bench_<hex>`` on the PostgreSQL / MariaDB
admin URL, dropped afterwards. Throughput is measured the same way everywhere: a backlog of
N orders is placed first, then the processors start, and the window runs from the first
step recorded to the last order reaching a terminal state.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from fulfillment.adapters.db import normalize_url

BACKENDS = ("sqlite", "postgresql", "mysql")
ADMIN_URLS = {
    "postgresql": os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1/postgres"),
    "mysql": os.environ.get("BENCH_MYSQL_URL", "mysql://root@127.0.0.1/test"),
}
#: Stock is spread over a few SKUs so reservations contend a little, as in a real shop.
SKUS = tuple(f"BENCH-{n:02d}" for n in range(20))
STOCK_ON_HAND = 1_000_000_000
SUPPORTED_COUNTRY = "US"
#: The built-in carrier does not ship there: step 3 fails, the saga compensates.
UNSUPPORTED_COUNTRY = "BR"
MIXES = {"success": 0.0, "compensate10": 0.10}


# --- the workload ----------------------------------------------------------------------


@dataclass(frozen=True)
class OrderSpec:
    """One order of the workload, the same for every system under test."""

    order_id: str
    sku: str
    quantity: int
    country: str
    expires_on: date

    @property
    def fails_shipment(self) -> bool:
        return self.country == UNSUPPORTED_COUNTRY

    def request_body(self) -> dict[str, Any]:
        """The order as `POST /orders` takes it (docs/api.md)."""
        return {
            "customer_id": "bench-customer",
            "items": [{"sku": self.sku, "quantity": self.quantity}],
            "prescription": {
                "prescriber_id": "dr-bench",
                "patient_name": "Ada Lovelace",
                "expires_on": self.expires_on.isoformat(),
            },
            "shipping_address": {
                "name": "Ada Lovelace",
                "line1": "1 Analytical Way",
                "city": "London",
                "postal_code": "N1 1AA",
                "country": self.country,
            },
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "order_id": self.order_id,
            "sku": self.sku,
            "quantity": self.quantity,
            "country": self.country,
            "expires_on": self.expires_on.isoformat(),
        }


def workload(n: int, mix: str, prefix: str = "") -> list[OrderSpec]:
    """N orders; with `compensate10` every tenth ships to an unsupported country."""
    failure_every = round(1 / MIXES[mix]) if MIXES[mix] else 0
    expires = date.today() + timedelta(days=365)
    run = prefix or uuid.uuid4().hex[:6]
    return [
        OrderSpec(
            order_id=f"b{run}-{i:07d}",
            sku=SKUS[i % len(SKUS)],
            quantity=1 + i % 3,
            country=(
                UNSUPPORTED_COUNTRY
                if failure_every and i % failure_every == failure_every - 1
                else SUPPORTED_COUNTRY
            ),
            expires_on=expires,
        )
        for i in range(n)
    ]


# --- fresh databases -------------------------------------------------------------------


@dataclass
class Database:
    backend: str
    url: str  # plain URL of the README: sqlite:///path, postgresql://..., mysql://...
    name: str
    path: Path | None = None  # SQLite only

    @property
    def directory(self) -> Path:
        assert self.path is not None
        return self.path.parent


@contextlib.contextmanager
def fresh_database(backend: str, keep: bool = False) -> Iterator[Database]:
    """A brand-new empty database on `backend`'s server (or a temp SQLite file)."""
    if backend == "sqlite":
        directory = Path(tempfile.mkdtemp(prefix="bench_"))
        path = directory / "bench.db"
        try:
            yield Database("sqlite", f"sqlite:///{path}", path.name, path)
        finally:
            if not keep:
                shutil.rmtree(directory, ignore_errors=True)
        return
    admin = normalize_url(ADMIN_URLS[backend])
    name = f"bench_{uuid.uuid4().hex[:10]}"
    engine = create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    plain = make_url(ADMIN_URLS[backend]).set(database=name)
    try:
        yield Database(backend, plain.render_as_string(hide_password=False), name)
    finally:
        if not keep:
            with engine.connect() as conn:
                force = " WITH (FORCE)" if backend == "postgresql" else ""
                conn.execute(text(f"DROP DATABASE IF EXISTS {name}{force}"))
        engine.dispose()


def server_reachable(backend: str) -> str | None:
    """None if the backend answers, else why not."""
    if backend == "sqlite":
        return None
    try:
        engine = create_engine(normalize_url(ADMIN_URLS[backend]))
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
    except Exception as exc:
        return f"{backend} server not reachable at {ADMIN_URLS[backend]}: {exc}"
    return None


def server_version(backend: str) -> str:
    if backend == "sqlite":
        import sqlite3

        return f"SQLite {sqlite3.sqlite_version}"
    engine = create_engine(normalize_url(ADMIN_URLS[backend]))
    try:
        with engine.connect() as conn:
            return str(conn.execute(text("SELECT version()")).scalar_one()).split(" on ")[0]
    finally:
        engine.dispose()


# --- peak RSS of every process ---------------------------------------------------------


def _proc_status(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def peak_rss_bytes(pid: int) -> int | None:
    """The kernel's high-water mark of a live process (VmHWM), or None."""
    return _proc_status(pid, "VmHWM:")


def rss_bytes(pid: int) -> int | None:
    """The current RSS of a process: /proc on Linux, psutil elsewhere (the `bench` extra)."""
    value = _proc_status(pid, "VmRSS:")
    if value is not None:
        return value
    try:
        import psutil
    except ImportError:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


class RssSampler:
    """Samples the RSS of registered processes in a thread; keeps each one's peak.

    On Linux the kernel's own high-water mark (VmHWM) is read too, when a process is
    unregistered while still alive, so short peaks between samples are not missed.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.peaks: dict[str, int] = {}
        self._procs: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss", daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        for label in list(self._procs):
            self.unregister(label)

    def register(self, label: str, pid: int) -> None:
        with self._lock:
            self._procs[label] = pid
            self.peaks.setdefault(label, 0)

    def unregister(self, label: str) -> None:
        """Read the process's kernel peak while it is alive, then stop watching it."""
        with self._lock:
            pid = self._procs.pop(label, None)
        if pid is None:
            return
        hwm = peak_rss_bytes(pid)
        if hwm:
            self.peaks[label] = max(self.peaks.get(label, 0), hwm)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                procs = list(self._procs.items())
            for label, pid in procs:
                rss = rss_bytes(pid)
                if rss:
                    self.peaks[label] = max(self.peaks.get(label, 0), rss)

    def peaks_mib(self) -> dict[str, float]:
        return {k: round(v / 2**20, 1) for k, v in self.peaks.items()}


def self_peak_rss_mib() -> float:
    """This process's peak RSS (the kernel's high-water mark)."""
    return round((peak_rss_bytes(os.getpid()) or 0) / 2**20, 1)


# --- metrics ---------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), by linear interpolation; None without values."""
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    cuts = statistics.quantiles(values, n=1000, method="inclusive")
    index = min(len(cuts) - 1, max(0, round(q * 10) - 1))
    return float(cuts[index])


@dataclass
class RunMetrics:
    """The figures of one run of one system; JSON-ready through `as_dict`."""

    system: str
    backend: str
    mix: str
    carrier_latency_ms: float
    orders: int
    terminal: int
    fulfilled: int
    cancelled: int
    seconds: float
    orders_per_second: float
    events: int
    events_per_second: float
    latency_ms: dict[str, float | None]
    peak_rss_mib: dict[str, float]
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "backend": self.backend,
            "mix": self.mix,
            "carrier_latency_ms": self.carrier_latency_ms,
            "orders": self.orders,
            "terminal": self.terminal,
            "fulfilled": self.fulfilled,
            "cancelled": self.cancelled,
            "seconds": round(self.seconds, 3),
            "orders_per_second": round(self.orders_per_second, 1),
            "events": self.events,
            "events_per_second": round(self.events_per_second, 1),
            "latency_ms": self.latency_ms,
            "peak_rss_mib": self.peak_rss_mib,
            "config": self.config,
            "notes": self.notes,
        }


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float | None]:
    def rounded(v: float | None) -> float | None:
        return None if v is None else round(v, 1)

    return {
        "p50": rounded(percentile(latencies_ms, 50)),
        "p95": rounded(percentile(latencies_ms, 95)),
        "p99": rounded(percentile(latencies_ms, 99)),
        "max": rounded(max(latencies_ms)) if latencies_ms else None,
    }


def wait_until(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def pace(
    place: Callable[[OrderSpec], Any], specs: Sequence[OrderSpec], rate: float, threads: int = 8
) -> float:
    """Call `place(spec)` at `rate` per second (open loop); returns the rate achieved."""
    errors: list[BaseException] = []

    def guarded(spec: OrderSpec) -> None:
        try:
            place(spec)
        except BaseException as exc:
            errors.append(exc)

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        for i, spec in enumerate(specs):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(guarded, spec)
    if errors:
        raise errors[0]
    return len(specs) / max(1e-9, time.perf_counter() - started)

"""Pause tolerance: one process is frozen inside a transaction; the others must go on.

A real deployment's bad day: a worker (or an API process) stops dead in the middle of a
transaction (a long GC pause, a VM freeze, SIGSTOP) while it holds row locks and maybe
the event-append lock. This runs the whole product as separate processes (API servers
and workers on one database), offers orders over HTTP at a steady rate, freezes one
process with SIGSTOP once the database shows it inside a write transaction, keeps it
frozen for a few leases, wakes it with SIGCONT, and waits until every accepted order
has ended. It reports:

* orders finished per second before, during and after the pause;
* the longest stall: the longest time no event was committed at all;
* every HTTP answer during the pause (status and time taken);
* the invariants afterwards (nothing lost, duplicated or oversold).

`tests/e2e/test_pauses.py` runs the same scenario and asserts on it; this command prints
it (docs/performance.md, "Pauses")::

    python -m benchmarks.pause --backends sqlite,postgresql,mysql --targets worker,api

How a process is caught inside a transaction: PostgreSQL's `pg_stat_activity` and
MariaDB's `information_schema.INNODB_TRX` show which client ports have a transaction
holding locks, and psutil maps those ports to the process; on SQLite, `/proc/locks`
shows which process holds the write lock of the database's `-shm` file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from sqlalchemy import Engine, case, func, select, text
from sqlalchemy.engine import make_url

from benchmarks.common import BACKENDS, SKUS, fresh_database, server_reachable, workload
from benchmarks.ours import MASTER_KEY
from fulfillment.adapters import tables as t
from fulfillment.adapters.db import create_nullpool_engine

STOCK = 10_000_000
#: Event types each saga records at most once; a second one is a duplicate.
ONCE_PER_SAGA = (
    "PrescriptionCreated",
    "InventoryReserved",
    "ShipmentInitiated",
    "OrderFulfillmentSagaCompleted",
    "SagaCompensationStarted",
)
TERMINAL = ("OrderFulfilled", "OrderCancelled")
SERVER_PORTS = {"postgresql": 5432, "mysql": 3306}


@dataclass(frozen=True)
class PauseConfig:
    target: str = "worker"  # "worker" or "api": which process is frozen
    workers: int = 3
    concurrency: int = 8
    lease_seconds: float = 2.0
    carrier_latency_ms: float = 20.0
    rate: float = 30.0  # orders per second, offered over HTTP
    before_seconds: float = 3.0
    pause_leases: float = 3.0
    after_seconds: float = 2.0
    drain_timeout: float = 120.0
    #: Freeze inside a write transaction (the hard case) or between transactions.
    in_transaction: bool = True

    @property
    def pause_seconds(self) -> float:
        return self.pause_leases * self.lease_seconds


@dataclass
class Answer:
    at: float  # seconds since the run started
    server: int
    status: int | None  # None: no answer (a timeout or a refused connection)
    seconds: float
    error: str | None = None


@dataclass
class PauseResult:
    backend: str
    config: PauseConfig
    froze_in_transaction: bool
    freeze_attempts: int
    placed: int
    finished: int
    rate_before: float
    rate_during: float
    rate_after: float
    longest_stall_seconds: float
    longest_stall_in_pause_seconds: float
    answers_in_pause: list[Answer] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    log_dir: str = ""

    def summary(self) -> dict[str, Any]:
        live = [a for a in self.answers_in_pause if a.server != self.frozen_server]
        statuses: dict[str, int] = {}
        for answer in live:
            key = str(answer.status) if answer.status is not None else "none"
            statuses[key] = statuses.get(key, 0) + 1
        return {
            "backend": self.backend,
            "target": self.config.target,
            "in_transaction": self.froze_in_transaction,
            "freeze_attempts": self.freeze_attempts,
            "rate_before": round(self.rate_before, 1),
            "rate_during": round(self.rate_during, 1),
            "rate_after": round(self.rate_after, 1),
            "during_vs_before": round(self.rate_during / self.rate_before, 2)
            if self.rate_before
            else None,
            "longest_stall_s": round(self.longest_stall_seconds, 2),
            "longest_stall_in_pause_s": round(self.longest_stall_in_pause_seconds, 2),
            "answers_in_pause": statuses,
            "slowest_answer_in_pause_s": round(max((a.seconds for a in live), default=0.0), 2),
            "placed": self.placed,
            "finished": self.finished,
            "problems": self.problems,
        }

    @property
    def frozen_server(self) -> int:
        """Index of the frozen API server (-1: a worker was frozen)."""
        return 0 if self.config.target == "api" else -1


# --- processes --------------------------------------------------------------------------


class Process:
    """A `fulfillment` child process that can be frozen and woken."""

    def __init__(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        log_dir: Path,
        wrap: Callable[[list[str]], list[str]] = list,
    ) -> None:
        """`fulfillment ARGS`; `wrap` turns the command into another (`ip netns exec`)."""
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            wrap([sys.executable, "-m", "fulfillment.entrypoints.cli", *args]),
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def wake(self) -> None:
        os.kill(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.wake()
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._log.close()

    def client_ports(self, server_port: int) -> set[int]:
        """Local ports of this process's connections to the database server."""
        try:
            connections = psutil.Process(self.pid).net_connections(kind="tcp")
        except psutil.Error:
            return set()
        return {c.laddr.port for c in connections if c.raddr and c.raddr.port == server_port}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _environment(database_url: str, config: PauseConfig) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FULFILLMENT_")}
    env.update(
        FULFILLMENT_DATABASE_URL=database_url,
        FULFILLMENT_JOB_LEASE_SECONDS=str(config.lease_seconds),
        FULFILLMENT_CARRIER_LATENCY_MS=str(config.carrier_latency_ms),
        FULFILLMENT_CARRIER_FAILURE_RATE="0",
        FULFILLMENT_RETRY_BACKOFF_SECONDS="0.05",
        FULFILLMENT_POLL_INTERVAL_SECONDS="0.01",
        FULFILLMENT_LOG_LEVEL="info",
        # Patient data sealed, as by default; the caller's key if it set one.
        FULFILLMENT_MASTER_KEY=os.environ.get("FULFILLMENT_MASTER_KEY") or MASTER_KEY,
    )
    return env


@contextmanager
def product(
    database_url: str, config: PauseConfig, log_dir: Path
) -> Iterator[tuple[list[Process], list[str], list[Process]]]:
    """API servers (two when an API is frozen, one otherwise) and the workers, with the
    stock of every SKU set."""
    env = _environment(database_url, config)
    processes: list[Process] = []
    try:
        apis: list[Process] = []
        urls: list[str] = []
        for n in range(2 if config.target == "api" else 1):
            port = _free_port()
            args = ["serve", "--workers", "0", "--port", str(port)]
            apis.append(Process(f"api-{n}", args, env, log_dir))
            processes.append(apis[-1])
            urls.append(f"http://127.0.0.1:{port}")
            _wait_healthy(urls[-1], apis[-1])  # one at a time: the first one migrates
        with httpx.Client(base_url=urls[-1], timeout=30) as client:
            for sku in SKUS:
                client.put(f"/inventory/{sku}", json={"on_hand": STOCK}).raise_for_status()
        workers = [
            Process(
                f"worker-{n}",
                ["worker", "--concurrency", str(config.concurrency), "--no-migrate"],
                env,
                log_dir,
            )
            for n in range(config.workers)
        ]
        processes.extend(workers)
        yield apis, urls, workers
    finally:
        for process in processes:
            process.stop()


def _wait_healthy(url: str, process: Process, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            break
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{process.name} did not become healthy:\n{process.log_path.read_text()}")


# --- who holds a write transaction -------------------------------------------------------


def write_transaction_ports(
    database_url: str, append_lock: bool = True
) -> tuple[Callable[[], set[int]], Callable[[], None]]:
    """A query "which client ports hold a write transaction open right now?" on the
    database server, and a close. With `append_lock`, the hardest case: on MariaDB a
    session holding the event-append lock, shown only once another transaction waits for
    it; on PostgreSQL a session with a transaction id or the stock lock. Without: any session
    holding a row lock."""
    backend = make_url(database_url).get_backend_name()
    engine = create_nullpool_engine(database_url)
    if backend == "postgresql":
        # No append lock there since migration 0013: the hardest case is a session with
        # a transaction id (it holds row locks, and back what followers of the feed may
        # read) or the stock lock (an advisory lock).
        holding = (
            "(a.backend_xid IS NOT NULL OR EXISTS (SELECT 1 FROM pg_locks l"
            " WHERE l.pid = a.pid AND l.locktype = 'advisory' AND l.granted))"
            if append_lock
            else "a.backend_xid IS NOT NULL"
        )
        query = text(
            "SELECT a.client_port FROM pg_stat_activity a"
            f" WHERE a.datname = current_database() AND {holding}"
        )
    elif append_lock:
        query = text(
            "SELECT p.HOST FROM information_schema.INNODB_LOCK_WAITS w"
            " JOIN information_schema.INNODB_LOCKS l ON l.lock_id = w.blocking_lock_id"
            " JOIN information_schema.INNODB_TRX x ON x.trx_id = w.blocking_trx_id"
            " JOIN information_schema.PROCESSLIST p ON p.ID = x.trx_mysql_thread_id"
            " WHERE l.lock_table LIKE '%event_append_lock%'"
        )
    else:
        query = text(
            "SELECT p.HOST FROM information_schema.INNODB_TRX x"
            " JOIN information_schema.PROCESSLIST p ON p.ID = x.trx_mysql_thread_id"
            " WHERE x.trx_lock_structs > 0"
        )

    def ports() -> set[int]:
        with engine.connect() as conn:
            found = conn.execute(query).scalars().all()
            conn.rollback()
        return {int(str(v).rsplit(":", 1)[-1]) for v in found if v is not None}

    return ports, engine.dispose


def transaction_holder(database_url: str) -> tuple[Callable[[Process], bool], Callable[[], None]]:
    """A check "does this process hold a write transaction open right now?", and a close."""
    backend = make_url(database_url).get_backend_name()
    if backend == "sqlite":
        return _sqlite_holder(Path(str(make_url(database_url).database))), lambda: None
    ports, close = write_transaction_ports(database_url)
    server_port = SERVER_PORTS["postgresql" if backend == "postgresql" else "mysql"]
    return (lambda process: bool(process.client_ports(server_port) & ports())), close


def _sqlite_holder(database: Path) -> Callable[[Process], bool]:
    """SQLite in WAL mode takes its write lock as a POSIX lock on byte 120 of `-shm`."""
    shm = Path(f"{database}-shm")

    def holds(process: Process) -> bool:
        try:
            inode = os.stat(shm).st_ino
        except FileNotFoundError:
            return False
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            # "1: POSIX ADVISORY WRITE <pid> <maj:min:inode> <start> <end>"
            if (
                len(fields) >= 8
                and fields[1:4] == ["POSIX", "ADVISORY", "WRITE"]
                and fields[5].rsplit(":", 1)[-1] == str(inode)
                and fields[6] == "120"
                and int(fields[4]) == process.pid
            ):
                return True
        return False

    return holds


def freeze_where(
    process: Process, holds: Callable[[Process], bool], inside: bool, tries: int = 600
) -> int:
    """Freeze `process` at a moment it is (or, with `inside=False`, is not) inside a write
    transaction; returns how many freezes that took. SIGSTOP, look, SIGCONT, try again."""
    for attempt in range(1, tries + 1):
        process.freeze()
        time.sleep(0.05)  # the server finishes a statement already sent; others queue
        if holds(process) == inside:
            return attempt
        process.wake()
        time.sleep(random.uniform(0.005, 0.05))
    raise RuntimeError(
        f"{process.name} was never caught {'in' if inside else 'outside'} a transaction"
    )


# --- load and observation ---------------------------------------------------------------


class Load:
    """Offers orders at a steady rate, one thread per API server; records every answer."""

    def __init__(self, urls: list[str], rate: float, started: float) -> None:
        self.urls = urls
        self.rate = rate
        self.started = started
        self.answers: list[Answer] = []
        self.accepted: dict[str, tuple[str, int]] = {}  # order id -> (sku, quantity)
        self.paused_servers: set[int] = set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(len(urls))
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def _run(self, server: int) -> None:
        specs = iter(workload(1_000_000, "success", prefix=f"p{server}"))
        with httpx.Client(base_url=self.urls[server], timeout=10) as client:
            next_at = time.monotonic()
            while not self._stop.is_set():
                if server in self.paused_servers:  # a load balancer took it out
                    time.sleep(0.05)
                    next_at = time.monotonic()
                    continue
                spec = next(specs)
                began = time.monotonic()
                status: int | None = None
                error: str | None = None
                try:
                    response = client.post("/orders", json=spec.request_body())
                    status = response.status_code
                    if status == 202:
                        with self._lock:
                            self.accepted[response.json()["order_id"]] = (spec.sku, spec.quantity)
                    elif status >= 500:
                        error = response.text[:200]
                except httpx.HTTPError as exc:
                    error = f"{type(exc).__name__}: {exc}"
                ended = time.monotonic()
                with self._lock:
                    self.answers.append(
                        Answer(began - self.started, server, status, ended - began, error)
                    )
                # The live servers share the whole rate (a paused one's share moves over).
                next_at += max(1, len(self.urls) - len(self.paused_servers)) / self.rate
                self._stop.wait(max(0.0, next_at - time.monotonic()))


class CommitWatch:
    """Samples the event log every 20 ms: when events were last committed, and how many
    orders had finished by then."""

    def __init__(self, database_url: str, started: float) -> None:
        self.engine = create_nullpool_engine(database_url)
        self.started = started
        self.samples: list[tuple[float, int, int]] = []  # (at, events, finished)
        self._after = 0
        self._finished = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.engine.dispose()

    def _run(self) -> None:
        # Counted, not followed by position: on PostgreSQL a frozen process's open
        # transaction holds back what a follower may read (event_store.visible), while
        # the others' commits go on; what is measured here is the work committed.
        query = select(
            func.count(),
            func.coalesce(func.sum(case((t.events.c.type.in_(TERMINAL), 1), else_=0)), 0),
        )
        while not self._stop.is_set():
            try:
                with self.engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
                    total, finished = conn.execute(query).one()
                    conn.rollback()
                self._after, self._finished = int(total), int(finished)
            except Exception:  # the database is busy: try again at the next tick
                pass
            self.samples.append((time.monotonic() - self.started, self._after, self._finished))
            self._stop.wait(0.02)

    def finished_at(self, at: float) -> int:
        before = [s for s in self.samples if s[0] <= at]
        return before[-1][2] if before else 0

    def rate(self, start: float, end: float) -> float:
        return (self.finished_at(end) - self.finished_at(start)) / max(1e-9, end - start)

    def longest_stall(self, start: float = 0.0, end: float = float("inf")) -> float:
        """The longest time between two samples that saw new events (within the window)."""
        longest, last_change, last_position = 0.0, None, None
        for at, position, _ in self.samples:
            if at < start or at > end:
                continue
            if last_position is None or position != last_position:
                if last_change is not None:
                    longest = max(longest, at - last_change)
                last_change, last_position = at, position
        if last_change is not None and self.samples:
            tail = min(end, self.samples[-1][0])
            longest = max(longest, tail - last_change)
        return longest


# --- the invariants ----------------------------------------------------------------------


def check_invariants(engine: Engine, accepted: dict[str, tuple[str, int]]) -> list[str]:
    """What went wrong, if anything: lost, duplicated or oversold."""
    problems: list[str] = []
    with engine.connect() as conn:
        ended = {
            stream.removeprefix("order-"): type_
            for stream, type_ in conn.execute(
                select(t.events.c.stream_id, t.events.c.type).where(t.events.c.type.in_(TERMINAL))
            )
        }
        twice = conn.execute(
            select(t.events.c.stream_id, t.events.c.type, func.count())
            .where(t.events.c.type.in_((*ONCE_PER_SAGA, *TERMINAL)))
            .group_by(t.events.c.stream_id, t.events.c.type)
            .having(func.count() > 1)
        ).all()
        gaps = [
            stream
            for stream, n, low, high in conn.execute(
                select(
                    t.events.c.stream_id,
                    func.count(),
                    func.min(t.events.c.version),
                    func.max(t.events.c.version),
                ).group_by(t.events.c.stream_id)
            )
            if not (low == 1 and high == n)
        ]
        stock = {
            sku: (on_hand, reserved)
            for sku, on_hand, reserved in conn.execute(
                select(t.inventory.c.sku, t.inventory.c.on_hand, t.inventory.c.reserved)
            )
        }
        jobs = conn.execute(select(t.jobs.c.status, func.count()).group_by(t.jobs.c.status)).all()
        conn.rollback()
    lost = sorted(set(accepted) - set(ended))
    if lost:
        problems.append(f"{len(lost)} accepted orders never ended, e.g. {lost[:3]}")
    if twice:
        problems.append(f"events recorded twice: {[tuple(r) for r in twice[:5]]}")
    if gaps:
        problems.append(f"streams with gaps: {gaps[:5]}")
    consumed: dict[str, int] = {}
    for order_id, (sku, quantity) in accepted.items():
        if ended.get(order_id) == "OrderFulfilled":
            consumed[sku] = consumed.get(sku, 0) + quantity
    for sku in SKUS:
        on_hand, reserved = stock.get(sku, (None, None))
        expected = STOCK - consumed.get(sku, 0)
        if (on_hand, reserved) != (expected, 0):
            problems.append(f"{sku}: on_hand/reserved {on_hand}/{reserved}, expected {expected}/0")
    if jobs:
        problems.append(f"jobs left over: {[tuple(r) for r in jobs]}")
    return problems


# --- one run -----------------------------------------------------------------------------


def run_pause(database_url: str, config: PauseConfig, log_dir: Path | None = None) -> PauseResult:
    """Run the scenario on an empty database (the servers migrate it)."""
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="pause-"))
    backend = make_url(database_url).get_backend_name()
    holds, close_holder = transaction_holder(database_url)
    engine = create_nullpool_engine(database_url)
    try:
        with product(database_url, config, log_dir) as (apis, urls, workers):
            started = time.monotonic()
            watch = CommitWatch(database_url, started)
            load = Load(urls, config.rate, started)
            watch.start()
            load.start()
            victim = apis[0] if config.target == "api" else workers[0]
            # Warm up: the workers have started and orders are finishing.
            deadline = time.monotonic() + 60
            while watch.finished_at(float("inf")) < 5 and time.monotonic() < deadline:
                time.sleep(0.05)
            warm = time.monotonic() - started
            time.sleep(config.before_seconds)
            attempts = freeze_where(victim, holds, config.in_transaction)
            froze_at = time.monotonic() - started
            if config.target == "api":
                load.paused_servers.add(0)  # its clients are sent elsewhere
            time.sleep(config.pause_seconds)
            woke_at = time.monotonic() - started
            victim.wake()
            load.paused_servers.clear()
            time.sleep(config.after_seconds)
            load.stop()
            stopped_at = time.monotonic() - started
            deadline = time.monotonic() + config.drain_timeout
            while time.monotonic() < deadline:
                if watch.finished_at(float("inf")) >= len(load.accepted) and _no_jobs(engine):
                    break
                time.sleep(0.2)
            watch.stop()
            answers_in_pause = [a for a in load.answers if froze_at <= a.at <= woke_at]
            result = PauseResult(
                backend=backend,
                config=config,
                froze_in_transaction=config.in_transaction,
                freeze_attempts=attempts,
                placed=len(load.accepted),
                finished=watch.finished_at(float("inf")),
                rate_before=watch.rate(warm, froze_at),
                rate_during=watch.rate(froze_at, woke_at),
                rate_after=watch.rate(woke_at, stopped_at),
                longest_stall_seconds=watch.longest_stall(warm, stopped_at),
                longest_stall_in_pause_seconds=watch.longest_stall(froze_at, woke_at),
                answers_in_pause=answers_in_pause,
                problems=check_invariants(engine, load.accepted),
                log_dir=str(log_dir),
            )
        return result
    finally:
        close_holder()
        engine.dispose()


def _no_jobs(engine: Engine) -> bool:
    with engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
        left = conn.execute(select(func.count()).select_from(t.jobs)).scalar_one()
        conn.rollback()
    return int(left) == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--targets", default="worker,api")
    parser.add_argument("--rate", type=float, default=30.0, help="orders/s offered over HTTP")
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--pause-leases", type=float, default=3.0)
    parser.add_argument("--before", type=float, default=5.0)
    parser.add_argument("--after", type=float, default=3.0)
    parser.add_argument("--between", action="store_true", help="freeze between transactions")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    results = []
    for backend in args.backends.split(","):
        why = server_reachable(backend)
        if why:
            print(f"skipping {backend}: {why}")
            continue
        for target in args.targets.split(","):
            config = PauseConfig(
                target=target,
                rate=args.rate,
                lease_seconds=args.lease,
                pause_leases=args.pause_leases,
                before_seconds=args.before,
                after_seconds=args.after,
                in_transaction=not args.between,
            )
            with fresh_database(backend) as db:
                result = run_pause(db.url, config)
            summary = result.summary()
            results.append({**summary, "config": asdict(config)})
            print(json.dumps(summary))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

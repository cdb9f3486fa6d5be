"""Helpers for end-to-end tests with real worker processes.

`WorkerProcess` starts `fulfillment worker` as a child process on a test database and
stops it the way an operator or the kernel would (SIGTERM, SIGKILL). `Ledger` reads
the database from outside the workers to tell how far the sagas got and whether the
invariants of docs/architecture.md hold: one prescription / reservation / shipment per order,
`0 <= reserved <= on_hand`, and event streams without gaps.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import TEST_MASTER_KEY
from saga_testkit import wait_until as wait_until  # re-exported: tests import it from here
from sqlalchemy import Connection, func, select

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import create_nullpool_engine

FULFILLMENT = Path(sys.executable).parent / "fulfillment"
TERMINAL_ORDER_EVENTS = ("OrderFulfilled", "OrderCancelled")


def fulfillment_command() -> list[str]:
    """The installed `fulfillment` script, or the module when it is not on disk."""
    if FULFILLMENT.exists():
        return [str(FULFILLMENT)]
    return [sys.executable, "-m", "fulfillment.entrypoints.cli"]


def worker_command(concurrency: int) -> list[str]:
    return [*fulfillment_command(), "worker", "--concurrency", str(concurrency)]


class WorkerProcess:
    """One `fulfillment worker` child process; its output goes to a log file."""

    def __init__(
        self,
        database_url: str,
        log_path: Path,
        concurrency: int = 8,
        command: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
        **settings: object,
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FULFILLMENT_")}
        env["FULFILLMENT_DATABASE_URL"] = database_url
        env["FULFILLMENT_MASTER_KEY"] = TEST_MASTER_KEY  # what the tests' own Apps use
        env.update({f"FULFILLMENT_{k.upper()}": str(v) for k, v in settings.items()})
        env.update(extra_env or {})
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            command or worker_command(concurrency),
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """`kill -9`: no handler runs, no lease is handed back."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"worker {self.pid} still running after {timeout}s\n{self.output()}"
                f"\n{self.stacks()}"
            ) from None

    def stacks(self) -> str:
        """The threads' stacks of the live child, by py-spy when installed (for a hang)."""
        py_spy = Path(sys.executable).parent / "py-spy"
        if not py_spy.exists():
            return "(no py-spy to show the worker's threads)"
        dump = subprocess.run(
            [str(py_spy), "dump", "--pid", str(self.pid)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return dump.stdout + dump.stderr

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def said(self, text: str) -> bool:
        """Whether the worker printed `text`, anywhere in its output (line wrapping of the
        console ignored): not only in the tail `output()` shows, which a busy worker's
        log lines soon push a start-up line out of."""
        self._log.flush()
        whole = self.log_path.read_text(errors="replace")
        return text in " ".join(whole.split())

    def close(self) -> None:
        """Make sure the child is gone (a test that failed half-way leaves none behind)."""
        if self.alive():
            self.kill()
        self._log.close()


@contextmanager
def worker_processes(tmp_path: Path, database_url: str) -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers with `start(concurrency, **settings)`; all are killed when the block ends.

    `command` replaces `fulfillment worker` (a script that builds its own Worker).
    """
    started: list[WorkerProcess] = []

    def start(
        concurrency: int = 8,
        *,
        command: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
        **settings: object,
    ) -> WorkerProcess:
        log = tmp_path / f"worker-{len(started) + 1}.log"
        worker = WorkerProcess(database_url, log, concurrency, command, extra_env, **settings)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.close()


def jobs_processed(output: str) -> int:
    """The job count a worker reports when it stops ("worker stopped after N jobs")."""
    match = re.search(r"worker stopped after (\d+) jobs", " ".join(output.split()))
    assert match, f"the worker did not report its jobs:\n{output}"
    return int(match.group(1))


@dataclass(frozen=True)
class Fate:
    status: str  # "fulfilled" | "cancelled"
    reason: str | None


class Ledger:
    """Reads the database from outside the workers (short transactions, no write lock)."""

    def __init__(self, database_url: str) -> None:
        self.engine = create_nullpool_engine(database_url)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        # On SQLite a plain (deferred) read transaction does not queue behind the workers.
        with self.engine.connect().execution_options(sqlite_begin="DEFERRED") as conn:
            yield conn
            conn.rollback()

    def finished_orders(self) -> int:
        with self._read() as conn:
            query = select(func.count()).where(t.events.c.type.in_(TERMINAL_ORDER_EVENTS))
            return int(conn.execute(query).scalar_one())

    def job_counts(self) -> dict[str, int]:
        with self._read() as conn:
            rows = conn.execute(select(t.jobs.c.status, func.count()).group_by(t.jobs.c.status))
            return {str(status): int(n) for status, n in rows}

    def jobs(self) -> list[Any]:
        with self._read() as conn:
            return list(conn.execute(select(t.jobs)))

    def fates(self) -> dict[str, Fate]:
        """order id -> how it ended, for every order that has ended."""
        with self._read() as conn:
            rows = conn.execute(
                select(t.events.c.stream_id, t.events.c.type, t.events.c.data).where(
                    t.events.c.type.in_(TERMINAL_ORDER_EVENTS)
                )
            )
            return {
                stream.removeprefix("order-"): Fate(
                    "fulfilled" if type_ == "OrderFulfilled" else "cancelled",
                    data.get("reason"),
                )
                for stream, type_, data in rows
            }

    def saga_end_events(self) -> dict[str, list[str]]:
        """saga id -> its events that only a finished saga has (one each at most)."""
        ends = ("OrderFulfillmentSagaCompleted", "SagaCompensationStarted")
        with self._read() as conn:
            rows = conn.execute(
                select(t.events.c.stream_id, t.events.c.type).where(t.events.c.type.in_(ends))
            )
            out: dict[str, list[str]] = {}
            for stream, type_ in rows:
                out.setdefault(stream.removeprefix("saga-"), []).append(type_)
            return out

    def orders_with_more_than_one(self, table: Any) -> list[str]:
        with self._read() as conn:
            rows = conn.execute(
                select(table.c.order_id).group_by(table.c.order_id).having(func.count() > 1)
            )
            return [r.order_id for r in rows]

    def records(self, table: Any) -> dict[str, str]:
        """order id -> status of its prescription / reservation / shipment."""
        with self._read() as conn:
            return {r.order_id: r.status for r in conn.execute(select(table))}

    def inventory(self) -> dict[str, tuple[int, int]]:
        """sku -> (on_hand, reserved)."""
        with self._read() as conn:
            return {r.sku: (r.on_hand, r.reserved) for r in conn.execute(select(t.inventory))}

    def streams_with_gaps(self) -> list[str]:
        """Streams whose versions are not exactly 1..n."""
        with self._read() as conn:
            rows = conn.execute(
                select(
                    t.events.c.stream_id,
                    func.count(),
                    func.min(t.events.c.version),
                    func.max(t.events.c.version),
                ).group_by(t.events.c.stream_id)
            )
            return [s for s, n, low, high in rows if not (low == 1 and high == n)]

    def sagas_with(self, event_type: str) -> set[str]:
        """Ids of the sagas (orders) whose streams hold an event of this type."""
        with self._read() as conn:
            query = select(t.events.c.stream_id).where(t.events.c.type == event_type)
            return {s.split("-", 1)[1] for s in conn.execute(query).scalars()}

    def stream_ids(self) -> set[str]:
        with self._read() as conn:
            return set(conn.execute(select(t.events.c.stream_id).distinct()).scalars())

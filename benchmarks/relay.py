"""The event relay's publish rate to each broker, and its lag while orders are worked on.

1. Publish rate: 1,000 orders are placed and their sagas run to the end (in process,
   no carrier latency), then a relay per broker starts on that backlog; the span runs
   from its start to its checkpoint reaching the head of the log. events/s = events
   published / span (each batch confirmed by the broker before its checkpoint moves).
2. Lag under load (`--rate`, orders/s, about half of one worker's best): orders are
   placed at that rate for `--seconds` while a worker runs them and a relay follows;
   the relay's lag (events after its checkpoint, what `fulfillment_relay_lag_events`
   reports) is sampled every 50 ms: its median, p99 and maximum.

A fresh scratch database each run: a temporary SQLite file by default, or one created
(and dropped) on the server of `--database-url`.

    .venv/bin/python -m benchmarks.relay
    .venv/bin/python -m benchmarks.relay --database-url postgresql://postgres@127.0.0.1/postgres
    .venv/bin/python -m benchmarks.relay --amqp amqp://guest:guest@127.0.0.1:5672/ \\
        --nats nats://127.0.0.1:4222 --reset-stream

`--reset-stream` deletes the JetStream stream FULFILLMENT_EVENTS first: positions of
a scratch database repeat those of an earlier run, and JetStream drops (and still acks)
a `Nats-Msg-Id` it saw within its duplicate window, which would flatter the figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time
import uuid
from dataclasses import replace
from typing import Any

import nats
from nats.js.errors import NotFoundError
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from benchmarks.worker_concurrency import SKUS, _order, scratch_database
from fulfillment.adapters import relay as r
from fulfillment.adapters import tables as t
from fulfillment.adapters.db import normalize_url, read_connection
from fulfillment.adapters.mapper import EventMapper, to_utc
from fulfillment.bootstrap import App, bootstrap
from fulfillment.config import Settings
from fulfillment.entrypoints.worker import Worker
from fulfillment.service_layer.commands import SetInventory


def _head_and_checkpoint(app: App, name: str) -> tuple[int, int]:
    cp = t.projection_checkpoints
    with read_connection(app.engine) as conn:
        head = conn.execute(select(func.max(t.events.c.position))).scalar() or 0
        position = conn.execute(
            select(cp.c.position).where(cp.c.name == r.checkpoint_name(name))
        ).scalar()
    return int(head), int(position or 0)


def _lag(app: App, name: str) -> tuple[int, float]:
    """Events after the relay's checkpoint, and the age in seconds of the oldest of them
    (from its event's time, taken in this process, to now): 0 when it is caught up."""
    cp, e = t.projection_checkpoints, t.events
    with read_connection(app.engine) as conn:
        position = conn.execute(
            select(cp.c.position).where(cp.c.name == r.checkpoint_name(name))
        ).scalar()
        count, oldest = conn.execute(
            select(func.count(), func.min(e.c.recorded_at)).where(e.c.position > (position or 0))
        ).one()
    age = 0.0 if oldest is None else max(0.0, time.time() - to_utc(oldest).timestamp())
    return int(count), age


class Running:
    """A relay on a thread of its own (its own event loop)."""

    def __init__(self, app: App, url: str, name: str) -> None:
        self.relay = r.Relay(
            app.engine, EventMapper(), r.publisher_for(url, name), name=name, poll_seconds=0.02
        )
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_until_complete, args=(self.relay.run(),), daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.relay.stop)
        self.thread.join(30)


def publish_rate(app: App, url: str, timeout: float) -> dict[str, Any]:
    name = f"bench-{uuid.uuid4().hex[:6]}"
    head, _ = _head_and_checkpoint(app, name)
    start = time.monotonic()
    running = Running(app, url, name)
    try:
        # The relay's own position is the checkpoint it has committed (watched here
        # rather than queried, which would take the relay's CPU and GIL 200 times a second).
        while (running.relay.position or 0) < head:
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"the relay did not catch up within {timeout}s")
            time.sleep(0.005)
        seconds = time.monotonic() - start
    finally:
        running.stop()
    assert _head_and_checkpoint(app, name)[1] == head, "the checkpoint is not at the head"
    published = running.relay.published
    return {"events": published, "seconds": seconds, "rate": published / seconds}


def lag_under_load(
    base: Settings, database_url: str | None, url: str, rate: float, seconds: float
) -> dict[str, Any]:
    with scratch_database(database_url) as db:
        app = bootstrap(replace(base, database_url=db), run_migrations=True, pool_size=24)
        try:
            orders = int(rate * seconds)
            for sku in SKUS:
                app.bus.handle(SetInventory(sku, orders))
            worker = Worker(app, 16)
            worker_thread = threading.Thread(target=worker.run, daemon=True)
            worker_thread.start()
            name = "bench-lag"
            running = Running(app, url, name)
            samples: list[tuple[int, float]] = []
            done = threading.Event()

            def sample() -> None:
                while not done.wait(0.05):
                    samples.append(_lag(app, name))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            start = time.monotonic()
            for n in range(orders):
                due = start + n / rate
                pause = due - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                app.bus.handle(_order(n))
            placing = time.monotonic() - start
            done.set()
            sampler.join()
            running.stop()
            worker.stop()
            worker_thread.join(30)
        finally:
            app.close()
    events = sorted(n for n, _ in samples) or [0]
    ages = sorted(age for _, age in samples) or [0.0]
    return {
        "orders": orders,
        "offered": orders / placing,
        "samples": len(samples),
        "median": statistics.median(events),
        "p99": _p99(events),
        "max": events[-1],
        "p99 s": _p99(ages),
    }


def _p99(ordered: list[Any]) -> Any:
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def reset_stream(url: str) -> None:
    async def go() -> None:
        nc = await nats.connect(url, allow_reconnect=False)
        try:
            await nc.jetstream().delete_stream(r.STREAM)
        except NotFoundError:
            pass
        finally:
            await nc.close()

    asyncio.run(go())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--database-url", default=None, help="server to create scratch DBs on")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--orders", type=int, default=1000, help="the backlog of the rate run")
    parser.add_argument("--rate", type=float, default=150.0, help="orders/s of the lag run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the lag run")
    parser.add_argument("--reset-stream", action="store_true", help="see the module docstring")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)

    console = Console(width=120)
    base = replace(Settings.from_env(), carrier_latency_ms=0.0, carrier_failure_rate=0.0)
    backend = make_url(normalize_url(args.database_url or "sqlite://")).get_backend_name()
    brokers = {"RabbitMQ": args.amqp, "NATS JetStream": args.nats}
    console.print(f"event relay benchmark: backend {backend}, {os.cpu_count()} cpus")
    rates: dict[str, dict[str, Any]] = {}
    lags: dict[str, dict[str, Any]] = {}
    with scratch_database(args.database_url) as db:
        app = bootstrap(replace(base, database_url=db), run_migrations=True, pool_size=24)
        try:
            for sku in SKUS:
                app.bus.handle(SetInventory(sku, args.orders))
            with console.status(f"placing {args.orders} orders and running their sagas ..."):
                for n in range(args.orders):
                    app.bus.handle(_order(n))
                Worker(app, 32).run(until_idle=True, timeout=args.timeout)
            for broker, url in brokers.items():
                if broker.startswith("NATS") and args.reset_stream:
                    reset_stream(url)
                with console.status(f"publishing the backlog to {broker} ..."):
                    rates[broker] = publish_rate(app, url, args.timeout)
        finally:
            app.close()
    for broker, url in brokers.items():
        with console.status(f"lag at {args.rate:g} orders/s, {broker} ..."):
            lags[broker] = lag_under_load(base, args.database_url, url, args.rate, args.seconds)

    table = Table(title=f"Event relay, {backend}", title_justify="left")
    for column in (
        "broker",
        "events",
        "publish s",
        "events/s",
        "offered orders/s",
        "lag p50",
        "lag p99",
        "lag max",
        "lag p99 s",
    ):
        table.add_column(column, justify="right")
    for broker in brokers:
        rate, lag = rates[broker], lags[broker]
        table.add_row(
            broker,
            str(rate["events"]),
            f"{rate['seconds']:.2f}",
            f"{rate['rate']:,.0f}",
            f"{lag['offered']:.0f}",
            f"{lag['median']:.0f}",
            str(lag["p99"]),
            str(lag["max"]),
            f"{lag['p99 s']:.2f}",
        )
    console.print(table)
    console.print(
        "lag: events after the relay's checkpoint, sampled every 50 ms; lag s: the age of "
        "the oldest of them (its event's time to the sample)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The event relay as a real process: killed with `kill -9` three times and its broker
restarted once while 2,000 orders are placed and worked on, it loses nothing.

A `fulfillment worker` process runs the sagas while the orders are placed (in this
process); a `fulfillment relay` process publishes the log. It is killed each time it
has checkpointed a batch since it started (a batch may be half published then), and a
new one started at once: it waits for the dead one's lease to run out (2 s here) and
goes on from the checkpoint. Once, the broker itself goes away and comes back. In the
end the consumer has received every event at least once, and, duplicates dropped by
message id (first arrival kept), exactly the store's events in position order.

RabbitMQ: the shared broker is restarted with `rabbitmqctl stop_app` / `start_app`
(marker broker_restart: nothing else may use it meanwhile); the test's durable queue
keeps what arrived across the restart. NATS: a server of the test's own (a free port,
its own store), so the shared one is not disturbed and the stream holds only this
test's messages.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import IN_CI
from relay_testkit import (
    AmqpQueue,
    answers,
    checkpoint,
    first_of_each,
    head,
    new_marker,
    ours,
    read_stream,
    require_broker,
    store_events,
)
from saga_testkit import place_order

from fulfillment.bootstrap import App
from fulfillment.domain.errors import DomainError
from fulfillment.service_layer import commands as c
from fulfillment.service_layer.messagebus import (
    ConcurrencyError,
    DatabaseBusy,
    RetryableDatabaseError,
)

from .processes import Ledger, fulfillment_command, wait_until, worker_processes

pytestmark = [pytest.mark.slow, pytest.mark.broker_restart]

ORDERS = 2000
#: In every order id: the RabbitMQ queue may also get another relay's messages.
MARKER = new_marker()
KILLS = 3
LEASE_SECONDS = 2


def tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        message = f"{name} is not installed: the broker cannot be restarted"
        if IN_CI:
            pytest.fail(f"CI=true requires every tool. {message}", pytrace=False)
        pytest.skip(message)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """The broker of one test: its URL, how to restart it, what reached it."""

    url: str

    def restart(self) -> None:
        raise NotImplementedError

    def received(self) -> list:  # type: ignore[type-arg]
        raise NotImplementedError


class Rabbit(Broker):
    def __init__(self) -> None:
        self.url = require_broker("amqp")
        self.ctl = tool("rabbitmqctl")
        self.queue = AmqpQueue(self.url)

    def restart(self) -> None:
        for action in ("stop_app", "start_app"):
            subprocess.run([self.ctl, "-q", action], check=True, timeout=60)
        wait_until(lambda: answers("127.0.0.1", 5672), 60, "RabbitMQ answers again")

    def received(self) -> list:  # type: ignore[type-arg]
        return ours(self.queue.drain(idle=1.0), MARKER)

    def close(self) -> None:
        wait_until(lambda: answers("127.0.0.1", 5672), 60, "RabbitMQ answers")
        self.queue.delete()


class PrivateNats(Broker):
    def __init__(self, store: Path) -> None:
        self.binary = tool("nats-server")
        self.port = free_port()
        self.store = store
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: answers("127.0.0.1", self.port), 30, "the NATS server answers")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def restart(self) -> None:
        self.stop()
        time.sleep(0.5)
        self.start()

    def received(self) -> list:  # type: ignore[type-arg]
        return ours(read_stream(self.url, idle=1.0), MARKER)

    def close(self) -> None:
        self.stop()


@contextmanager
def broker_of(kind: str, tmp_path: Path) -> Iterator[Broker]:
    broker: Rabbit | PrivateNats = (
        Rabbit() if kind == "amqp" else PrivateNats(tmp_path / "nats-store")
    )
    try:
        yield broker
    finally:
        broker.close()


def place_all(app: App, placed: list[int]) -> None:
    """Place the orders one by one, as clients would: again when the database was busy
    (SQLite's one write lock, shared with the worker), done if it had gone in after all."""
    for i in range(ORDERS):
        for _ in range(100):
            try:
                place_order(app, f"crash-{MARKER}-{i:05d}", customer_id=f"customer-{i % 50}")
                break
            except (DatabaseBusy, RetryableDatabaseError, ConcurrencyError):
                time.sleep(0.01)
            except DomainError as exc:
                assert "already exists" in str(exc)
                break
        placed[0] = i + 1


@pytest.mark.parametrize("kind", ["amqp", "nats"])
def test_killed_relays_and_a_restarted_broker_lose_no_event(
    make_app: Callable[..., App], database_url: str, tmp_path: Path, kind: str
) -> None:
    app = make_app()
    app.bus.handle(c.SetInventory("ASPIRIN", ORDERS * 2))
    ledger = Ledger(database_url)
    with broker_of(kind, tmp_path) as broker, worker_processes(tmp_path, database_url) as start:
        relay_command = [
            *fulfillment_command(),
            "relay",
            "--broker",
            broker.url,
            "--lease-seconds",
            str(LEASE_SECONDS),
            "--batch",
            "500",
            "--poll",
            "0.05",
        ]
        relays = [start(command=relay_command)]
        start(8)
        placed = [0]
        placer = threading.Thread(target=place_all, args=(app, placed), daemon=True)
        placer.start()
        for kill in range(KILLS):
            relay = relays[-1]
            batches = 2 if kill == 1 else 1
            for batch in range(batches):
                if batch == 1:
                    # While it publishes: it must say so, wait, and go on once it is back.
                    broker.restart()
                reached = checkpoint(database_url)[0]
                wait_until(
                    lambda reached=reached: checkpoint(database_url)[0] > reached,  # type: ignore[misc]
                    60,
                    f"relay {relay.pid} checkpointed a batch",
                    context=relay.output,
                )
            relay.kill()
            relays.append(start(command=relay_command))
        placer.join(120)
        assert placed[0] == ORDERS
        wait_until(
            lambda: ledger.finished_orders() >= ORDERS and not ledger.job_counts(),
            90,
            "every saga finished",
        )
        last = relays[-1]
        wait_until(
            lambda: checkpoint(database_url)[0] == head(database_url),
            60,
            "the last relay caught up",
            context=last.output,
        )
        last.terminate()
        assert last.wait(30) == 0, last.output()
        assert last.said("stopped after"), last.output()
        outages = " ".join(r.output() for r in relays)
        assert "is unreachable" in outages and "reachable again" in outages, outages
        received = broker.received()
    ledger.close()

    expected = store_events(database_url)
    assert len(expected) > ORDERS * 5
    ids = [m.message_id for m in received]
    assert set(ids) == {str(e["position"]) for e in expected}, "an event was lost"
    unique = first_of_each(received)
    assert [m.message_id for m in unique] == [str(e["position"]) for e in expected]
    assert [m.body for m in unique] == expected
    # The checkpoint counts each event once per confirmed publish: at least all of them.
    assert checkpoint(database_url)[1] >= len(expected)

"""What the event relay's tests share: the brokers (RabbitMQ, NATS JetStream), an
in-process relay on a thread of its own, and consumers that read what reached a broker.

Brokers: RabbitMQ at FULFILLMENT_TEST_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/)
and NATS with JetStream at FULFILLMENT_TEST_NATS_URL (default nats://127.0.0.1:4222).
Like the database servers (conftest.py), a broker that does not answer fails the test
under CI=true and skips it, saying why, elsewhere.

Isolation: each RabbitMQ test reads a queue of its own, bound to the exchange before the
relay starts. The JetStream stream's name is the contract, so the NATS tests share it:
each deletes the stream first (the relay creates it again), so that it holds only the
test's messages and JetStream's duplicate window (which drops a `Nats-Msg-Id` seen in
the last 2 minutes, and positions repeat across test databases) holds nothing from
an earlier test. They must therefore not run in parallel with each other.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aio_pika
import nats
import pytest
from conftest import IN_CI
from nats.js.errors import NotFoundError
from sqlalchemy import Engine, func, select

from fulfillment.adapters import relay as r
from fulfillment.adapters import tables as t
from fulfillment.adapters.db import create_nullpool_engine, read_connection
from fulfillment.adapters.mapper import EventMapper

BROKER_URLS = {
    "amqp": os.environ.get("FULFILLMENT_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    "nats": os.environ.get("FULFILLMENT_TEST_NATS_URL", "nats://127.0.0.1:4222"),
}
BROKERS = ("amqp", "nats")
DEFAULT_PORTS = {"amqp": 5672, "nats": 4222}


def answers(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_broker(kind: str) -> str:
    """The broker's URL; fails (CI=true) or skips the test when it does not answer."""
    url = BROKER_URLS[kind]
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORTS[kind]
    if not answers(host, port):
        message = f"{kind} broker not reachable at {r.masked_broker_url(url)}"
        if IN_CI:
            pytest.fail(f"CI=true requires every broker. {message}", pytrace=False)
        pytest.skip(message)
    return url


@dataclass(frozen=True)
class Received:
    """One message as a consumer got it."""

    message_id: str
    key: str  # routing key (RabbitMQ) or subject (NATS)
    body: dict[str, Any]
    headers: dict[str, Any]


# --- RabbitMQ --------------------------------------------------------------------------


class AmqpQueue:
    """A durable queue of the test's own, bound to the relay's exchange (declared here
    too, as the relay declares it) with `binding` ("#": every event)."""

    def __init__(self, url: str, binding: str = "#") -> None:
        self.url = url
        self.name = f"test-relay-{uuid.uuid4().hex[:10]}"
        asyncio.run(self._declare(binding))

    async def _declare(self, binding: str) -> None:
        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(
                r.EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
            )
            queue = await channel.declare_queue(self.name, durable=True)
            await queue.bind(exchange, binding)

    def drain(self, idle: float = 0.5) -> list[Received]:
        """Everything in the queue, in its order (acknowledged: gone from the queue)."""
        return asyncio.run(self._drain(idle))

    async def _drain(self, idle: float) -> list[Received]:
        out: list[Received] = []
        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=1000)
            queue = await channel.declare_queue(self.name, durable=True)
            async with queue.iterator() as messages:
                while True:
                    try:
                        message = await asyncio.wait_for(messages.__anext__(), idle)
                    except TimeoutError:
                        break
                    out.append(
                        Received(
                            str(message.message_id),
                            str(message.routing_key),
                            json.loads(message.body),
                            {
                                "delivery_mode": int(message.delivery_mode or 0),
                                "content_type": message.content_type,
                            },
                        )
                    )
                    await message.ack()
        return out

    def delete(self) -> None:
        async def go() -> None:
            connection = await aio_pika.connect(self.url)
            async with connection:
                channel = await connection.channel()
                await channel.queue_delete(self.name)

        asyncio.run(go())


# --- NATS JetStream --------------------------------------------------------------------


def delete_stream(url: str) -> None:
    """Delete the relay's stream (see the module docstring): the next relay makes it."""

    async def go() -> None:
        nc = await nats.connect(url, allow_reconnect=False)
        try:
            with suppress(NotFoundError):
                await nc.jetstream().delete_stream(r.STREAM)
        finally:
            await nc.close()

    asyncio.run(go())


def read_stream(url: str, idle: float = 1.0) -> list[Received]:
    """Every message of the relay's stream, in stream order."""

    async def go() -> list[Received]:
        nc = await nats.connect(url, allow_reconnect=False)
        out: list[Received] = []
        try:
            js = nc.jetstream()
            sub = await js.pull_subscribe(r.SUBJECT_PREFIX + ">", stream=r.STREAM)
            while True:
                try:
                    batch = await sub.fetch(1000, timeout=idle)
                except (TimeoutError, nats.errors.TimeoutError):
                    break
                for msg in batch:
                    headers = dict(msg.headers or {})
                    out.append(
                        Received(
                            headers.get("Nats-Msg-Id", ""),
                            msg.subject,
                            json.loads(msg.data),
                            headers,
                        )
                    )
                    await msg.ack()
        finally:
            await nc.close()
        return out

    return asyncio.run(go())


def ours(received: list[Received], marker: str) -> list[Received]:
    """The messages of the test's own orders (their stream ids hold `marker`): another
    relay publishing to the same broker (a benchmark, a developer's) is no concern."""
    return [m for m in received if marker in str(m.body.get("stream_id", ""))]


def new_marker() -> str:
    return uuid.uuid4().hex[:8]


@contextmanager
def consumer(kind: str, url: str, marker: str) -> Iterator[Callable[[], list[Received]]]:
    """A reader of what the relay publishes from now on about the orders whose ids hold
    `marker`: `read()` returns it all, in arrival order."""
    if kind == "amqp":
        queue = AmqpQueue(url)
        try:
            yield lambda: ours(queue.drain(), marker)
        finally:
            queue.delete()
    else:
        delete_stream(url)
        yield lambda: ours(read_stream(url), marker)


# --- the relay, in process -------------------------------------------------------------


class RelayThread:
    """A `Relay` running on its own event loop in a thread; `stop()` ends it cleanly."""

    def __init__(self, relay: r.Relay) -> None:
        self.relay = relay
        self.loop = asyncio.new_event_loop()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.loop.run_until_complete(self.relay.run())
        except BaseException as exc:
            self.error = exc
        finally:
            self.loop.close()

    def stop(self, timeout: float = 30) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.relay.stop)
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the relay did not stop"
        if self.error is not None:
            raise self.error


@contextmanager
def running_relay(
    engine: Engine, mapper: EventMapper, kind: str, url: str, **options: Any
) -> Iterator[RelayThread]:
    relay = r.Relay(engine, mapper, r.publisher_for(url, options.get("name", "test")), **options)
    running = RelayThread(relay)
    try:
        yield running
    finally:
        running.stop()


def checkpoint(database_url: str, name: str = r.DEFAULT_NAME) -> tuple[int, int]:
    """(position, published) of a relay's checkpoint row; (0, 0) before it has one."""
    engine = create_nullpool_engine(database_url)
    cp = t.projection_checkpoints
    try:
        with read_connection(engine) as conn:
            row = conn.execute(
                select(cp.c.position, cp.c.published).where(cp.c.name == r.checkpoint_name(name))
            ).first()
    finally:
        engine.dispose()
    return (0, 0) if row is None else (int(row[0]), int(row[1]))


def store_events(database_url: str) -> list[dict[str, Any]]:
    """Every event of the store, as `GET /events` shows it with patient data left out,
    in position order (read as the relay reads: through `read_all`)."""
    from fulfillment.adapters.event_store import SqlAlchemyEventStore

    engine = create_nullpool_engine(database_url)
    out: list[dict[str, Any]] = []
    try:
        with read_connection(engine) as conn:
            store = SqlAlchemyEventStore(conn, EventMapper())
            after = 0
            while batch := store.read_all(after, 5000):
                out.extend(r.without_patient_data(e.as_dict()) for e in batch)
                after = batch[-1].position
    finally:
        engine.dispose()
    return out


def head(database_url: str) -> int:
    """The position of the newest event (0: none)."""
    engine = create_nullpool_engine(database_url)
    try:
        with read_connection(engine) as conn:
            return int(conn.execute(select(func.max(t.events.c.position))).scalar() or 0)
    finally:
        engine.dispose()


def first_of_each(received: list[Received]) -> list[Received]:
    """The messages with duplicates (same message id) dropped, first arrival kept."""
    seen: set[str] = set()
    out = []
    for message in received:
        if message.message_id not in seen:
            seen.add(message.message_id)
            out.append(message)
    return out

"""The event relay: every committed event, in position order, to a message broker.

The event log is the outbox (docs/architecture.md): the relay follows it with
`SqlAlchemyEventStore.read_all_text` (`read_all`, the reader of the global feed that
applies the store's visibility rule, with the payloads left as their stored text),
publishes a batch, waits for the broker to confirm every message of it (RabbitMQ
publisher confirms, JetStream publish acks), and only then advances its checkpoint, a
row of `projection_checkpoints` named `relay:<name>`. A relay killed between the publish
and the checkpoint publishes that batch again: delivery is at least once, and each
message carries its event's position as its id (`message_id`, `Nats-Msg-Id`), by which
consumers drop duplicates.

Only the holder of the checkpoint's lease publishes. The lease is taken with a
conditional UPDATE (held by no one, by this relay, or expired on the DATABASE clock),
renewed by every checkpoint UPDATE, and each checkpoint UPDATE is fenced
(`lease_holder = me AND position = old`): a relay whose lease was taken over stops
publishing and goes back to waiting for it. A relay publishes only while its lease is
valid by its own reckoning: the lease's length counted from before the statement that
took or renewed it, less a margin, bounds each batch's publish; past it the batch is
abandoned unconfirmed (and published again by whoever holds the lease next).

Brokers plug in through `Publisher` (adapters/relay_amqp.py, adapters/relay_nats.py);
the loop itself (`Relay.run`) knows none. Broker and database outages are waited out
with a capped exponential backoff, logged in one line when they begin and one when
they end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import Engine, insert, or_, select, update
from sqlalchemy.exc import (
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from fulfillment.adapters import tables as t
from fulfillment.adapters.db import backend_of, begin_promptly, db_now_epoch, read_connection
from fulfillment.adapters.event_store import SqlAlchemyEventStore
from fulfillment.adapters.mapper import EventMapper
from fulfillment.adapters.patient_data import PATIENT_DATA_EVENTS, PATIENT_DATA_FIELDS

log = logging.getLogger("fulfillment.relay")

#: RabbitMQ: the durable topic exchange; each message's routing key is its event type.
EXCHANGE = "fulfillment.events"
#: NATS JetStream: the stream (created when missing) and its subjects, `<prefix><type>`.
STREAM = "FULFILLMENT_EVENTS"
SUBJECT_PREFIX = "fulfillment.events."
#: The checkpoint rows of relays are named `relay:<name>` (never a projection's name).
CHECKPOINT_PREFIX = "relay:"
DEFAULT_NAME = "default"
DEFAULT_LEASE_SECONDS = 5.0
#: Events read, published and checkpointed at once.
DEFAULT_BATCH = 1000
#: Seconds between looks at the log once caught up.
DEFAULT_POLL_SECONDS = 0.1
#: The backoff of broker and database outages: first wait, doubling up to the cap.
FIRST_RETRY_SECONDS = 0.2
MAX_RETRY_SECONDS = 5.0
BROKER_SCHEMES = {"amqp": "amqp", "amqps": "amqp", "nats": "nats", "tls": "nats"}

#: What the relay treats as the database being away for a while (waited out); any
#: other database error (no such table: not migrated) ends the relay.
DATABASE_OUTAGES = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)


class BrokerError(Exception):
    """The broker cannot be reached, or did not confirm a batch: reconnect and retry."""


@dataclass(frozen=True)
class Message:
    """One event, ready to publish: its position (the message id), type and body."""

    position: int
    type: str
    body: bytes


class Publisher(Protocol):
    """A broker the relay publishes to (one connection, reopened after each failure)."""

    #: The broker as the logs name it (no password).
    description: str

    async def connect(self) -> None:
        """Connect (and declare the exchange or stream); BrokerError if it cannot."""

    async def publish(self, messages: Sequence[Message], timeout: float) -> None:
        """Publish `messages` in their order and return once the broker has confirmed
        every one; BrokerError if any is refused or unconfirmed after `timeout` seconds."""

    async def close(self) -> None:
        """Drop the connection (never raises)."""


def cancelled_here() -> bool:
    """Whether the running task itself is being cancelled (not an awaited future that
    a broker library cancelled when its connection closed)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


# --- pure parts -----------------------------------------------------------------------


def checkpoint_name(name: str) -> str:
    return CHECKPOINT_PREFIX + name


def parse_types(value: str | None, known: Iterable[str]) -> frozenset[str] | None:
    """The event types of `--types` (comma-separated); None: all of them.

    ValueError names the unknown ones and the known ones.
    """
    if value is None or not value.strip():
        return None
    names = [part.strip() for part in value.split(",") if part.strip()]
    known_names = set(known)
    unknown = [name for name in names if name not in known_names]
    if unknown:
        raise ValueError(
            f"unknown event type{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"known: {', '.join(sorted(known_names))}"
        )
    return frozenset(names)


def without_patient_data(event: Mapping[str, Any]) -> dict[str, Any]:
    """An event as `GET /events` shows it, its patient-data fields left out (absent,
    not erased): the sealed fields of adapters/patient_data.py, sealed or not."""
    if event["type"] not in PATIENT_DATA_EVENTS:
        return dict(event)
    data = dict(event["data"])
    for value, fields in PATIENT_DATA_FIELDS.items():
        part = data.get(value)
        if isinstance(part, dict):
            data[value] = {k: v for k, v in part.items() if k not in fields}
    return {**event, "data": data}


def body_of(event: Mapping[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()


def broker_kind(url: str) -> str:
    """`amqp` or `nats`, by the URL's scheme; ValueError for any other."""
    scheme = urlsplit(url).scheme.lower()
    kind = BROKER_SCHEMES.get(scheme)
    if kind is None or "://" not in url:
        raise ValueError(
            f"--broker {masked_broker_url(url)!r}: write amqp://user:password@host:5672/vhost "
            "(RabbitMQ; amqps:// with TLS) or nats://host:4222 (NATS JetStream; tls:// with TLS)"
        )
    return kind


def masked_broker_url(url: str) -> str:
    """`url` with its password as `***` (what the logs and errors show)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "the broker URL"


def publisher_for(url: str, name: str) -> Publisher:
    """The publisher of a broker URL (ValueError: not a broker URL)."""
    if broker_kind(url) == "amqp":
        from fulfillment.adapters.relay_amqp import AmqpPublisher

        return AmqpPublisher(url, connection_name=f"fulfillment relay {name}")
    from fulfillment.adapters.relay_nats import NatsPublisher

    return NatsPublisher(url, connection_name=f"fulfillment relay {name}")


class Backoff:
    """Waits between attempts: `first`, doubling, at most `cap`; `reset` after a success."""

    def __init__(self, first: float = FIRST_RETRY_SECONDS, cap: float = MAX_RETRY_SECONDS):
        self.first = first
        self.cap = cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first


class Outage:
    """One dependency (broker or database) of the relay: a line when it goes away, a
    line when it is back, nothing in between (each retry is logged at DEBUG)."""

    def __init__(self, what: str, relay: str) -> None:
        self.what = what
        self.relay = relay
        self.backoff = Backoff()
        self.since: float | None = None
        self.attempts = 0

    def failed(self, exc: BaseException) -> float:
        """Note a failure; the seconds to wait before the next attempt."""
        delay = self.backoff.next()
        self.attempts += 1
        if self.since is None:
            self.since = time.monotonic()
            log.warning(
                "relay %s: %s is unreachable (%s); retrying with backoff (%.1f s doubling "
                "to %.0f s)",
                self.relay,
                self.what,
                describe_error(exc),
                self.backoff.first,
                self.backoff.cap,
            )
        else:
            log.debug("relay %s: %s still unreachable: %s", self.relay, self.what, exc)
        return delay

    def ok(self) -> None:
        if self.since is not None:
            log.warning(
                "relay %s: %s is reachable again after %.1f s (%d attempts)",
                self.relay,
                self.what,
                time.monotonic() - self.since,
                self.attempts,
            )
            self.since = None
            self.attempts = 0
        self.backoff.reset()


def describe_error(exc: BaseException) -> str:
    """An error in one line: the driver's first line for a database error."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip() or type(exc).__name__
    first = text.splitlines()[0]
    return f"{type(orig or exc).__name__}: {first}"


# --- the checkpoint and its lease -----------------------------------------------------


class Lease:
    """The relay's checkpoint row and its lease (database clock), for one holder.

    Every method is one short transaction; DATABASE_OUTAGES propagate.
    """

    def __init__(
        self,
        engine: Engine,
        name: str,
        seconds: float,
        holder: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.name = checkpoint_name(name)
        self.seconds = seconds
        self.holder = holder or f"{uuid.uuid4().hex[:12]}"
        self.clock = clock
        #: Until when (this process's monotonic clock) the lease is surely still ours.
        self.valid_until = 0.0
        self.margin = min(1.0, seconds / 5)

    def remaining(self) -> float:
        return self.valid_until - self.clock()

    def _held_from(self, started: float) -> None:
        self.valid_until = started + self.seconds - self.margin

    def _ensure_row(self) -> None:
        cp = t.projection_checkpoints
        with begin_promptly(self.engine) as conn:
            found = conn.execute(select(cp.c.position).where(cp.c.name == self.name)).first()
            if found is not None:
                return
        try:
            with begin_promptly(self.engine) as conn:
                conn.execute(insert(cp).values(name=self.name, position=0, published=0))
        except IntegrityError:
            pass  # another relay of this name made it first

    def take(self) -> int | None:
        """Take (or keep) the lease: the checkpoint's position, None if another holds it."""
        self._ensure_row()
        cp = t.projection_checkpoints
        started = self.clock()
        with begin_promptly(self.engine) as conn:
            now = db_now_epoch(backend_of(conn))
            taken = conn.execute(
                update(cp)
                .where(
                    cp.c.name == self.name,
                    or_(
                        cp.c.lease_holder == self.holder,
                        cp.c.lease_holder.is_(None),
                        cp.c.lease_expires_at < now,
                    ),
                )
                .values(lease_holder=self.holder, lease_expires_at=now + self.seconds)
            ).rowcount
            if taken != 1:
                return None
            position = conn.execute(select(cp.c.position).where(cp.c.name == self.name))
            result = int(position.scalar_one())
        self._held_from(started)
        return result

    def holder_now(self) -> tuple[str | None, float | None]:
        """Who holds the lease, and for how many more seconds (database clock)."""
        cp = t.projection_checkpoints
        with read_connection(self.engine) as conn:
            now = db_now_epoch(backend_of(conn))
            row = conn.execute(
                select(cp.c.lease_holder, cp.c.lease_expires_at - now).where(cp.c.name == self.name)
            ).first()
        if row is None or row[0] is None:
            return None, None
        return str(row[0]), float(row[1]) if row[1] is not None else None

    def advance(self, old: int, new: int, published: int) -> bool:
        """Move the checkpoint from `old` to `new`, count `published` and renew the lease,
        if this relay still holds it at `old` (the fence); False: it does not."""
        cp = t.projection_checkpoints
        started = self.clock()
        with begin_promptly(self.engine) as conn:
            now = db_now_epoch(backend_of(conn))
            moved = conn.execute(
                update(cp)
                .where(
                    cp.c.name == self.name,
                    cp.c.lease_holder == self.holder,
                    cp.c.position == old,
                )
                .values(
                    position=new,
                    published=cp.c.published + published,
                    lease_expires_at=now + self.seconds,
                )
            ).rowcount
        if moved == 1:
            self._held_from(started)
            return True
        self.valid_until = 0.0
        return False

    def renew(self, position: int) -> bool:
        """Extend the lease (fenced like `advance`, the checkpoint unchanged)."""
        return self.advance(position, position, 0)

    def release(self) -> None:
        """Hand the lease back (a clean stop): another relay may take it at once."""
        cp = t.projection_checkpoints
        with begin_promptly(self.engine) as conn:
            conn.execute(
                update(cp)
                .where(cp.c.name == self.name, cp.c.lease_holder == self.holder)
                .values(lease_holder=None, lease_expires_at=None)
            )
        self.valid_until = 0.0


# --- the loop -------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    """Events read after a position: the messages to publish (the types the relay
    publishes) and the position of the last event read (the new checkpoint)."""

    messages: list[Message]
    last: int
    read: int


def read_batch(
    engine: Engine,
    mapper: EventMapper,
    after: int,
    limit: int,
    types: frozenset[str] | None,
    include_phi: bool,
) -> Batch:
    """The events after `after`, as `GET /events` shows them (patient data opened with
    `include_phi`, else left out without opening anything).

    Only the events that carry patient data are parsed; every other one is published as
    the JSON text the store holds, spliced into its envelope (`EventText.as_json`).
    """
    with read_connection(engine) as conn:
        rows = SqlAlchemyEventStore(conn, mapper).read_all_text(after, limit)
        messages = []
        for row in rows:
            if types is not None and row.type not in types:
                continue
            if row.type not in PATIENT_DATA_EVENTS:
                body = row.as_json()
            elif include_phi:
                body = body_of(mapper.open(conn, row.stored()).as_dict())
            else:
                body = body_of(without_patient_data(row.stored().as_dict()))
            messages.append(Message(row.position, row.type, body))
    last = rows[-1].position if rows else after
    return Batch(messages, last, len(rows))


class Relay:
    """Publishes the log to one broker while it holds the lease of `relay:<name>`."""

    def __init__(
        self,
        engine: Engine,
        mapper: EventMapper,
        publisher: Publisher,
        *,
        name: str = DEFAULT_NAME,
        types: frozenset[str] | None = None,
        include_phi: bool = False,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        batch_size: int = DEFAULT_BATCH,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        holder: str | None = None,
    ) -> None:
        self.engine = engine
        self.mapper = mapper
        self.publisher = publisher
        self.name = name
        self.types = types
        self.include_phi = include_phi
        self.batch_size = batch_size
        self.poll_seconds = poll_seconds
        self.lease = Lease(engine, name, lease_seconds, holder)
        self.broker = Outage(f"the broker ({publisher.description})", name)
        self.database = Outage("the database", name)
        #: Events this process published with confirmation and checkpointed.
        self.published = 0
        self.position: int | None = None
        self._stop = asyncio.Event()
        self._waiting_logged = False
        #: The next batch, read while the one before it is published: (after, task).
        self._ahead: tuple[int, asyncio.Task[Batch]] | None = None

    def stop(self) -> None:
        """Stop after the batch in flight (call on the relay's loop)."""
        self._stop.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def run(self) -> None:
        """Publish until `stop`; the lease is handed back on the way out."""
        connected = False
        try:
            while not self._stop.is_set():
                try:
                    if not connected:
                        await self.publisher.connect()
                        connected = True
                        self.broker.ok()
                    if self.position is None:
                        self.position = await self._take_lease()
                        if self.position is None:
                            continue
                    self.position = await self._step(self.position)
                    self.database.ok()
                except BrokerError as exc:
                    connected = False
                    await self.publisher.close()
                    await self._sleep(self.broker.failed(exc))
                except DATABASE_OUTAGES as exc:
                    self.position = None  # the lease is read again once the database answers
                    await self._sleep(self.database.failed(exc))
        finally:
            await self.publisher.close()
            await self._release()

    async def _take_lease(self) -> int | None:
        position = await asyncio.to_thread(self.lease.take)
        self.database.ok()
        if position is not None:
            log.info(
                "relay %s: holding the lease (holder %s), publishing after position %d to %s",
                self.name,
                self.lease.holder,
                position,
                self.publisher.description,
            )
            self._waiting_logged = False
            return position
        if not self._waiting_logged:
            holder, left = await asyncio.to_thread(self.lease.holder_now)
            log.info(
                "relay %s: the lease is held by %s (%s s left): waiting for it",
                self.name,
                holder,
                "?" if left is None else f"{max(0.0, left):.1f}",
            )
            self._waiting_logged = True
        await self._sleep(min(1.0, self.lease.seconds / 4))
        return None

    def _lost(self) -> None:
        log.warning(
            "relay %s: lost the lease (another relay of this name took it over): "
            "not publishing until it is ours again",
            self.name,
        )
        self.position = None

    async def _step(self, position: int) -> int | None:
        """One batch: read, publish, await the confirmations, advance the checkpoint.
        The new position, or None when the lease was lost."""
        batch = await self._read(position)
        if batch.read == self.batch_size:
            # Likely more behind it: read the next batch while this one is published
            # (only a read; it is used only if this batch's checkpoint is reached).
            self._read_ahead(batch.last)
        if batch.read == 0:
            if self.lease.remaining() < self.lease.seconds / 2 and not await asyncio.to_thread(
                self.lease.renew, position
            ):
                self._lost()
                return None
            await self._sleep(self.poll_seconds)
            return position
        # A publish must end while the lease is surely ours: renew first if little is left.
        if self.lease.remaining() < self.lease.seconds / 2 and not await asyncio.to_thread(
            self.lease.renew, position
        ):
            self._lost()
            return None
        if batch.messages:
            await self.publisher.publish(batch.messages, timeout=self.lease.remaining())
        if not await asyncio.to_thread(
            self.lease.advance, position, batch.last, len(batch.messages)
        ):
            self._lost()
            return None
        self.published += len(batch.messages)
        if batch.read < self.batch_size:
            await self._sleep(self.poll_seconds)
        return batch.last

    def _read_batch(self, after: int) -> Batch:
        return read_batch(
            self.engine, self.mapper, after, self.batch_size, self.types, self.include_phi
        )

    async def _read(self, after: int) -> Batch:
        """The batch after `after`: the one read ahead if it was read after it."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == after:
            return await ahead[1]
        return await asyncio.to_thread(self._read_batch, after)

    def _read_ahead(self, after: int) -> None:
        task = asyncio.ensure_future(asyncio.to_thread(self._read_batch, after))
        # A batch read ahead and never used (the lease lost, the broker down) is dropped,
        # and so is its error: the next read meets the database again.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._ahead = (after, task)

    async def _release(self) -> None:
        try:
            await asyncio.to_thread(self.lease.release)
        except DATABASE_OUTAGES as exc:
            log.warning("relay %s: could not hand the lease back: %s", self.name, exc)

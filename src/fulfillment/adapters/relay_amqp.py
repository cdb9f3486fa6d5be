"""The event relay's RabbitMQ publisher (pika on the relay's asyncio loop, publisher confirms).

Each event goes to the durable topic exchange `fulfillment.events` with its type as
the routing key, persistent (delivery mode 2), `message_id` its position, content type
application/json. A batch is written in order on one confirming channel and awaited as
a whole: the broker confirms it as it goes (often many deliveries in one ack), not in a
round trip per message.

Why pika rather than aio-pika: pika's `AsyncioConnection` runs on the same asyncio loop
through callbacks, with no task, lock and future per message; publishing a confirmed
batch costs about a quarter of the CPU time aio-pika/aiormq needs on this code path
(benchmarks/amqp_clients.py, docs/performance.md "Event relay"), and that CPU is what
bounds the relay's rate.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Sequence
from typing import Any

import pika
from pika.adapters.asyncio_connection import AsyncioConnection
from pika.spec import Basic

from fulfillment.adapters.relay import EXCHANGE, BrokerError, Message, masked_broker_url

log = logging.getLogger("fulfillment.relay")

CONNECT_TIMEOUT_SECONDS = 5.0
PERSISTENT = 2  # delivery mode


def describe(exc: BaseException) -> str:
    """pika's connection error in one line: the innermost cause it wraps (pika nests the
    socket's error in a workflow error in a connection error, with empty messages)."""
    for _ in range(5):
        inner = getattr(exc, "exceptions", None)
        wrapped = getattr(exc, "exception", None)
        if inner:
            exc = inner[-1]
        elif isinstance(wrapped, BaseException):
            exc = wrapped
        elif exc.args and isinstance(exc.args[0], BaseException):
            exc = exc.args[0]
        else:
            break
    return f"{type(exc).__name__}: {exc}"


class Confirmations:
    """The delivery tags of a channel in confirm mode still unconfirmed, and the broker's
    answers to them: `ack`/`nack` with `multiple` settle every tag up to the one given."""

    def __init__(self) -> None:
        self.next_tag = 1
        self._pending: deque[int] = deque()
        self._settled: set[int] = set()  # answered singly, ahead of older pending tags
        self.refused = 0
        self._all_settled: asyncio.Future[None] | None = None

    def sent(self) -> None:
        self._pending.append(self.next_tag)
        self.next_tag += 1

    @property
    def pending(self) -> int:
        return len(self._pending) - len(self._settled)

    def answer(self, tag: int, multiple: bool, refused: bool) -> None:
        pending = self._pending
        if multiple:
            while pending and pending[0] <= tag:
                first = pending.popleft()
                if first in self._settled:
                    self._settled.discard(first)
                elif refused:
                    self.refused += 1
        elif pending and tag >= pending[0] and tag not in self._settled:
            self._settled.add(tag)
            self.refused += refused
        while pending and pending[0] in self._settled:
            self._settled.discard(pending.popleft())
        if not pending and self._all_settled is not None and not self._all_settled.done():
            self._all_settled.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if self._all_settled is not None and not self._all_settled.done():
            self._all_settled.set_exception(exc)

    def settled(self) -> asyncio.Future[None]:
        """Done once nothing sent is unconfirmed (or failed with the connection)."""
        self._all_settled = asyncio.get_running_loop().create_future()
        if not self._pending:
            self._all_settled.set_result(None)
        return self._all_settled


class AmqpPublisher:
    def __init__(self, url: str, *, connection_name: str = "fulfillment relay") -> None:
        self.url = url
        self.description = f"RabbitMQ at {masked_broker_url(url)}"
        self.connection_name = connection_name
        self._connection: Any = None
        self._channel: Any = None
        self._confirms = Confirmations()
        #: Why the connection (or its channel) is unusable; None while it is usable.
        self._lost: str | None = "not connected"
        #: Done once the current connection has ended (closed, or failed to open).
        self._ended: asyncio.Future[None] | None = None

    async def connect(self) -> None:
        await self.close()
        loop = asyncio.get_running_loop()
        opened: asyncio.Future[None] = loop.create_future()
        ended: asyncio.Future[None] = loop.create_future()
        confirms = Confirmations()
        self._confirms, self._ended = confirms, ended

        def current(connection: Any) -> bool:
            return connection is self._connection

        def gone(connection: Any, why: str) -> None:
            error = BrokerError(why)
            if not opened.done():
                opened.set_exception(error)
            if current(connection):
                self._lost = self._lost or why
                confirms.fail(error)

        def on_open_error(connection: Any, exc: BaseException) -> None:
            gone(connection, describe(exc))
            if not ended.done():
                ended.set_result(None)

        def on_closed(connection: Any, reason: BaseException) -> None:
            gone(connection, f"the connection closed ({reason})")
            if not ended.done():
                ended.set_result(None)

        def on_open(connection: Any) -> None:
            connection.channel(on_open_callback=lambda channel: on_channel(connection, channel))

        def on_channel(connection: Any, channel: Any) -> None:
            self._channel = channel

            def on_channel_closed(_channel: Any, reason: BaseException) -> None:
                gone(connection, f"the channel closed ({reason})")
                if connection.is_open:
                    connection.close()

            def on_confirm_mode(_frame: Any) -> None:
                self._lost = None
                if not opened.done():
                    opened.set_result(None)

            channel.add_on_close_callback(on_channel_closed)
            channel.exchange_declare(
                EXCHANGE,
                exchange_type="topic",
                durable=True,
                callback=lambda _frame: channel.confirm_delivery(
                    lambda frame: self._on_confirm(confirms, frame), callback=on_confirm_mode
                ),
            )

        try:
            parameters = pika.URLParameters(self.url)
            parameters.client_properties = {"connection_name": self.connection_name}
            parameters.stack_timeout = CONNECT_TIMEOUT_SECONDS
            self._lost = "connecting"
            self._connection = AsyncioConnection(
                parameters,
                on_open_callback=on_open,
                on_open_error_callback=on_open_error,
                on_close_callback=on_closed,
                custom_ioloop=loop,
            )
            await asyncio.wait_for(opened, CONNECT_TIMEOUT_SECONDS + 1)
        except Exception as exc:  # any failure to connect: the broker is away (retried)
            await self.close()
            if isinstance(exc, BrokerError):
                raise
            raise BrokerError(f"{type(exc).__name__}: {exc}") from exc

    @staticmethod
    def _on_confirm(confirms: Confirmations, frame: Any) -> None:
        method = frame.method
        confirms.answer(method.delivery_tag, bool(method.multiple), isinstance(method, Basic.Nack))

    async def publish(self, messages: Sequence[Message], timeout: float) -> None:
        channel, confirms = self._channel, self._confirms
        if channel is None or self._lost is not None or not channel.is_open:
            raise BrokerError(self._lost or "not connected")
        refused_before = confirms.refused
        try:
            for message in messages:
                channel.basic_publish(
                    EXCHANGE,
                    message.type,
                    message.body,
                    pika.BasicProperties(
                        delivery_mode=PERSISTENT,
                        message_id=str(message.position),
                        content_type="application/json",
                    ),
                    # No queue bound: the broker drops the message (and still confirms it).
                    mandatory=False,
                )
                confirms.sent()
        except Exception as exc:  # the channel or connection closed under the batch
            raise BrokerError(f"{type(exc).__name__}: {exc}") from exc
        try:
            await asyncio.wait_for(confirms.settled(), max(0.0, timeout))
        except TimeoutError as exc:
            raise BrokerError(
                f"{confirms.pending} of {len(messages)} messages not confirmed within "
                f"{timeout:.1f} s"
            ) from exc
        refused = confirms.refused - refused_before
        if refused:
            raise BrokerError(f"the broker refused {refused} of {len(messages)} messages")

    async def close(self) -> None:
        connection, ended = self._connection, self._ended
        self._connection = self._channel = self._ended = None
        self._lost = "not connected"
        self._confirms.fail(BrokerError("the publisher was closed"))
        if connection is None:
            return
        try:
            if not (connection.is_closing or connection.is_closed):
                connection.close()
            if ended is not None:
                await asyncio.wait_for(asyncio.shield(ended), 2.0)
        except Exception as exc:  # already gone, or it does not answer
            log.debug("closing the RabbitMQ connection: %s", exc)

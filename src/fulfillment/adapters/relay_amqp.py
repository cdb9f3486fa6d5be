"""The event relay's RabbitMQ publisher (aio-pika, publisher confirms).

Each event goes to the durable topic exchange `fulfillment.events` with its type as
the routing key, persistent (delivery mode 2), `message_id` its position, content type
application/json. A batch is written in order on one confirming channel and awaited as
a whole: the broker confirms it in one round trip rather than one per message.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from pamqp.commands import Basic

from fulfillment.adapters.relay import (
    EXCHANGE,
    BrokerError,
    Message,
    cancelled_here,
    masked_broker_url,
)

log = logging.getLogger("fulfillment.relay")

CONNECT_TIMEOUT_SECONDS = 5.0
PERSISTENT = 2  # delivery mode
Properties = Basic.Properties


class AmqpPublisher:
    def __init__(self, url: str, *, connection_name: str = "fulfillment relay") -> None:
        self.url = url
        self.description = f"RabbitMQ at {masked_broker_url(url)}"
        self.connection_name = connection_name
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None

    async def connect(self) -> None:
        await self.close()
        try:
            self._connection = await aio_pika.connect(
                self.url,
                timeout=CONNECT_TIMEOUT_SECONDS,
                client_properties={"connection_name": self.connection_name},
            )
            self._channel = await self._connection.channel(publisher_confirms=True)
            self._exchange = await self._channel.declare_exchange(
                EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
            )
        except Exception as exc:  # any failure to connect: the broker is away (retried)
            await self.close()
            raise BrokerError(f"{type(exc).__name__}: {exc}") from exc

    async def publish(self, messages: Sequence[Message], timeout: float) -> None:
        if self._channel is None or self._exchange is None:
            raise BrokerError("not connected")
        # aiormq's channel under aio-pika's: no Message and Exchange wrappers per event.
        channel = await self._channel.get_underlay_channel()
        sends = [
            channel.basic_publish(
                message.body,
                exchange=EXCHANGE,
                routing_key=message.type,
                properties=Properties(
                    delivery_mode=PERSISTENT,
                    message_id=str(message.position),
                    content_type="application/json",
                ),
                # No queue bound: the broker drops the message (and still confirms it).
                mandatory=False,
            )
            for message in messages
        ]
        try:
            # One task each, created in order: they take the channel's lock, and write
            # their frames, in that order (asyncio's lock is first come, first served).
            confirmations = await asyncio.wait_for(asyncio.gather(*sends), max(0.0, timeout))
        except TimeoutError as exc:
            raise BrokerError(
                f"{len(messages)} messages not confirmed within {timeout:.1f} s"
            ) from exc
        except asyncio.CancelledError as exc:
            if cancelled_here():
                raise
            # aiormq cancels the confirmations of a connection that closed under them.
            raise BrokerError("the connection closed before confirming the batch") from exc
        except Exception as exc:  # nack, channel or connection closed
            raise BrokerError(f"{type(exc).__name__}: {exc}") from exc
        refused = sum(1 for c in confirmations if not isinstance(c, Basic.Ack))
        if refused:
            raise BrokerError(f"the broker refused {refused} of {len(messages)} messages")

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        self._channel = self._exchange = None
        if connection is not None:
            try:
                await asyncio.wait_for(connection.close(), 2.0)
            except Exception as exc:  # already gone
                log.debug("closing the RabbitMQ connection: %s", exc)

"""The event relay's NATS JetStream publisher (nats-py, publish acks).

Each event goes to subject `fulfillment.events.<type>` of the stream
`FULFILLMENT_EVENTS` (created when missing, subjects `fulfillment.events.>`), with the
header `Nats-Msg-Id` set to its position: JetStream itself drops a message published
again within its duplicate window (2 minutes by default). A batch is sent in order
without waiting (`publish_async`) and its acks awaited together.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from fulfillment.adapters.relay import (
    STREAM,
    SUBJECT_PREFIX,
    BrokerError,
    Message,
    cancelled_here,
    masked_broker_url,
)

log = logging.getLogger("fulfillment.relay")

CONNECT_TIMEOUT_SECONDS = 5.0
#: Unconfirmed publishes nats-py allows at once: above any batch (`--batch` is at most 10,000).
MAX_PENDING = 100_000


class NatsPublisher:
    def __init__(self, url: str, *, connection_name: str = "fulfillment relay") -> None:
        self.url = url
        self.description = f"NATS at {masked_broker_url(url)}"
        self.connection_name = connection_name
        self._client: Client | None = None
        self._js: JetStreamContext | None = None
        self._lost = asyncio.Event()

    async def _on_error(self, exc: Exception) -> None:
        log.debug("NATS: %s", exc)

    async def _on_lost(self) -> None:
        self._lost.set()

    async def connect(self) -> None:
        await self.close()
        self._lost = asyncio.Event()
        try:
            # Reconnecting is the relay's job (its backoff, its log lines): none here.
            self._client = await nats.connect(
                self.url,
                name=self.connection_name,
                connect_timeout=CONNECT_TIMEOUT_SECONDS,
                allow_reconnect=False,
                max_reconnect_attempts=0,
                error_cb=self._on_error,
                disconnected_cb=self._on_lost,
                closed_cb=self._on_lost,
            )
            js = self._client.jetstream(publish_async_max_pending=MAX_PENDING)
            try:
                await js.stream_info(STREAM)
            except NotFoundError:
                await js.add_stream(name=STREAM, subjects=[SUBJECT_PREFIX + ">"])
            self._js = js
        except Exception as exc:  # any failure to connect: the broker is away (retried)
            await self.close()
            raise BrokerError(f"{type(exc).__name__}: {exc}") from exc

    async def publish(self, messages: Sequence[Message], timeout: float) -> None:
        js = self._js
        if js is None or self._lost.is_set():
            raise BrokerError("not connected")
        acks: list[asyncio.Future[Any]] = []
        try:
            for message in messages:
                acks.append(
                    await js.publish_async(
                        SUBJECT_PREFIX + message.type,
                        message.body,
                        headers={"Nats-Msg-Id": str(message.position)},
                        stream=STREAM,
                        # Never stalls (a batch is at most 10,000 < MAX_PENDING), and
                        # with no timeout nats-py adds no task per message to wait on it.
                        wait_stall=None,
                    )
                )
            # Every ack's outcome is taken (none is left "never retrieved").
            confirmed: asyncio.Future[Any] = asyncio.gather(*acks, return_exceptions=True)
            lost: asyncio.Future[Any] = asyncio.ensure_future(self._lost.wait())
            try:
                done, _ = await asyncio.wait(
                    {confirmed, lost}, timeout=max(0.0, timeout), return_when="FIRST_COMPLETED"
                )
            finally:
                lost.cancel()
            if confirmed not in done:
                confirmed.cancel()
                with contextlib.suppress(BaseException):
                    await confirmed
                why = "the connection was lost" if lost in done else f"not within {timeout:.1f} s"
                raise BrokerError(f"{len(messages)} messages not acknowledged: {why}")
            refused = [r for r in confirmed.result() if isinstance(r, BaseException)]
            if refused:  # JetStream refused or did not answer (a restart): an outage
                raise BrokerError(
                    f"{len(refused)} of {len(messages)} messages not acknowledged: {refused[0]!r}"
                ) from refused[0]
        except BrokerError:
            raise
        except asyncio.CancelledError as exc:
            if cancelled_here():
                raise
            raise BrokerError("the connection closed before acknowledging the batch") from exc
        except Exception as exc:  # an API error, or the connection closed
            raise BrokerError(f"{type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        client, self._client = self._client, None
        self._js = None
        if client is not None and not client.is_closed:
            try:
                await asyncio.wait_for(client.close(), 2.0)
            except Exception as exc:  # already gone
                log.debug("closing the NATS connection: %s", exc)

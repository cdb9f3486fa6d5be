"""The CPU cost of confirmed publishing with RabbitMQ's two asyncio clients, side by side.

Why the relay publishes with pika (adapters/relay_amqp.py) rather than aio-pika: its
process is bound by the client's CPU time per message. Each run publishes `--messages`
persistent messages of the relay's size to the relay's exchange, in batches awaited as
a whole with publisher confirms, as the relay does:

* aio-pika/aiormq: `basic_publish` on aiormq's channel, one coroutine per message,
  gathered (the way the relay used them);
* pika: the relay's own `AmqpPublisher` (`AsyncioConnection` on the same loop).

    .venv/bin/python -m benchmarks.amqp_clients [--amqp URL] [--messages 9000]

aio-pika is a test dependency (`.[dev]`: the relay tests' consumer).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import aio_pika
from pamqp.commands import Basic

from fulfillment.adapters import relay as r
from fulfillment.adapters.relay_amqp import AmqpPublisher

BODY = b'{"data":' + b'"x"' * 96 + b"}"  # about the relay's mean body (300 bytes)
BATCH = 1000


async def with_aio_pika(url: str, count: int) -> None:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_exchange(r.EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True)
        under = await channel.get_underlay_channel()
        for start in range(0, count, BATCH):
            await asyncio.gather(
                *(
                    under.basic_publish(
                        BODY,
                        exchange=r.EXCHANGE,
                        routing_key="Bench",
                        properties=Basic.Properties(
                            delivery_mode=2,
                            message_id=str(n),
                            content_type="application/json",
                        ),
                    )
                    for n in range(start, min(count, start + BATCH))
                )
            )
    finally:
        await connection.close()


async def with_pika(url: str, count: int) -> None:
    publisher = AmqpPublisher(url)
    await publisher.connect()
    try:
        for start in range(0, count, BATCH):
            batch = [r.Message(n, "Bench", BODY) for n in range(start, min(count, start + BATCH))]
            await publisher.publish(batch, timeout=30)
    finally:
        await publisher.close()


def measure(
    run: Callable[[str, int], Awaitable[None]], url: str, count: int
) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    asyncio.run(run(url, count))  # type: ignore[arg-type]
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--messages", type=int, default=9000)
    args = parser.parse_args(argv)
    print(f"{args.messages} confirmed messages of {len(BODY)} bytes, batches of {BATCH}")
    print(f"{'client':<16}{'wall s':>8}{'CPU s':>8}{'msgs/s':>10}{'CPU us/msg':>12}")
    for name, run in (("aio-pika/aiormq", with_aio_pika), ("pika (relay)", with_pika)):
        for _ in range(2):  # twice each: the second (warm) run is the one shown
            wall, cpu = measure(run, args.amqp, args.messages)
        print(
            f"{name:<16}{wall:>8.3f}{cpu:>8.3f}{args.messages / wall:>10,.0f}"
            f"{cpu / args.messages * 1e6:>12.0f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The yardstick for `saga bench`: a bare aio-pika request/reply ring.

Two processes, with the guarantees of a saga step and nothing else: durable
queues of the namespace's type (quorum unless SAGA_QUEUE_TYPE says classic),
persistent messages, publisher confirms, manual acks, and one Redis write
per reply (the requester records each answer, as the orchestrator records
each transition). It is plain aio-pika and redis-py,
as a team would write it: none of the batching and corking of our own
connections. One unit is three round trips, as an
order saga is three steps.

The responder runs as `saga bench-responder`, a child of `saga bench`.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from participants.edge.connections import connect_amqp, connect_redis
from participants.edge.settings import Settings
from statemachines.names import Names

ROUND_TRIPS = 3


def request_queue(names: Names) -> str:
    return f"{names.namespace}.baseline.requests"


def reply_queue(names: Names) -> str:
    return f"{names.namespace}.baseline.replies"


async def respond(amqp_url: str, names: Names, prefetch: int = 256) -> None:
    """Answer every request on the request queue until SIGTERM."""
    connection = await connect_amqp(amqp_url)
    publisher = await connection.channel(publisher_confirms=True)
    consumer = await connection.channel()
    await consumer.set_qos(prefetch_count=prefetch)
    queue = await consumer.declare_queue(request_queue(names), durable=True, arguments=names.queue_arguments())

    async def answer(message: AbstractIncomingMessage) -> None:
        reply = aio_pika.Message(
            message.body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, correlation_id=message.correlation_id
        )
        await publisher.default_exchange.publish(reply, message.reply_to or "")
        await message.ack()

    await queue.consume(answer)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await connection.close()


@dataclass
class RingResult:
    units: int
    seconds: float
    latencies: list[float] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.units / self.seconds if self.seconds else 0.0


async def ring(
    settings: Settings, units: int, in_flight: int, progress: Callable[[int], None] | None = None
) -> RingResult:
    """Run `units` units of ROUND_TRIPS round trips, `in_flight` at a time, against a running responder."""
    names = settings.names
    connection = await connect_amqp(settings.amqp_url)
    redis = await connect_redis(settings.redis_url)
    try:
        publisher = await connection.channel(publisher_confirms=True)
        consumer = await connection.channel()
        await consumer.set_qos(prefetch_count=max(256, in_flight * 2))
        replies = await consumer.declare_queue(reply_queue(names), durable=True, arguments=names.queue_arguments())
        waiting: dict[str, asyncio.Future[None]] = {}

        async def on_reply(message: AbstractIncomingMessage) -> None:
            key = message.correlation_id or ""
            await redis.set(f"{names.namespace}:baseline:{key}", message.body)
            await message.ack()
            future = waiting.pop(key, None)
            if future is not None and not future.done():
                future.set_result(None)

        await replies.consume(on_reply)
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(in_flight)
        result = RingResult(units, 0.0)
        done = 0

        async def unit(number: int) -> None:
            nonlocal done
            async with gate:
                began = time.perf_counter()
                for trip in range(ROUND_TRIPS):
                    key = f"{number}.{trip}"
                    # Held here: the reply may come, and take it from `waiting`, before the publish returns.
                    answered = waiting[key] = loop.create_future()
                    request = aio_pika.Message(
                        b'{"unit": %d, "trip": %d}' % (number, trip),
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        correlation_id=key,
                        reply_to=replies.name,
                    )
                    await publisher.default_exchange.publish(request, request_queue(names))
                    await answered
                result.latencies.append(time.perf_counter() - began)
            done += 1
            if progress is not None:
                progress(done)

        began = time.perf_counter()
        await asyncio.gather(*(unit(n) for n in range(units)))
        result.seconds = time.perf_counter() - began
        return result
    finally:
        await connection.close()
        keys = [k async for k in redis.scan_iter(match=f"{names.namespace}:baseline:*", count=1000)]
        for start in range(0, len(keys), 1000):
            await redis.delete(*keys[start : start + 1000])
        await redis.aclose()

"""Removing everything one namespace put on the broker and in Redis."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from participants.edge.connections import connect_amqp, connect_redis
from participants.edge.settings import Settings


async def drop(settings: Settings, participants: Iterable[str] = (), queues: Iterable[str] = ()) -> None:
    """Delete the namespace's queues, exchanges and keys.

    The queues are those its orchestrators and workers recorded declaring,
    the usual ones, those of `participants`, and `queues`.
    """
    names = settings.names
    redis = await connect_redis(settings.redis_url)
    try:
        declared = {q.decode() if isinstance(q, bytes) else q for q in await redis.smembers(names.queues_key)}
    finally:
        await redis.aclose()
    every = {names.start_queue, names.reply_queue, names.dead_queue, *queues, *declared}
    every |= {names.participant_queue(p) for p in participants}
    connection = await connect_amqp(settings.amqp_url)
    try:
        # A failed delete closes its channel, so each gets a channel of its own.
        for queue in sorted(every):
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)
            with contextlib.suppress(Exception):
                await channel.close()
        for exchange in (names.commands_exchange, names.events_exchange, names.dead_exchange, names.replies_exchange):
            channel = await connection.channel()
            with contextlib.suppress(Exception):
                await channel.exchange_delete(exchange)
            with contextlib.suppress(Exception):
                await channel.close()
    finally:
        await connection.close()
    redis = await connect_redis(settings.redis_url)
    try:
        batch: list[bytes] = []
        async for key in redis.scan_iter(match=f"{names.namespace}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                await redis.delete(*batch)
                batch.clear()
        if batch:
            await redis.delete(*batch)
    finally:
        await redis.aclose()

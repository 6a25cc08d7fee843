"""How often a message was delivered before, on either queue type.

Quorum queues count in the header `x-delivery-count`. Classic queues only
flag a delivery as `redelivered`, so for them the count is kept in Redis:
one counter per message, incremented on each redelivered delivery before
it is handled. A consumer that dies on a message still counted it, so
"a message that fails or kills its consumer every time is dead-lettered"
holds on classic queues too. A first delivery costs nothing; the counters
expire, as a message redelivered once a day is not looping.
"""

from __future__ import annotations

import hashlib

from aio_pika.abc import AbstractIncomingMessage
from redis.asyncio import Redis

from statemachines.names import Names

TTL_SECONDS = 24 * 3600


def counted(message: AbstractIncomingMessage) -> int | None:
    """The broker's count of earlier deliveries (quorum queues), or None where it keeps none."""
    count = (message.headers or {}).get("x-delivery-count")
    if isinstance(count, int):
        return count
    # A quorum queue leaves the header out of a first delivery; a classic one out of every one.
    return 0 if not message.redelivered else None


class Redeliveries:
    def __init__(self, redis: Redis, names: Names) -> None:
        self.redis = redis
        self.names = names

    async def count(self, queue: str, message: AbstractIncomingMessage) -> int:
        """How often `message` was delivered before this delivery, counting this one in if need be."""
        known = counted(message)
        if known is not None:
            return known
        # The message id where there is one (a copy the outbox sent again is the same
        # message), else the body; bounded either way, as every key is.
        identity = hashlib.blake2b(queue.encode() + b"\0", digest_size=16)
        identity.update(b"id:" + message.message_id.encode() if message.message_id else b"body:" + message.body)
        key = self.names.redeliveries_key(identity.hexdigest())
        pipe = self.redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, TTL_SECONDS)
        count, _ = await pipe.execute()
        return int(count)

"""Whether a participant is there at all: the consumer count of its queue, from a passive declare.

Read at most once per `ttl` seconds per queue, so a storm of due deadlines
costs the broker one declare per participant, not one per saga. An error
reading it counts as present: holding back is an optimisation, never a
reason to stall a saga.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from participants.edge.amqp import Broker

log = logging.getLogger("saga.presence")


class Presence:
    def __init__(self, broker: Broker, ttl: float = 2.0) -> None:
        self.broker = broker
        self.ttl = ttl
        self._seen: dict[str, tuple[float, int]] = {}
        self._lock = asyncio.Lock()

    async def consumers(self, queue: str) -> int:
        """How many consumers `queue` has (a count up to `ttl` seconds old); 1 if it cannot be read."""
        now = asyncio.get_running_loop().time()
        seen = self._seen.get(queue)
        if seen is not None and now - seen[0] < self.ttl:
            return seen[1]
        async with self._lock:
            seen = self._seen.get(queue)
            if seen is not None and now - seen[0] < self.ttl:
                return seen[1]
            count = 1
            try:
                channel = await self.broker.connection.channel(publisher_confirms=False)
                try:
                    declared = await channel.declare_queue(queue, passive=True)
                    count = int(declared.declaration_result.consumer_count or 0)
                finally:
                    with contextlib.suppress(Exception):
                        await channel.close()
            except Exception as exc:
                log.debug("cannot read the consumers of %s: %r", queue, exc)
            self._seen[queue] = (asyncio.get_running_loop().time(), count)
            return count

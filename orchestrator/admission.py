"""How many sagas may be in flight: starts beyond `--max-in-flight` wait in `<ns>.start`.

The count is the namespace's, read from Redis: the sagas with a deadline (every
saga waiting for a reply, a backoff or a timer has one; a finished or stuck
saga has none). So it survives a crash and is shared by every orchestrator,
and nothing is held that a restart could lose: a start waiting for room is an
unacked delivery, which goes back to the queue if this process dies. The
count is refreshed every `every` seconds (one pipelined read of the buckets)
and counted up locally between refreshes, so several orchestrators can
overshoot the limit by what each admits within one refresh.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis

from statemachines.names import BUCKETS, Names

log = logging.getLogger("saga.admission")
DEFAULT_MAX_IN_FLIGHT = 10_000


class Admission:
    def __init__(self, redis: Redis, names: Names, limit: int, every: float = 0.25) -> None:
        self.redis = redis
        self.names = names
        self.limit = limit
        self.every = every
        self.in_flight = 0
        self._read_at = -1.0
        self._stopping = False
        self._reading: asyncio.Lock = asyncio.Lock()

    async def read(self) -> int:
        """The namespace's sagas in flight, from the deadline index of every bucket."""
        pipe = self.redis.pipeline(transaction=False)
        for bucket in range(BUCKETS):
            pipe.zcard(self.names.deadline_key(bucket))
        self.in_flight = sum(await pipe.execute())
        self._read_at = asyncio.get_running_loop().time()
        return self.in_flight

    async def admit(self) -> None:
        """Return once there is room for one more saga (at once while stopping: the drain must not wait)."""
        loop = asyncio.get_running_loop()
        waited = False
        while not self._stopping:
            async with self._reading:
                if loop.time() - self._read_at >= self.every:
                    await self.read()
            if self.in_flight < self.limit:
                break
            if not waited:
                waited = True
                log.info("%d sagas in flight, the limit: starts wait in the queue", self.in_flight)
            await asyncio.sleep(self.every)
        self.in_flight += 1

    def stop(self) -> None:
        self._stopping = True

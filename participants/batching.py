"""Redis commands issued in one turn of the event loop go out as one pipeline.

With many messages in flight, most commands then share their round trip,
their socket write and their reply read with others, and a burst (a
thousand due timeouts at once) needs one connection, not a thousand.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

Pending = tuple[tuple[Any, ...], "asyncio.Future[Any]"]


class Batcher:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._pending: list[Pending] | None = None

    async def execute(self, *command: Any) -> Any:
        """Run one raw command (as `Redis.execute_command` takes it) in the next batch."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._pending is None:
            self._pending = []
            loop.call_soon(self._flush)
        self._pending.append((command, future))
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending or [], None
        asyncio.get_running_loop().create_task(self._run(pending))

    async def _run(self, pending: list[Pending]) -> None:
        try:
            if len(pending) == 1:
                results: list[Any] = [await _one(self.redis, pending[0][0])]
            else:
                pipe = self.redis.pipeline(transaction=False)
                for command, _ in pending:
                    pipe.execute_command(*command)
                results = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            results = [exc] * len(pending)
        for (_, future), result in zip(pending, results, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


async def _one(redis: Redis, command: tuple[Any, ...]) -> Any:
    try:
        return await redis.execute_command(*command)  # type: ignore[no-untyped-call]
    except Exception as exc:
        return exc

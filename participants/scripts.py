"""Lua scripts kept as `.lua` files beside the code that calls them, run by SHA.

Calls made in the same turn of the event loop go to Redis in one pipeline:
with many messages in flight, most calls share their round trip, socket
write and reply read with others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

Call = tuple[str, Sequence[str], Sequence[Any], "asyncio.Future[Any]"]


class Scripts:
    """The scripts in one folder, loaded once and reloaded when Redis forgot them.

    redis-py's own Script objects check SCRIPT EXISTS before every pipeline;
    a round trip per message is too dear on the hot path.
    """

    def __init__(self, folder: Path) -> None:
        self.source = {path.stem: path.read_text() for path in sorted(folder.glob("*.lua"))}
        self.sha: dict[str, str] = {}
        self._batches: dict[Redis, list[Call]] = {}

    async def load(self, redis: Redis) -> None:
        for name, source in self.source.items():
            self.sha[name] = await redis.script_load(source)

    async def call(self, redis: Redis, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if script not in self.sha:
            # Not loaded by this process yet (e.g. a refund is the first thing a
            # restarted payment participant does): load rather than fail.
            await self.load(redis)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        batch = self._batches.get(redis)
        if batch is None:
            batch = self._batches[redis] = []
            loop.call_soon(self._flush, redis)
        batch.append((script, keys, args, future))
        return await future

    def _flush(self, redis: Redis) -> None:
        asyncio.get_running_loop().create_task(self._run(redis, self._batches.pop(redis)))

    async def _run(self, redis: Redis, batch: list[Call]) -> None:
        try:
            if len(batch) == 1:
                script, keys, args, _ = batch[0]
                results: list[Any] = [await self._single(redis, script, keys, args)]
            else:
                pipe = redis.pipeline(transaction=False)
                for script, keys, args, _ in batch:
                    pipe.evalsha(self.sha[script], len(keys), *keys, *args)
                results = await pipe.execute(raise_on_error=False)
                for index, result in enumerate(results):
                    if isinstance(result, NoScriptError):
                        script, keys, args, _ = batch[index]
                        try:
                            results[index] = await self._single(redis, script, keys, args)
                        except Exception as exc:
                            results[index] = exc
        except Exception as exc:
            results = [exc] * len(batch)
        for (_, _, _, future), result in zip(batch, results, strict=True):
            if future.done():  # its caller was cancelled
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _single(self, redis: Redis, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await redis.evalsha(self.sha[script], len(keys), *keys, *args)
        except NoScriptError:
            await self.load(redis)
            return await redis.evalsha(self.sha[script], len(keys), *keys, *args)

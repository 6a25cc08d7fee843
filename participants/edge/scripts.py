"""Lua scripts kept as `.lua` files beside the code that calls them, run by SHA."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from participants.edge.batching import batcher


class Scripts:
    """The scripts in one folder, loaded once and reloaded when Redis forgot them.

    Calls go out in the client's shared batches (see `batching`). redis-py's own Script
    objects check SCRIPT EXISTS before every pipeline, a round trip too dear
    for the hot path.
    """

    def __init__(self, folder: Path) -> None:
        self.source = {path.stem: path.read_text() for path in sorted(folder.glob("*.lua"))}
        self.sha: dict[str, str] = {}

    async def load(self, redis: Redis) -> None:
        for name, source in self.source.items():
            self.sha[name] = await redis.script_load(source)

    async def call_then(
        self, redis: Redis, script: str, keys: Sequence[str], args: Sequence[Any], then: tuple[Any, ...]
    ) -> tuple[Any, Any]:
        """The script, and `then` (a WAIT) right after it on the same connection: (its result, then's)."""
        if script not in self.sha:
            await self.load(redis)
        batch = batcher(redis)
        for attempt in range(2):
            result, after = await batch.execute_many(("EVALSHA", self.sha[script], len(keys), *keys, *args), then)
            if isinstance(result, NoScriptError) and attempt == 0:
                await self.load(redis)
                continue
            for value in (result, after):
                if isinstance(value, Exception):
                    raise value
            return result, after
        raise AssertionError("unreachable")

    async def call(self, redis: Redis, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if script not in self.sha:
            # Not loaded by this process yet (e.g. a refund is the first thing a
            # restarted payment participant does): load rather than fail.
            await self.load(redis)
        batch = batcher(redis)
        try:
            return await batch.execute("EVALSHA", self.sha[script], len(keys), *keys, *args)
        except NoScriptError:  # Redis restarted and forgot them
            await self.load(redis)
            return await batch.execute("EVALSHA", self.sha[script], len(keys), *keys, *args)

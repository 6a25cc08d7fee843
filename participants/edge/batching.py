"""Redis commands go out in batches, one batch at a time on one connection.

Commands issued while a batch is on the wire wait and leave together as the
next batch: with many messages in flight, most commands then share their
round trip, their socket write and their reply read with many others, and a
burst (a thousand due timeouts at once) needs one connection, not a
thousand. redis-py's per-call path (pool, lock, timeout, retry wrapper) costs
more than the command on the hot path, so a batch is written on a connection
held for good and its replies are read straight off it.

Replies come back raw (no redis-py response callbacks): bytes, ints, lists.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Pending = tuple[tuple[Any, ...], "asyncio.Future[Any]"]
# A batch whose connection was lost is sent again on a new one; opening it
# retries with backoff on its own (see connections.connect_redis).
RETRIES = 3
LOST = (RedisConnectionError, RedisTimeoutError, OSError)

_batchers: weakref.WeakKeyDictionary[Redis, Batcher] = weakref.WeakKeyDictionary()


def batcher(redis: Redis) -> Batcher:
    """The one batcher of this client, so that all its callers share batches."""
    found = _batchers.get(redis)
    if found is None:
        found = _batchers[redis] = Batcher(redis)
    return found


class Batcher:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._pending: list[Pending] = []
        self._running = False
        self._connection: AbstractConnection | None = None
        self._task: asyncio.Task[None] | None = None  # held: the loop keeps only weak references

    async def execute(self, *command: Any) -> Any:
        """Run one raw command (as `Redis.execute_command` takes it) in the next batch."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((command, future))
        if not self._running:
            self._running = True
            # The task's first step runs on the next turn: the rest of this one joins the batch.
            self._task = loop.create_task(self._run())
        return await future

    async def _run(self) -> None:
        batch: list[Pending] = []
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await self._send(batch)
                except Exception as exc:
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():  # its caller was cancelled
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
                batch = []
        finally:
            self._running = False
            # Only a cancelled batcher gets here with callers waiting: they must not wait forever.
            for _, future in batch + self._pending:
                future.cancel()
            self._pending = []

    async def _send(self, batch: list[Pending]) -> list[Any]:
        delay = 0.02
        for attempt in range(RETRIES + 1):
            try:
                connection = await self._connect()
                await connection.send_packed_command(pack([command for command, _ in batch]), check_health=False)
                return [await _read(connection) for _ in batch]
            except LOST:
                if self._connection is not None:
                    await self._connection.disconnect(nowait=True)
                if attempt == RETRIES:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")

    async def _connect(self) -> AbstractConnection:
        if self._connection is None:
            # Taken from the client's pool and never given back, so that
            # closing the client closes it too.
            self._connection = await self.redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        if not self._connection.is_connected:
            await self._connection.connect()
        return self._connection


def pack(commands: list[tuple[Any, ...]]) -> bytes:
    """The commands in RESP, as redis-py packs them, at a third of its cost (a commit has fifteen arguments)."""
    out = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            raw = arg if isinstance(arg, bytes) else (arg if isinstance(arg, str) else repr(arg)).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


async def _read(connection: AbstractConnection) -> Any:
    try:
        return await connection.read_response()
    except ResponseError as exc:  # a failed command fails alone, not its batch
        return exc

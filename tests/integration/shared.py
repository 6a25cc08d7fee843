"""A watch on the shared RabbitMQ and Redis: a whole test run must leave them running throughout.

It holds one AMQP connection open for the whole run (a broker that stops,
restarts or has its application stopped closes it) and notes Redis's run
id (a Redis that restarted has a new one). Its own thread and event loop
keep the connection's heartbeats going whatever the tests do with theirs.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import aio_pika
from redis.asyncio import Redis


class Watch:
    def __init__(self, amqp_url: str, redis_url: str) -> None:
        self.amqp_url = amqp_url
        self.redis_url = redis_url
        self.problems: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="shared-services-watch", daemon=True)
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._run_id: str | None = None

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(60)

    def stop(self) -> list[str]:
        """What went wrong since `start` (nothing: an empty list); the watch ends."""
        try:
            asyncio.run_coroutine_threadsafe(self._check(), self._loop).result(60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        return self.problems

    async def _open(self) -> None:
        self._connection = await aio_pika.connect(self.amqp_url, client_properties={"connection_name": "test watch"})
        self._connection.close_callbacks.add(self._closed)
        self._run_id = await self._redis_run_id()

    def _closed(self, _: Any, exc: BaseException | None = None) -> None:
        self.problems.append(f"RabbitMQ at {self.amqp_url} closed the connection held for the whole run ({exc!r})")

    async def _redis_run_id(self) -> str:
        client = Redis.from_url(self.redis_url)
        try:
            return str((await client.info("server"))["run_id"])
        finally:
            await client.aclose()

    async def _check(self) -> None:
        connection = self._connection
        if connection is not None:
            connection.close_callbacks.discard(self._closed)
            if not connection.is_closed:
                await connection.close()
        try:
            run_id = await self._redis_run_id()
        except Exception as exc:
            self.problems.append(f"Redis at {self.redis_url} does not answer at the end of the run ({exc!r})")
            return
        if run_id != self._run_id:
            self.problems.append(
                f"Redis at {self.redis_url} restarted during the run (run id {self._run_id} -> {run_id})"
            )

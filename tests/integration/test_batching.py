"""Batched Redis commands against a real Redis: nothing lost when the connection dies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from participants.edge import batching
from participants.edge.batching import batcher
from participants.edge.connections import connect_redis
from participants.edge.settings import Settings


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[Redis]:
    """A client as the orchestrator and the workers open it."""
    opened = await connect_redis(settings.redis_url)
    yield opened
    await opened.aclose()


async def test_many_concurrent_callers_each_get_their_own_reply(
    settings: Settings, client: Redis, redis: Redis, cleanup: set[str]
) -> None:
    key = f"{settings.namespace}:counter"
    replies = await asyncio.gather(*(batcher(client).execute("INCR", key) for _ in range(500)))
    assert sorted(replies) == list(range(1, 501))
    assert int(await redis.get(key) or 0) == 500


async def test_a_failing_command_fails_alone(settings: Settings, client: Redis, cleanup: set[str]) -> None:
    key = f"{settings.namespace}:text"
    batch = batcher(client)
    results = await asyncio.gather(
        batch.execute("SET", key, "a"),
        batch.execute("INCR", key),  # not a number
        batch.execute("GET", key),
        return_exceptions=True,
    )
    assert results[0] == b"OK" and results[2] == b"a"
    assert isinstance(results[1], ResponseError)


async def test_a_killed_connection_is_reopened_and_the_batch_sent_again(
    settings: Settings, client: Redis, redis: Redis, cleanup: set[str]
) -> None:
    key = f"{settings.namespace}:kept"
    batch = batcher(client)
    assert await batch.execute("SET", key, "1") == b"OK"
    held = await batch.execute("CLIENT", "ID")
    assert await redis.execute_command("CLIENT", "KILL", "ID", held) == 1
    assert await asyncio.gather(*(batch.execute("GET", key) for _ in range(10))) == [b"1"] * 10


async def test_redis_gone_for_good_fails_the_callers_instead_of_hanging(
    client: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batching, "RETRIES", 2)
    batch = batcher(client)
    await batch.execute("PING")
    # Point the held connection at a port where nothing listens.
    connection = batch._connection
    assert connection is not None
    await connection.disconnect()
    connection.port = _free_port()  # type: ignore[attr-defined]
    connection.retry = Retry(NoBackoff(), 0)
    with pytest.raises(RedisConnectionError):
        await asyncio.wait_for(batch.execute("PING"), 10)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SLOW = """
local began = redis.call('TIME')
repeat
  local now = redis.call('TIME')
until (now[1] - began[1]) * 1000000 + (now[2] - began[2]) > 200000
return 'slow'
"""


async def test_callers_of_a_batch_cut_short_are_told_and_the_next_gets_its_own_replies(client: Redis) -> None:
    batch = batcher(client)
    slow = asyncio.ensure_future(batch.execute("EVAL", SLOW, 0))
    await asyncio.sleep(0.05)  # the script runs in Redis, its reply not yet read
    assert batch._task is not None
    batch._task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(slow, 5)
    assert await batch.execute("ECHO", "mine") == b"mine"

"""The private services fault tests stand on: their own ports and data, restartable, and gone afterwards."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aio_pika
from redis.asyncio import Redis

from tests.integration.private import rabbit_node, redis_server
from tests.integration.shared import Watch


async def test_a_private_rabbitmq_node_survives_a_kill_with_its_durable_queues(tmp_path: Path) -> None:
    async with rabbit_node(tmp_path) as node:
        connection = await aio_pika.connect(node.url)
        channel = await connection.channel()
        await channel.declare_queue("kept", durable=True, arguments={"x-queue-type": "quorum"})
        await connection.close()
        node.kill()
        await node.wait_dead()
        await node.start()
        connection = await aio_pika.connect(node.url)
        channel = await connection.channel()
        queue = await channel.declare_queue("kept", passive=True)
        assert queue.name == "kept"
        await connection.close()
    assert not _files(tmp_path), "the node's data directory should be gone"


def _files(folder: Path) -> list[Path]:
    return list(folder.iterdir())


async def test_a_private_redis_keeps_its_data_across_a_kill(tmp_path: Path) -> None:
    async with redis_server(tmp_path) as server:
        client = Redis.from_url(server.url)
        await client.set("k", "v")
        await client.execute_command("CONFIG", "SET", "appendfsync", "always")
        await client.set("k2", "v2")
        await client.aclose()
        await server.kill()
        await server.start()
        client = Redis.from_url(server.url)
        assert await client.get("k2") == b"v2"
        await client.aclose()


async def test_the_watch_on_the_shared_services_sees_a_broker_stop_and_a_redis_restart(tmp_path: Path) -> None:
    """What guards the shared services, shown on private ones: it must notice what it is there to notice."""
    async with rabbit_node(tmp_path) as node, redis_server(tmp_path) as server:
        quiet = Watch(node.url, server.url)
        await asyncio.to_thread(quiet.start)
        assert await asyncio.to_thread(quiet.stop) == []

        watch = Watch(node.url, server.url)
        await asyncio.to_thread(watch.start)
        await node.stop_app()
        await node.start_app()
        await server.stop()
        await server.start()
        problems = await asyncio.to_thread(watch.stop)
        assert len(problems) == 2, problems
        assert "closed the connection held for the whole run" in problems[0]
        assert "restarted during the run" in problems[1]

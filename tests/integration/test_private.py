"""The private services fault tests stand on: their own ports and data, restartable, and gone afterwards."""

from __future__ import annotations

from pathlib import Path

import aio_pika
from redis.asyncio import Redis

from tests.integration.private import rabbit_node, redis_server


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

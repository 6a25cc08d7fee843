"""The broker restarts and Redis drops every connection mid-run: the processes reconnect, nothing is lost.

Real processes (orchestrator.tools.fleet) run a few hundred order and trip sagas.
Part-way, RabbitMQ's application is stopped and started again (its quorum
queues and persistent messages survive, its connections do not), and later
Redis kills every connection the orchestrator and participants hold (CLIENT
KILL by id; other clients of the same Redis are left alone). The processes
must reconnect by themselves, serve the sagas started after each outage, and
end every saga as its data says, with the participants' own state agreeing.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis

from orchestrator.client import SagaClient
from orchestrator.tools.fleet import EXAMPLES
from participants.edge.settings import Settings
from tests.integration.chaos import (
    ChaosFleet,
    assert_nothing_lost,
    audit,
    broker_stopped,
    chunks,
    dead_letters,
    kill_redis_clients,
    plan,
    queues,
    start_all,
    stop,
    summary,
    wait_until_drained,
    wait_until_ended,
    when_part_ended,
)
from tests.integration.conftest import remove_namespace
from tests.integration.private import RabbitNode, rabbit_node

SEED = int(os.environ.get("SAGA_CHAOS_SEED", "4242")) + 1
ORDERS = 240
TRIPS = 60
ENDED_WITHIN = 120.0
LOCAL = ("127.0.0.1", "localhost", "::1")


def local_redis(settings: Settings) -> None:
    """Redis connections are found through /proc: Redis must run on this machine."""
    if urlsplit(settings.redis_url).hostname not in LOCAL or not Path("/proc/net/tcp").exists():
        pytest.skip("needs a local Redis and Linux /proc")


async def test_a_broker_restart_and_lost_redis_connections_lose_nothing(settings: Settings, tmp_path: Path) -> None:
    local_redis(settings)
    async with rabbit_node(tmp_path) as node:
        await _outages(replace(settings, amqp_url=node.url), node, tmp_path)


async def _outages(settings: Settings, node: RabbitNode, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    sagas = plan(rng, ORDERS, TRIPS)
    before_broker, before_redis, after = chunks(sagas, 3)
    fleet = ChaosFleet(settings, tmp_path / "logs")
    redis = Redis.from_url(settings.redis_url)
    redis_port = urlsplit(settings.redis_url).port or 6379
    client: SagaClient | None = None
    began = time.monotonic()
    killed: list[Counter[int]] = []
    try:
        await fleet.start_examples()
        client = await SagaClient.connect(settings)

        await start_all(client, before_broker)
        in_flight = [await when_part_ended(redis, settings.names, before_broker, rng.uniform(0.05, 0.5))]
        async with broker_stopped(node):
            await asyncio.sleep(rng.uniform(1.0, 3.0))
        back = time.monotonic()
        await fleet.ready(queues(settings.names), timeout=60)  # every process consumes its queue again
        reconnected = time.monotonic() - back
        # The client reconnects too; its starts are retried until it has.
        await start_all(client, before_redis)

        in_flight.append(await when_part_ended(redis, settings.names, before_redis, rng.uniform(0.05, 0.5)))
        pids = [p.pid for p in fleet.processes.values()]
        for _ in range(2):
            killed.append(await kill_redis_clients(redis, pids, redis_port))
            await asyncio.sleep(rng.uniform(0.2, 0.8))
        await start_all(client, after)

        ended, _ = await wait_until_ended(redis, settings.names, sagas, ENDED_WITHIN)
        await wait_until_drained(settings.amqp_url, queues(settings.names))
        result = await audit(redis, settings.names, sagas, ended)
        result.dead_lettered = await dead_letters(settings.amqp_url, settings.names, result.dead_reasons)
        line = summary(f"outages (seed {SEED})", sagas, result, fleet, time.monotonic() - began)
        line += f"; broker restarts 1 (all queues consumed again after {reconnected:.1f}s)"
        line += f", Redis connections killed {' + '.join(str(k.total()) for k in killed)}"
        line += f"; sagas of the wave still running at the broker stop, the Redis kill: {in_flight}"
        print(line)
        assert all(in_flight), f"each outage should hit sagas in flight: {line}"
        assert all(killed[0][pid] for pid in pids), f"each process should have lost its Redis connections: {killed[0]}"
        assert_nothing_lost(line, result, fleet)
    finally:
        if client is not None:
            await client.close()
        await redis.aclose()
        await stop(fleet)
        await remove_namespace(settings, set(EXAMPLES))

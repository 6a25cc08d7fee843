"""On a RabbitMQ cluster of 3 nodes, a node killed mid-run loses no saga and doubles no step.

The cluster is the test's own (tests/integration/private.py); Redis is the
shared one. Two orchestrators, the six example participants and the client
are given all three nodes' URLs and connect to the first that answers; every
queue is a quorum queue, replicated on the three nodes. While sagas are in
flight, the first node (the one every process connected to) is killed with
SIGKILL: each process reconnects to a surviving node, a publish that was not
confirmed stays in the outbox and goes again, and the killed node comes back
and rejoins. The audit is the crash test's: every saga ended as planned and
every participant's books agree with it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid
from pathlib import Path

import pytest

from orchestrator.client import SagaClient
from orchestrator.tools.fleet import EXAMPLES
from participants.edge.connections import connect_redis
from participants.edge.settings import Settings
from tests.integration.chaos import (
    ChaosFleet,
    assert_nothing_lost,
    audit,
    dead_letters,
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
from tests.integration.private import rabbit_cluster

pytestmark = pytest.mark.slow
SEED = 1415


async def test_sagas_from_two_orchestrators_survive_a_rabbitmq_node_killed(tmp_path: Path, settings: Settings) -> None:
    rng = random.Random(SEED)
    sagas = plan(rng, 120, 40, prefix=f"rq{uuid.uuid4().hex[:4]}-")
    half = len(sagas) // 2
    async with rabbit_cluster(tmp_path, 3) as nodes:
        settings = dataclasses.replace(settings, amqp_url=",".join(node.url for node in nodes))
        fleet = ChaosFleet(settings, tmp_path / "logs")
        redis = await connect_redis(settings.redis_url)
        client: SagaClient | None = None
        began = time.monotonic()
        try:
            await fleet.start_examples()
            fleet.orchestrator("orchestrator-2")
            await fleet.up("orchestrator-2")
            client = await SagaClient.connect(settings)
            await start_all(client, sagas[:half])
            running = await when_part_ended(redis, settings.names, sagas[:half], 0.2)
            victim = nodes[0]
            victim.kill()
            await victim.wait_dead()
            await start_all(client, sagas[half:])  # published while every process moves to a surviving node
            # Before the node comes back, sagas end on the two survivors alone.
            unfinished = await when_part_ended(redis, settings.names, sagas, 0.9)
            survived = len(sagas) - unfinished
            await victim.start()  # back on its own data: it rejoins the cluster and its quorum queue members catch up
            ended, _ = await wait_until_ended(redis, settings.names, sagas, 120)
            await wait_until_drained(settings.amqp_url, queues(settings.names))
            result = await audit(redis, settings.names, sagas, ended)
            result.dead_lettered = await dead_letters(settings.amqp_url, settings.names, result.dead_reasons)
            line = summary("rabbitmq node killed", sagas, result, fleet, time.monotonic() - began)
            line += f"; running at the kill {running}, ended before the node came back {survived}"
            print(line)
            assert running, f"the node was killed with sagas in flight: {line}"
            # What was lost or doubled first: it says more than how many sagas ended before the node came back.
            assert_nothing_lost(line, result, fleet)
            assert survived >= 0.9 * len(sagas), f"the processes should carry on on the surviving nodes: {line}"
        finally:
            if client is not None:
                await client.close()
            await stop(fleet)
            await asyncio.sleep(0)
            await redis.aclose()
            await remove_namespace(settings, set(EXAMPLES))

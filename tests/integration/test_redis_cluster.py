"""On a Redis Cluster of 3 masters and 3 replicas, a master killed mid-run loses no saga and doubles no step.

The cluster is the test's own (tests/integration/private.py); RabbitMQ is
the shared one. Two orchestrators and the six example participants run as
real processes with SAGA_REDIS_REPLICAS=1, so a transition is published, and
a participant's reply sent, only once a replica has it. While sagas are in
flight, one master is killed with SIGKILL: its replica takes over its slots
(the cluster says CLUSTERDOWN meanwhile, which every process waits out),
and the killed server comes back as the new master's replica. The audit is
the crash test's: every saga ended as planned and every participant's books
agree with it.
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
from orchestrator.store import RedisStore
from orchestrator.tools.fleet import EXAMPLES
from participants.edge.batching import ClusterBatcher, batcher
from participants.edge.connections import connect_redis
from participants.edge.settings import Settings
from statemachines.instance import SagaInstance
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
from tests.integration.conftest import eventually, remove_namespace
from tests.integration.private import RedisCluster, RedisServer, redis_cluster

pytestmark = pytest.mark.slow
SEED = 1414


async def failed_over(cluster: RedisCluster, dead: RedisServer) -> None:
    """Until a replica has taken the dead master's slots and the cluster serves every slot again."""

    async def ok() -> bool:
        alive = [s for s in cluster.servers if s.running]
        infos = [await s.cli("CLUSTER", "INFO") for s in alive]
        return len(await cluster.masters()) == 3 and all("cluster_state:ok" in i for i in infos)

    await eventually(ok, timeout=30, every=0.2)


async def test_the_store_runs_on_a_cluster_one_slot_per_commit(tmp_path: Path, settings: Settings) -> None:
    async with redis_cluster(tmp_path) as cluster:
        redis = await connect_redis(cluster.url)
        try:
            assert isinstance(batcher(redis), ClusterBatcher), "a cluster node's URL gives a cluster client"
            store = RedisStore(redis, settings.names, replicas=1)
            await store.connect()
            await store.check_layout()
            # Sagas in every bucket: each commit's five keys in its bucket's slot, on whichever master has it.
            sagas = [f"probe-{n}" for n in range(300)]
            for saga_id in sagas:
                inst = SagaInstance(
                    saga_id=saga_id, saga_type="probe", definition_version=1, state="step", status="running",
                    rev=1, updated_at=time.time(), due_at=time.time() - 1,
                )  # fmt: skip
                assert await store.commit(0, inst, [], b"x")
            assert len({settings.names.bucket(s) for s in sagas}) > 100
            due = await store.claim_due(time.time(), 30, 1000)
            assert sorted(s for s, _ in due) == sorted(sagas)
            pending = await store.pending_outboxes(time.time() + 60, 0)
            assert sorted(s for s, _, _ in pending) == sorted(sagas)
            await store.clear_outboxes([(s, 1) for s in sagas])
            assert await store.pending_outboxes(time.time() + 60, 0) == []
            loaded = await store.load(sagas[0])
            assert loaded is not None and loaded.rev == 1
        finally:
            await redis.aclose()


async def test_sagas_from_two_orchestrators_survive_a_redis_master_killed(tmp_path: Path, settings: Settings) -> None:
    rng = random.Random(SEED)
    sagas = plan(rng, 160, 40, prefix=f"rc{uuid.uuid4().hex[:4]}-")
    half = len(sagas) // 2
    async with redis_cluster(tmp_path) as cluster:
        settings = dataclasses.replace(settings, redis_url=cluster.url, redis_replicas=1)
        fleet = ChaosFleet(settings, tmp_path / "logs")
        redis = await connect_redis(cluster.url)
        client: SagaClient | None = None
        began = time.monotonic()
        try:
            await fleet.start_examples()
            fleet.orchestrator("orchestrator-2")
            await fleet.up("orchestrator-2")
            client = await SagaClient.connect(settings)
            await start_all(client, sagas[:half])
            running = await when_part_ended(redis, settings.names, sagas[:half], 0.2)
            [victim, *_] = await cluster.masters()
            await victim.kill()
            killed_at = time.monotonic()
            await start_all(client, sagas[half:])  # published while the cluster fails over
            await failed_over(cluster, victim)
            failover = time.monotonic() - killed_at
            await victim.start()  # back, as the new master's replica: WAIT 1 can be met again everywhere
            ended, _ = await wait_until_ended(redis, settings.names, sagas, 120)
            await wait_until_drained(settings.amqp_url, queues(settings.names))
            result = await audit(redis, settings.names, sagas, ended)
            result.dead_lettered = await dead_letters(settings.amqp_url, settings.names, result.dead_reasons)
            line = summary("redis cluster failover", sagas, result, fleet, time.monotonic() - began)
            line += f"; running at the kill {running}, failover {failover:.1f}s"
            print(line)
            assert running, f"the master was killed with sagas in flight: {line}"
            assert_nothing_lost(line, result, fleet)
        finally:
            if client is not None:
                await client.close()
            await stop(fleet)
            await asyncio.sleep(0)
            await redis.aclose()
            await remove_namespace(settings, set(EXAMPLES))

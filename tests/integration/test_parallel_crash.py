"""kill -9 in the middle of parallel groups: 300 trips booking flight, hotel and car at once, nothing lost or doubled.

Orchestrators (two of them) and a booking participant are killed with
SIGKILL while waves of trips are inside their Parallel group, and
restarted. The audit reads the participants' own books: each completed
trip's three bookings taken once and kept, each compensated trip's bookings
given back (or never taken), every capacity level equal to what the
completed trips took.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

from redis.asyncio import Redis

from orchestrator.client import SagaClient
from participants.edge.settings import Settings
from tests.integration.chaos import (
    ChaosFleet,
    assert_nothing_lost,
    audit,
    chunks,
    dead_letters,
    plan,
    start_all,
    stop,
    summary,
    wait_until_drained,
    wait_until_ended,
    when_part_ended,
)
from tests.integration.conftest import remove_namespace

SEED = int(os.environ.get("SAGA_CHAOS_SEED", "4242"))
TRIPS = 300
BOOKINGS = ("flight", "hotel", "car")
ROUNDS: list[tuple[str, ...]] = [
    ("orchestrator",),
    ("hotel",),
    ("orchestrator-2",),
    ("orchestrator", "orchestrator-2", "flight"),
]


async def test_kill_9_inside_parallel_groups_loses_and_doubles_nothing(settings: Settings, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    sagas = plan(rng, 0, TRIPS)
    fleet = ChaosFleet(settings, tmp_path / "logs")
    redis = Redis.from_url(settings.redis_url)
    client: SagaClient | None = None
    names = settings.names
    began = time.monotonic()
    in_flight: list[int] = []
    try:
        for name in ("orchestrator", "orchestrator-2"):
            fleet.orchestrator(name, "--sagas", "tests.integration.parallel_sagas")
        for participant in BOOKINGS:
            fleet.participant(participant)
        await fleet.ready([names.start_queue, names.reply_queue, *(names.participant_queue(p) for p in BOOKINGS)])
        client = await SagaClient.connect(settings)
        for wave, victims in zip(chunks(sagas, len(ROUNDS)), ROUNDS, strict=True):
            await start_all(client, wave)
            in_flight.append(await when_part_ended(redis, names, wave, rng.uniform(0.05, 0.3)))
            for victim in victims:
                fleet.kill(victim)
            await asyncio.sleep(rng.uniform(0.05, 0.8))
            for victim in victims:
                fleet.restart(victim)
            for victim in victims:
                await fleet.up(victim)
        ended, _ = await wait_until_ended(redis, names, sagas, 120.0)
        queues = [names.start_queue, names.reply_queue, *(names.participant_queue(p) for p in BOOKINGS)]
        await wait_until_drained(settings.amqp_url, queues)
        result = await audit(redis, names, sagas, ended, parallel=frozenset({"trip"}))
        result.dead_lettered = await dead_letters(settings.amqp_url, names, result.dead_reasons)
        line = summary(f"parallel crash test (seed {SEED})", sagas, result, fleet, time.monotonic() - began)
        line += f"; trips of the wave still running at each kill: {in_flight}"
        print(line)
        assert sum(1 for n in in_flight if n) >= len(ROUNDS) - 1, f"kills should hit trips in flight: {line}"
        assert_nothing_lost(line, result, fleet)
        # The trips really ran in parallel: their group's state is in every history.
        store = client.store
        for saga in sagas[:20]:
            assert any(h.dest == "book" for h in await store.history(saga.saga_id)), saga.saga_id
    finally:
        if client is not None:
            await client.close()
        await redis.aclose()
        await stop(fleet)
        await remove_namespace(settings, set(BOOKINGS))

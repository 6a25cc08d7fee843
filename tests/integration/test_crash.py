"""kill -9, again and again, with hundreds of sagas in flight: nothing is lost, nothing is applied twice.

The orchestrator and the six example participants run as real processes
(orchestrator.tools.fleet). Waves of order and trip sagas, about 30% of them told
to fail at a random step, are started while the orchestrator (one of two,
for part of the run) and the payment and inventory participants are killed
with SIGKILL at random moments and restarted. At the end every saga must be
completed or compensated, as its data says, and the participants' own state
in Redis must show it: each completed saga's steps taken once and kept, each
compensated saga's steps given back, every stock level equal to its initial
level minus exactly what the completed sagas took.

The random choices are seeded (SAGA_CHAOS_SEED); run with `-s` to see the
one-line summary.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

from redis.asyncio import Redis

from orchestrator.client import SagaClient
from orchestrator.tools.fleet import EXAMPLES
from participants.edge.settings import Settings
from tests.integration.chaos import (
    ChaosFleet,
    assert_nothing_lost,
    audit,
    chunks,
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

SEED = int(os.environ.get("SAGA_CHAOS_SEED", "4242"))
ORDERS = 540
TRIPS = 120
# One wave of sagas per round; after each wave, at a random moment, kill these (then restart them).
ROUNDS: list[tuple[str, ...]] = [
    ("orchestrator",),
    ("payment",),  # orchestrator-2 joins in this round
    ("orchestrator",),
    ("inventory",),
    ("orchestrator-2",),
    ("orchestrator", "payment"),
    ("orchestrator", "orchestrator-2", "inventory"),  # no orchestrator at all for a while
    ("orchestrator",),
]
SECOND_FROM = 1
ENDED_WITHIN = 120.0


async def test_kill_9_loses_no_saga_and_applies_no_command_twice(settings: Settings, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    sagas = plan(rng, ORDERS, TRIPS)
    fleet = ChaosFleet(settings, tmp_path / "logs")
    redis = Redis.from_url(settings.redis_url)
    client: SagaClient | None = None
    began = time.monotonic()
    in_flight: list[int] = []
    try:
        await fleet.start_examples()
        client = await SagaClient.connect(settings)
        for round_, (wave, victims) in enumerate(zip(chunks(sagas, len(ROUNDS)), ROUNDS, strict=True)):
            if round_ == SECOND_FROM:
                fleet.orchestrator("orchestrator-2")
                await fleet.up("orchestrator-2")
            await start_all(client, wave)
            # A random moment while the wave is in flight (every other round as soon as its starts are
            # published, so that starts are in flight too); then down for a random while.
            part = 0.0 if round_ % 2 == 0 else rng.uniform(0.05, 0.4)
            in_flight.append(await when_part_ended(redis, settings.names, wave, part))
            for victim in victims:
                fleet.kill(victim)
            await asyncio.sleep(rng.uniform(0.05, 1.0))
            for victim in victims:
                fleet.restart(victim)
            for victim in victims:
                await fleet.up(victim)
        ended, _ = await wait_until_ended(redis, settings.names, sagas, ENDED_WITHIN)
        await wait_until_drained(settings.amqp_url, queues(settings.names))
        result = await audit(redis, settings.names, sagas, ended, parallel=frozenset({"trip"}))
        result.dead_lettered = await dead_letters(settings.amqp_url, settings.names, result.dead_reasons)
        line = summary(f"crash test (seed {SEED})", sagas, result, fleet, time.monotonic() - began)
        line += f"; sagas of the wave still running at each kill: {in_flight}"
        print(line)
        # A wave can finish between two looks at it; most kills must still land mid-wave.
        assert sum(1 for n in in_flight if n) >= len(ROUNDS) - 2, f"kills should hit sagas in flight: {line}"
        assert sum(fleet.kills[n] for n in ("orchestrator", "orchestrator-2")) >= 3, line
        assert fleet.kills["payment"] + fleet.kills["inventory"] >= 2, line
        assert_nothing_lost(line, result, fleet)
    finally:
        if client is not None:
            await client.close()
        await redis.aclose()
        await stop(fleet)
        await remove_namespace(settings, set(EXAMPLES))


async def test_a_participant_killed_and_restarted_can_compensate_at_once(settings: Settings, tmp_path: Path) -> None:
    """A refund may be the first command a restarted payment participant gets: it must work like any other."""
    fleet = ChaosFleet(settings, tmp_path / "logs")
    client: SagaClient | None = None
    try:
        await fleet.start_examples()
        client = await SagaClient.connect(settings)
        fleet.kill("shipping")  # the order waits at its pivot, its card charged
        saga = plan(random.Random(SEED), 1, 0)[0]
        saga.data["fail_at"] = ["create_shipment"]
        await start_all(client, [saga])

        async def charged() -> bool:
            inst = await client.status(saga.saga_id)
            return inst is not None and inst.step == "create_shipment"

        await eventually(charged, timeout=20)
        fleet.kill("payment")
        fleet.restart("payment")
        await fleet.up("payment")
        fleet.restart("shipping")  # refuses the shipment: the charge is refunded by the new payment process

        async def ended() -> str | None:
            inst = await client.status(saga.saga_id)
            return inst.status if inst is not None and inst.status in ("compensated", "stuck") else None

        assert await eventually(ended, timeout=15) == "compensated"
        history = await client.store.history(saga.saga_id)
        failed = [h.detail for h in history if h.source == "compensating_charge_payment" and h.event != "succeeded"]
        assert not failed, f"the refund failed first: {failed}"
    finally:
        if client is not None:
            await client.close()
        await stop(fleet)
        await remove_namespace(settings, set(EXAMPLES))

"""Timers live in Redis and survive the orchestrator that claimed them.

A due deadline is claimed by moving it forward by a lease, never by deleting
it (orchestrator/lua/claim.lua). So an orchestrator that claims a timeout
and dies before applying it loses nothing: once the lease runs out, a
restarted orchestrator (or any other) fires it. And several orchestrators
polling the same deadline index never fire one timeout twice.
"""

from __future__ import annotations

import dataclasses
import time
import uuid

from orchestrator.engine import Engine
from orchestrator.registry import Registry
from participants.edge.amqp import Broker
from participants.edge.settings import Settings
from statemachines.decide import Start
from statemachines.dsl import Retry, Saga, Step
from tests.integration.conftest import FAST, eventually, running
from tests.integration.scripted import Scripted, lose_actions, now, open_store, participants_of

TIMEOUT = 0.3
hold = Saga(
    "tmr_hold",
    steps=[
        Step(
            "hold",
            participant="tmr_vault",
            command="hold",
            compensation="release",
            timeout=TIMEOUT,
            retry=Retry(2, backoff=0.05, jitter=0),
            compensation_retry=Retry(3, backoff=0.05, jitter=0),
        )
    ],
)


def vault() -> Scripted:
    """Holds whatever it is asked to, but its answers to `hold` are lost; releases are answered."""
    worker = Scripted("tmr_vault", lose_actions)
    worker.act("hold", {"held": True})
    worker.act("release")
    return worker


async def test_a_timeout_claimed_by_an_orchestrator_that_died_fires_after_its_lease(
    settings: Settings, cleanup: set[str]
) -> None:
    cleanup.update(participants_of([hold]))
    lease = 1.5
    worker = vault()
    async with running(settings, [hold], [worker], orchestrators=0) as stack:
        # The first orchestrator: it starts the saga, claims the timeout when due, and dies before applying it.
        store = await open_store(settings)
        broker = await Broker.open(settings.amqp_url, settings.names)
        first = Engine(store, broker, Registry([hold]), settings.names)
        saga_id = f"tmr-{uuid.uuid4().hex[:8]}"
        started = await first.apply(saga_id, Start(saga_id=saga_id, data={}), hold)
        assert started.instance is not None and started.instance.state == "hold"
        await eventually(lambda: now(bool(worker.received)))

        async def claim() -> list[tuple[str, int]]:
            return await store.claim_due(time.time(), lease, 10)

        [(claimed, until)] = await eventually(claim)
        assert claimed == saga_id
        await broker.close()
        await first.close()  # dead: the timeout it claimed is not applied

        # The restart.
        await stack.add_orchestrator()
        restarted_at = time.time()
        assert restarted_at < until / 1000, "the new orchestrator is up while the dead one's lease still holds"
        check = await open_store(settings)
        try:

            async def compensated() -> bool:
                inst = await check.load(saga_id)
                return inst is not None and inst.status == "compensated"

            await eventually(compensated, timeout=15)
            entries = await check.history(saga_id)
        finally:
            await check.redis.aclose()
        timed_out = [h for h in entries if h.event == "timed_out"]
        assert [h.detail for h in timed_out] == [f"no reply to attempt {n} within {TIMEOUT:g}s" for n in (1, 2)]
        assert timed_out[0].at >= until / 1000, "nobody fired the claimed timeout before the lease ran out"
        assert worker.attempts(saga_id) == [("do", "hold", 1), ("do", "hold", 2), ("compensate", "release", 1)]
        assert worker.calls["release"] == [f"{saga_id}:hold"]


async def test_three_orchestrators_fire_each_of_many_timeouts_exactly_once(
    settings: Settings, cleanup: set[str]
) -> None:
    cleanup.update(participants_of([hold]))
    count = 60
    worker = vault()
    # A small claim limit, so that the three deadline loops share the work and race for it.
    tuning = dataclasses.replace(FAST, claim_limit=3)
    async with running(settings, [hold], [worker], orchestrators=3, tuning=tuning) as stack:
        ids = [await stack.client.start("tmr_hold", {"n": n}) for n in range(count)]
        store = stack.orchestrators[0].engine.store  # type: ignore[union-attr]

        async def all_compensated() -> bool:
            for saga_id in ids:
                inst = await store.load(saga_id)
                if inst is None or inst.status != "compensated":
                    return False
            return True

        await eventually(all_compensated, timeout=30)
        for saga_id in ids:
            entries = await store.history(saga_id)
            assert [(h.event, h.dest) for h in entries] == [
                ("start", "hold"),
                ("timed_out", "hold"),
                ("resend", "hold"),
                ("timed_out", "compensating_hold"),
                ("succeeded", "compensated"),
            ], saga_id
            assert worker.calls["release"].count(f"{saga_id}:hold") == 1
        # Two timeouts and one resend per saga, each applied by exactly one of the three.
        fired = [o.engine.stats["deadlines_fired"] for o in stack.orchestrators]  # type: ignore[union-attr]
        assert sum(fired) == 3 * count, fired
        assert len([n for n in fired if n]) >= 2, f"the orchestrators did not share the timers: {fired}"

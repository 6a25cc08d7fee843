"""Outboxes that can never be published are parked, and never hold up another saga's.

A crash leaves outboxes behind; the sweep re-publishes them when an
orchestrator comes up. One whose message the broker or its client refuses
for good (here a routing key over AMQP's 255 bytes, as a version before the
bounds on ids could write) must not be retried forever, and must not stop
the pass before the outboxes claimed after it.
"""

from __future__ import annotations

import time
from typing import cast

import msgspec

from orchestrator.engine import Engine
from orchestrator.registry import Registry
from orchestrator.store import RedisStore
from participants.edge import metrics
from participants.edge.amqp import Broker, Envelope, pack
from participants.edge.settings import Settings
from statemachines.decide import Start, decide
from statemachines.dsl import Saga
from statemachines.sagas import SAGAS
from statemachines.sagas import order as order_saga
from tests.integration.conftest import eventually, running
from tests.integration.scripted import cli, loaded
from tests.integration.test_end_to_end import order

BAD = "x" * 300


def ids_in_sweep_order(settings: Settings) -> tuple[str, str]:
    """`A-ctrl` and a `zz-starved...` id the sweep reaches after it: same bucket and later, or a later bucket."""
    names = settings.names
    first = "A-ctrl"
    later = next(f"zz-starved-{n}" for n in range(10_000) if names.bucket(f"zz-starved-{n}") >= names.bucket(first))
    return first, later


async def leave_outbox(store: RedisStore, saga: Saga, saga_id: str, routing_key: str | None = None) -> None:
    """What a crash leaves: a start committed, its messages in the outbox, never published."""
    engine = Engine(store, cast(Broker, None), Registry(list(SAGAS)), store.names)
    decision = decide(saga, None, Start(saga_id=saga_id, data=order()), time.time())
    assert decision.instance is not None
    envelopes = engine.envelopes(saga, decision)
    if routing_key is not None:
        envelopes = [
            msgspec.structs.replace(e, routing_key=routing_key) if e.kind == "Command" else e for e in envelopes
        ]
    assert all(isinstance(e, Envelope) for e in envelopes)
    assert await store.commit(0, decision.instance, decision.history, pack(envelopes))
    # Left a while ago: the first sweep takes both at once.
    await store.redis.zadd(store.names.outbox_index(store.names.bucket(saga_id)), {saga_id: 0})


async def test_an_unpublishable_outbox_is_parked_and_the_one_after_it_is_sent(
    settings: Settings, cleanup: set[str]
) -> None:
    from redis.asyncio import Redis

    failing, starved = ids_in_sweep_order(settings)
    redis = Redis.from_url(settings.redis_url)
    store = RedisStore(redis, settings.names)
    await store.connect()
    await leave_outbox(store, order_saga, failing, routing_key=BAD)
    await leave_outbox(store, order_saga, starved)
    metrics.enable()
    try:
        async with running(settings) as stack:
            engine = stack.orchestrators[0].engine
            assert engine is not None
            done = await eventually(lambda: loaded(store, starved, lambda i: i.status == "completed"), timeout=20)
            assert done.data["shipment_id"] == f"{starved}:create_shipment"

            stuck = await eventually(lambda: loaded(store, failing, lambda i: i.status == "stuck"))
            assert stuck.error is not None and stuck.error.code == "unpublishable"
            assert "Routing key too long" in stuck.error.message
            assert not await redis.exists(settings.names.outbox_key(failing)), "parked, not retried"
            assert (await store.counters())["parked_outboxes"] == 1
            assert metrics.current is not None
            assert b'saga_parked_outboxes_total{saga_type="order"} 1.0' in metrics.current.expose()

            shown = await cli(settings, "show", failing)
            assert shown.returncode == 0, shown.stderr
            assert "stuck" in shown.stdout and "Routing key too long" in shown.stdout

            # A pass that claims every outbox left finds nothing of the parked saga to try again.
            await engine.sweep(0.0)
            entries = await store.history(failing)
            assert [h.event for h in entries].count("fault") == 1
            assert engine.stats["parked_outboxes"] == 1
    finally:
        metrics.disable()
        await redis.aclose()


async def test_a_finished_sagas_unpublishable_outbox_is_dropped_with_a_note(
    settings: Settings, cleanup: set[str]
) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(settings.redis_url)
    store = RedisStore(redis, settings.names)
    await store.connect()
    try:
        async with running(settings) as stack:
            outcome = await stack.run("order", order())
            assert outcome.status == "completed"
            saga_id = outcome.saga_id
            inst = await store.load(saga_id)
            assert inst is not None

            # Once its own outbox is confirmed and forgotten (a moment after the outcome),
            # its last messages as an older version could have left them unconfirmed.
            async def forgotten() -> bool:
                return not await redis.exists(settings.names.outbox_key(saga_id))

            await eventually(forgotten)
            bad = Envelope("", BAD, b"{}", f"{saga_id}:x", saga_id, "SagaEvent")
            await redis.hset(settings.names.outbox_key(saga_id), mapping={"rev": inst.rev, "messages": pack([bad])})
            index = settings.names.outbox_index(settings.names.bucket(saga_id))
            await redis.zadd(index, {saga_id: 0})

            async def noted() -> list[str]:
                return [h.detail for h in await store.history(saga_id) if h.event == "parked_outbox"]

            [detail] = await eventually(noted)
            assert "Routing key too long" in detail
            assert not await redis.exists(settings.names.outbox_key(saga_id))
            assert not await redis.zscore(index, saga_id)
            after = await store.load(saga_id)
            assert after is not None and after.status == "completed", "a finished saga stays as it was"
    finally:
        await redis.aclose()

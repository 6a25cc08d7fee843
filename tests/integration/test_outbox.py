"""The outbox: a transition committed but never published is re-published by the sweep.

The orchestrator commits a transition and its messages in one Lua script,
then publishes them. A crash in between leaves the messages in the saga's
outbox; the sweep publishes them again. Should the crash come after the
publish but before the outbox is forgotten, the participant gets the command
twice and deduplicates it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import cast

from orchestrator.engine import Engine
from participants.edge.amqp import Broker, Envelope, pack
from participants.edge.settings import Settings
from statemachines.decide import Start, decide
from statemachines.dsl import Saga, Step
from statemachines.sagas import order as order_saga
from tests.integration.conftest import Stack, eventually, running
from tests.integration.scripted import Scripted, loaded, participants_of, transitions
from tests.integration.test_end_to_end import ledger, order, stock_levels

ORDER_PATH = [
    ("start", "new", "reserve_inventory"),
    ("succeeded", "reserve_inventory", "check_fraud"),
    ("succeeded", "check_fraud", "charge_payment"),
    ("succeeded", "charge_payment", "create_shipment"),
    ("succeeded", "create_shipment", "completed"),
]

courier = Saga(
    "obx_parcel",
    steps=[
        Step("ship", participant="obx_courier", command="ship", compensation="unship", timeout=10.0),
        Step("sign", participant="obx_courier", command="sign", timeout=10.0, pivot=True),
    ],
)


def engine_of(stack: Stack) -> Engine:
    engine = stack.orchestrators[0].engine
    assert engine is not None
    return engine


async def commit_without_publishing(
    engine: Engine, saga: Saga, saga_id: str, data: dict[str, object]
) -> list[Envelope]:
    """What the orchestrator does with a start up to the crash: decide and commit, messages in the outbox."""
    decision = decide(saga, None, Start(saga_id=saga_id, data=data), time.time())
    assert decision.instance is not None
    envelopes = engine.envelopes(saga, decision)
    assert await engine.store.commit(0, decision.instance, decision.history, pack(envelopes))
    return envelopes


async def test_a_start_committed_but_never_published_is_swept_and_finishes(stack: Stack) -> None:
    engine = engine_of(stack)
    before = await stock_levels(stack)
    saga_id = f"obx-{uuid.uuid4().hex[:8]}"
    envelopes = await commit_without_publishing(engine, order_saga, saga_id, order())
    assert [e.kind for e in envelopes] == ["Command"], "the outbox holds no best-effort event"

    done = await eventually(lambda: loaded(engine.store, saga_id, lambda i: i.status == "completed"))
    assert done.data["shipment_id"] == f"{saga_id}:create_shipment"
    assert engine.stats["outboxes_swept"] >= 1
    entries = await engine.store.history(saga_id)
    assert [(h.event, h.source, h.dest) for h in transitions(entries) if h.source != h.dest] == ORDER_PATH
    assert await stock_levels(stack) == {"sku-1": before["sku-1"] - 2, "sku-2": before["sku-2"] - 1}
    assert await ledger(stack, saga_id) == (4200, 0)
    outbox = stack.names.outbox_key(saga_id)

    async def forgotten() -> bool:
        return not await engine.store.redis.exists(outbox)

    await eventually(forgotten)  # once confirmed, and a moment later (Engine.clear_after)


async def test_a_command_published_twice_by_the_sweep_runs_the_handler_once(
    settings: Settings, cleanup: set[str]
) -> None:
    cleanup.update(participants_of([courier]))
    async with running(settings, [courier], workers=[]) as stack:
        engine = engine_of(stack)
        saga_id = f"obx-{uuid.uuid4().hex[:8]}"
        envelopes = await commit_without_publishing(engine, courier, saga_id, {"parcel": "p-1"})
        # Published and confirmed, then the orchestrator died before it forgot the outbox.
        await engine.broker.publish(envelopes)
        [command_id] = [e.message_id for e in envelopes if e.kind == "Command"]

        async def swept() -> bool:
            return engine.stats["outboxes_swept"] >= 1

        await eventually(swept)
        # The participant comes up to two copies of the command in its queue.
        worker = Scripted("obx_courier")
        worker.act("ship", {"tracking": "t-1"})
        worker.act("unship")
        worker.act("sign")
        await worker.start(settings)
        stack.workers.append(worker)

        done = await eventually(lambda: loaded(engine.store, saga_id, lambda i: i.status == "completed"))
        assert done.data["tracking"] == "t-1"
        assert [c.message_id for c in worker.received].count(command_id) == 2, "delivered twice"
        assert worker.calls["ship"] == [f"{saga_id}:ship"], "but shipped once"

        async def duplicate_recorded() -> list[str]:
            entries = await engine.store.history(saga_id)
            return [h.detail for h in entries if h.event == "ignored_reply"]

        [detail] = await eventually(duplicate_recorded)
        assert f"reply to {command_id}" in detail
        entries = await engine.store.history(saga_id)
        assert [(h.event, h.dest) for h in transitions(entries)] == [
            ("start", "ship"),
            ("succeeded", "sign"),
            ("succeeded", "completed"),
        ]


class FailingOnce:
    """The real broker, except that the first publish of a command to `participant` fails, as in a crash."""

    def __init__(self, broker: Broker, participant: str) -> None:
        self.broker = broker
        self.participant = participant
        self.failed = 0

    async def publish(self, envelopes: Sequence[Envelope]) -> None:
        if not self.failed and any(e.kind == "Command" and e.routing_key == self.participant for e in envelopes):
            self.failed += 1
            raise ConnectionResetError("connection reset by peer")
        await self.broker.publish(envelopes)


async def test_a_publish_that_failed_mid_saga_is_swept_and_the_saga_finishes(stack: Stack) -> None:
    engine = engine_of(stack)
    flaky = FailingOnce(engine.broker, "payment")
    engine.broker = cast(Broker, flaky)
    outcome = await stack.run("order", order())
    assert outcome.status == "completed"
    assert flaky.failed == 1 and engine.stats["publish_failures"] == 1
    assert engine.stats["outboxes_swept"] >= 1
    entries = await engine.store.history(outcome.saga_id)
    assert [(h.event, h.source, h.dest) for h in transitions(entries) if h.source != h.dest] == ORDER_PATH
    assert await ledger(stack, outcome.saga_id) == (4200, 0), "charged once"

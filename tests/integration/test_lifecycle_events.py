"""Which lifecycle events go out (docs/protocol.md, section 3.6): the outcomes always, `running` and
`compensating` only while some queue takes them, and nobody who waits notices the difference."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, ExchangeType

from participants.edge.amqp import Envelope
from statemachines.messages import SagaEvent, decode
from tests.integration.conftest import Stack, eventually
from tests.integration.test_end_to_end import order


async def test_with_no_queue_bound_for_them_running_events_stop_and_starts_are_still_answered(stack: Stack) -> None:
    engine = stack.orchestrators[0].engine
    assert engine is not None
    engine.unrouted_pause = 600.0  # so that this test does not depend on how fast the machine is
    # A waiter binds the outcomes of its saga only: this saga's `running` finds no queue.
    first = await stack.run("order", order())
    assert first.status == "completed"
    # `saga start` without --wait: it learns that an orchestrator took the start from Redis when no event comes.
    taken = []
    for _ in range(3):
        data = order()
        saga_id, event = await stack.client.submit("order", data, timeout=5.0)
        assert event is not None, "an orchestrator took the start: the client must say so"
        assert event.saga_id == saga_id
        taken.append((saga_id, data))
    assert engine.stats["events_skipped"] == 3
    # They run on, and a late waiter (the same start again) gets each outcome from Redis.
    for saga_id, data in taken:
        again = await stack.client.start("order", data, saga_id=saga_id, wait=True, timeout=20.0)
        assert (again.saga_id, again.status) == (saga_id, "completed")


async def test_running_events_come_again_once_a_queue_takes_them(stack: Stack) -> None:
    await stack.run("order", order())  # its `running` found no queue
    connection = await aio_pika.connect(stack.settings.amqp_url)
    seen: dict[str, list[str]] = {}
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(stack.names.events_exchange, ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, "order.#")

        async def on_event(message: AbstractIncomingMessage) -> None:
            event = decode(SagaEvent, message.body)
            seen.setdefault(event.saga_id, []).append(event.status)

        await queue.consume(on_event, no_ack=True)
        ran: list[str] = []

        async def running_seen() -> bool:
            outcome = await stack.run("order", order(), saga_id=f"ev-{uuid.uuid4().hex[:8]}")
            ran.append(outcome.saga_id)
            return "running" in seen.get(outcome.saga_id, [])

        # Within a pause of a second after the last one that found no queue.
        await eventually(running_seen, timeout=10.0)

        async def outcomes_seen() -> bool:
            return all("completed" in seen.get(saga_id, []) for saga_id in ran)

        # Every outcome went out, whether its `running` did or not.
        await eventually(outcomes_seen, timeout=10.0)
    finally:
        await connection.close()


async def test_an_order_saga_costs_eight_messages_while_nobody_follows_sagas(stack: Stack) -> None:
    # Every publish of the orchestrator and the workers, counted as it goes to the broker.
    sent: Counter[str] = Counter()
    for broker in [o.broker for o in stack.orchestrators] + [w.broker for w in stack.workers]:
        assert broker is not None
        broker._publish = counting(broker._publish, sent)  # type: ignore[method-assign]
    engine = stack.orchestrators[0].engine
    assert engine is not None
    engine.unrouted_pause = 600.0  # so that this test does not depend on how fast the machine is
    outcomes = [await stack.run("order", order()) for _ in range(30)]
    assert {outcome.status for outcome in outcomes} == {"completed"}
    # Besides the start (the client's): per saga three commands, three replies, the outcome.
    # The first saga's `running` found no queue; no other went out.
    assert sent == {"Command": 90, "Reply": 90, "completed": 30, "running": 1}
    assert engine.stats["events_skipped"] == 29


def counting(publish: Any, sent: Counter[str]) -> Any:
    async def counted(envelope: Envelope, *args: Any, **kw: Any) -> bool:
        kind = envelope.routing_key.rpartition(".")[2] if envelope.kind == "SagaEvent" else envelope.kind
        sent[kind] += 1
        return bool(await publish(envelope, *args, **kw))

    return counted

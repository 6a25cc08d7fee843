"""Poison: a message that fails every time is dead-lettered with its reason, never looped.

A consumer that raises on a message has it redelivered, up to
`DELIVERY_LIMIT` deliveries; then it goes to `<ns>.dead-letters` with an
`x-saga-reason` naming the failure and the count, and the process serves
everything else all along. A message that can never be read is refused on
its first delivery. A message its consumer dies on, so never fails, is
dead-lettered on its delivery after `UNSETTLED_LIMIT`. On both queue types.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from redis.asyncio import Redis

from participants.edge.amqp import Broker
from participants.edge.connections import connect_redis
from participants.edge.settings import Settings
from participants.worker import Context
from statemachines.dsl import Saga, Step
from statemachines.messages import Command, Reply, decode
from statemachines.names import DELIVERY_LIMIT, UNSETTLED_LIMIT
from statemachines.sagas import SAGAS as SHIPPED
from tests.integration.conftest import BOTH_QUEUE_TYPES, Stack, eventually, example_workers, running
from tests.integration.scripted import Scripted, loaded, now, participants_of, publish_raw, take_dead_letters
from tests.integration.test_end_to_end import order

parcel = Saga("psn_parcel", steps=[Step("ship", participant="psn_courier", command="ship", timeout=30.0)])
prescription = Saga(
    "psn_prescription", steps=[Step("dispense", participant="psn_pharmacy", command="dispense", timeout=30.0)]
)

# Classic queues do not count deliveries: there the consumers do (participants/edge/redeliveries.py).
pytestmark = BOTH_QUEUE_TYPES


async def hold_all(worker: Scripted, command: Command, body: bytes) -> None:
    worker.hold(command, body)


async def queue_depth(settings: Settings, queue: str) -> int:
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0
    finally:
        await connection.close()


async def test_a_reply_for_a_saga_whose_stored_doc_is_corrupt_is_dead_lettered_after_the_limit(
    settings: Settings, cleanup: set[str]
) -> None:
    cleanup.update(participants_of([parcel]))
    courier = Scripted("psn_courier", hold_all)
    courier.act("ship", {"tracking": "t-1"})
    async with running(settings, [*SHIPPED, parcel], [*example_workers(), courier]) as stack:
        names = stack.names
        saga_id = f"psn-{uuid.uuid4().hex[:8]}"
        await stack.client.start("psn_parcel", {}, saga_id)
        await eventually(lambda: now(bool(courier.held)))

        # The orchestrator restarts, remembering nothing, and the stored saga cannot be read any more.
        first = stack.orchestrators.pop()
        await first.close()
        await stack.client.store.redis.hset(names.saga_key(saga_id), "doc", "garbage")
        second = await stack.add_orchestrator()

        [late] = await courier.release()
        letters, other = await asyncio.gather(take_dead_letters(settings, 1), stack.run("order", order()))
        assert other.status == "completed", "the orchestrator served other sagas all along"

        [letter] = letters
        headers: dict[str, Any] = dict(letter.headers)
        assert headers["x-saga-queue"] == names.reply_queue
        assert headers["x-saga-deliveries"] == DELIVERY_LIMIT
        reason = str(headers["x-saga-reason"])
        assert reason.startswith(f"processing failed {DELIVERY_LIMIT} times, the last time with DecodeError(")
        assert "malformed" in reason, reason
        reply = decode(Reply, letter.body)
        assert (reply.saga_id, reply.in_reply_to) == (saga_id, late.message_id)

        assert await queue_depth(settings, names.reply_queue) == 0, "nothing left looping"
        counters = await second.engine.store.counters()  # type: ignore[union-attr]
        assert counters[f"dead_letters:{names.reply_queue}"] == 1
        assert (await stack.run("order", order())).status == "completed"


def deeply_nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


async def test_a_message_nested_too_deeply_is_dead_lettered_on_its_first_delivery(stack: Stack) -> None:
    names = stack.names
    nested = deeply_nested(50_000)
    bodies = {
        names.start_queue: b'{"saga_type": "order", "data": {"deep": ' + nested + b"}}",
        names.reply_queue: b'{"message_id": "m", "in_reply_to": "x", "saga_id": "s", "step": "s", "action": "do", '
        b'"outcome": "success", "data": {"deep": ' + nested + b"}}",
        names.participant_queue("inventory"): b'{"message_id": "m", "saga_id": "s", "saga_type": "order", '
        b'"step": "reserve_inventory", "action": "do", "command": "reserve_stock", "attempt": 1, '
        b'"reply_to": "r", "payload": {"deep": ' + nested + b"}}",
    }
    for queue, body in bodies.items():
        await publish_raw(stack.settings, queue, body, message_id=uuid.uuid4().hex)
    letters = await take_dead_letters(stack.settings, len(bodies))
    by_queue = {str(m.headers["x-saga-queue"]): m.headers for m in letters}
    assert set(by_queue) == set(bodies)
    for queue, headers in by_queue.items():
        assert "nested too deeply" in str(headers["x-saga-reason"]), (queue, headers)
        assert headers["x-saga-deliveries"] == 1, f"{queue}: refused at once, not retried"
    assert (await stack.run("order", order())).status == "completed"


class Receipt:
    """Not JSON: what a handler returns by mistake (an ORM object, say)."""


async def test_a_command_whose_handler_returns_what_cannot_be_sent_is_dead_lettered_after_the_limit(
    settings: Settings, cleanup: set[str]
) -> None:
    cleanup.update(participants_of([prescription]))
    pharmacy = Scripted("psn_pharmacy")
    runs: list[str] = []

    @pharmacy.handler("dispense")
    async def dispense(ctx: Context) -> dict[str, Any]:
        runs.append(ctx.saga_id)
        return {"receipt": Receipt() if ctx.payload.get("bug") else "r-1"}

    async with running(settings, [prescription], [pharmacy]) as stack:
        names = stack.names
        broken = await stack.client.start("psn_prescription", {"bug": True})
        fine = await stack.run("psn_prescription", {})
        assert fine.status == "completed" and fine.data["receipt"] == "r-1"

        # Promptly: a redelivery does not wait out the step lock the failed delivery took (15 s).
        [letter] = await take_dead_letters(settings, 1, timeout=10)
        headers: dict[str, Any] = dict(letter.headers)
        assert headers["x-saga-queue"] == names.participant_queue("psn_pharmacy")
        assert headers["x-saga-deliveries"] == DELIVERY_LIMIT
        reason = str(headers["x-saga-reason"])
        assert reason.startswith(f"processing failed {DELIVERY_LIMIT} times, the last time with TypeError(")
        assert "Receipt" in reason, reason
        assert decode(Command, letter.body).saga_id == broken
        assert 1 <= runs.count(broken) <= DELIVERY_LIMIT
        assert await queue_depth(settings, names.participant_queue("psn_pharmacy")) == 0, "nothing left looping"

        store = stack.orchestrators[0].engine.store  # type: ignore[union-attr]
        inst = await eventually(lambda: loaded(store, broken, lambda i: i.state == "dispense"))
        assert inst.status == "running", "the saga waits for its timeout, which is the orchestrator's to fire"
        again = await stack.run("psn_prescription", {})
        assert again.status == "completed", "the participant served other commands all along"


async def take_and_die(settings: Settings, redis: Redis, queue: str) -> bool:
    """A consumer that takes the message and dies on it (its connection drops, the message unsettled).

    Whether it was handed the message: not if the broker's side dead-lettered it first.
    """
    broker = await Broker.open(settings.amqp_url, settings.names, redis=redis)
    taken = asyncio.Event()
    dying = asyncio.get_running_loop().create_future()

    async def handle(message: AbstractIncomingMessage) -> None:
        taken.set()
        await dying

    try:
        await broker.consume(queue, handle, prefetch=1)
        await eventually(lambda: now(taken.is_set() or broker.dead_letters[queue] > 0))
    finally:
        if taken.is_set():
            await broker.connection.close()
            dying.cancel()
        else:  # it dead-lettered the message: a clean close sends the batched ack
            await broker.close()
    return taken.is_set()


async def test_a_message_its_consumer_dies_on_is_dead_lettered_after_the_limit(
    settings: Settings, cleanup: set[str]
) -> None:
    cleanup.add("psn_crasher")
    queue = settings.names.participant_queue("psn_crasher")
    redis = await connect_redis(settings.redis_url)
    try:
        first = await Broker.open(settings.amqp_url, settings.names, redis=redis)
        await first.declare_queue(queue)
        await first.close()
        await publish_raw(settings, queue, b"{}", message_id=uuid.uuid4().hex, delivery_mode=2)
        handed = [await take_and_die(settings, redis, queue) for _ in range(UNSETTLED_LIMIT + 1)]
        [letter] = await take_dead_letters(settings, 1)
    finally:
        await redis.aclose()
    assert handed == [True] * UNSETTLED_LIMIT + [False], "handed to a consumer this often, then dead-lettered"
    headers: dict[str, Any] = dict(letter.headers)
    assert headers["x-saga-deliveries"] == UNSETTLED_LIMIT + 1
    assert str(headers["x-saga-reason"]).startswith(f"delivered {UNSETTLED_LIMIT + 1} times and never settled")
    assert await queue_depth(settings, queue) == 0, "nothing left looping"

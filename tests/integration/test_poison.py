"""Bad input on every queue is dead-lettered with its reason, and nothing stops serving."""

from __future__ import annotations

import uuid
from typing import Any

import aio_pika
import pytest

from statemachines.messages import Reply, encode
from tests.integration.conftest import BOTH_QUEUE_TYPES, Stack, eventually
from tests.integration.test_end_to_end import order

BAD = {
    "malformed JSON": (b'{"saga_type": "order", "data": ', "not a valid"),
    "wrong schema": (b'{"saga_type": 42, "in_reply_to": [], "command": null}', "not a valid"),
    "oversized": (b'{"pad": "' + b"x" * (1024 * 1024) + b'"}', "exceeds the limit"),
}

# Classic queues do not count deliveries: there the consumers do (participants/edge/redeliveries.py).
pytestmark = BOTH_QUEUE_TYPES


async def dead_letters(stack: Stack, count: int) -> list[Any]:
    """Wait for `count` messages in the dead-letter queue and take them."""
    connection = await aio_pika.connect(stack.settings.amqp_url)
    got: list[Any] = []
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(
            stack.names.dead_queue, durable=True, arguments=stack.names.dead_queue_arguments()
        )

        async def take() -> bool:
            while (message := await queue.get(fail=False, no_ack=True)) is not None:
                got.append(message)
            return len(got) >= count

        await eventually(take, timeout=15)
    finally:
        await connection.close()
    return got


async def publish(stack: Stack, queue: str, body: bytes) -> None:
    connection = await aio_pika.connect(stack.settings.amqp_url)
    try:
        channel = await connection.channel()
        await channel.default_exchange.publish(aio_pika.Message(body, message_id=uuid.uuid4().hex), queue)
    finally:
        await connection.close()


@pytest.mark.parametrize("queue", ["start", "replies", "participant"])
async def test_bad_messages_are_dead_lettered_with_their_reason(stack: Stack, queue: str) -> None:
    names = stack.names
    target = {
        "start": names.start_queue,
        "replies": names.reply_queue,
        "participant": names.participant_queue("inventory"),
    }[queue]
    for body, _ in BAD.values():
        await publish(stack, target, body)
    letters = await dead_letters(stack, len(BAD))
    reasons = sorted(str(m.headers["x-saga-reason"]) for m in letters)
    assert all(m.headers["x-saga-queue"] == target for m in letters)
    for _, expected in BAD.values():
        assert any(expected in reason for reason in reasons), reasons
    assert (await stack.run("order", order())).status == "completed", "still serving"
    # Counted in <ns>:counters alike, by the orchestrator or by the participant that dead-lettered them.
    counters = await stack.orchestrators[0].engine.store.counters()  # type: ignore[union-attr]
    assert counters[f"dead_letters:{target}"] == len(BAD)


async def test_a_start_for_an_unknown_saga_type_is_dead_lettered(stack: Stack) -> None:
    await publish(stack, stack.names.start_queue, b'{"saga_type": "mystery", "saga_id": "m-1"}')
    [letter] = await dead_letters(stack, 1)
    assert "unknown saga type 'mystery'" in str(letter.headers["x-saga-reason"])


async def test_a_start_whose_data_does_not_fit_is_dead_lettered(stack: Stack) -> None:
    await publish(stack, stack.names.start_queue, b'{"saga_type": "order", "data": {"order_id": 7}}')
    [letter] = await dead_letters(stack, 1)
    assert "data does not fit saga 'order'" in str(letter.headers["x-saga-reason"])


async def test_a_reply_for_an_unknown_saga_is_dead_lettered(stack: Stack) -> None:
    reply = Reply(
        message_id="r-1", in_reply_to="nobody:1", saga_id="nobody", step="charge_payment",
        action="do", outcome="success", participant="payment",
    )  # fmt: skip
    await publish(stack, stack.names.reply_queue, encode(reply))
    [letter] = await dead_letters(stack, 1)
    assert "unknown saga 'nobody'" in str(letter.headers["x-saga-reason"])
    assert (await stack.run("order", order())).status == "completed"

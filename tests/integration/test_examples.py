"""The example participants take what the example sagas' data types let through, edge cases included."""

from __future__ import annotations

import uuid

import aio_pika
import msgspec

from statemachines.messages import Command, Reply, encode
from tests.integration.conftest import Stack, eventually


async def test_the_inventory_takes_a_quantity_of_zero_without_breaking(stack: Stack) -> None:
    """A start cannot ask for 0 any more (OrderData says qty >= 1), but a command that does is still answered."""
    connection = await aio_pika.connect(stack.settings.amqp_url)
    channel = await connection.channel()
    replies = await channel.declare_queue(exclusive=True)
    saga_id = f"zero-{uuid.uuid4().hex[:6]}"
    command = Command(
        message_id=f"{saga_id}:1", saga_id=saga_id, saga_type="order", step="reserve_inventory", action="do",
        command="reserve_stock", attempt=1, payload={"order_id": "o", "items": [{"sku": "sku-1", "qty": 0}]},
        reply_to=replies.name,
    )  # fmt: skip
    await channel.default_exchange.publish(
        aio_pika.Message(encode(command)), stack.names.participant_queue("inventory")
    )
    message = await eventually(lambda: replies.get(fail=False, no_ack=True), timeout=15)
    reply = msgspec.json.decode(message.body, type=Reply)
    assert (reply.outcome, reply.error) == ("success", None), "the Lua script took 0, it did not fail on -0"
    await connection.close()

"""The example participants take what the example sagas' data types let through, edge cases included."""

from __future__ import annotations

import uuid

import aio_pika
import msgspec
from aio_pika.abc import AbstractQueue

from participants.examples import backup_payment, fraud, payment
from statemachines.messages import Command, Reply, encode
from tests.integration.conftest import Stack, eventually


async def ask(stack: Stack, replies: AbstractQueue, participant: str, command: Command) -> Reply:
    channel = replies.channel
    await channel.default_exchange.publish(
        aio_pika.Message(encode(command)), stack.names.participant_queue(participant)
    )
    message = await eventually(lambda: replies.get(fail=False, no_ack=True), timeout=15)
    return msgspec.json.decode(message.body, type=Reply)


def order_command(saga_id: str, step: str, command: str, amount: int, reply_to: str, **payload: object) -> Command:
    return Command(
        message_id=f"{saga_id}:{step}:{command}", saga_id=saga_id, saga_type="order", step=step, action="do",
        command=command, attempt=1, payload={"customer_id": "c-9", "amount": amount, **payload}, reply_to=reply_to,
    )  # fmt: skip


async def test_fraud_keeps_one_check_per_order_and_refuses_a_suspicious_amount(stack: Stack) -> None:
    connection = await aio_pika.connect(stack.settings.amqp_url)
    try:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        fine, odd = f"f-{uuid.uuid4().hex[:6]}", f"f-{uuid.uuid4().hex[:6]}"
        reply = await ask(
            stack, replies, "fraud", order_command(fine, "check_fraud", "check_fraud", 200_000, replies.name)
        )
        assert (reply.outcome, reply.data) == ("success", {"fraud_checked": f"{fine}:check_fraud"})
        too_much = fraud.SUSPICIOUS + 1
        reply = await ask(
            stack, replies, "fraud", order_command(odd, "check_fraud", "check_fraud", too_much, replies.name)
        )
        assert reply.outcome == "failure" and reply.error is not None and reply.error.code == "fraud_suspected"
        redis = stack.client.store.redis
        checks = await fraud.checks(redis, stack.names)
        assert checks == {f"{fine}:check_fraud": 200_000, f"{odd}:check_fraud": too_much}
    finally:
        await connection.close()


async def test_backup_payment_charges_its_own_ledger_and_is_unavailable_when_asked(stack: Stack) -> None:
    connection = await aio_pika.connect(stack.settings.amqp_url)
    try:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        saga_id = f"b-{uuid.uuid4().hex[:6]}"
        charge = order_command(saga_id, "charge_backup", "charge", 700, replies.name)
        reply = await ask(stack, replies, "backup_payment", charge)
        assert reply.outcome == "success" and reply.data["paid_by"] == "backup_payment"
        redis = stack.client.store.redis
        assert await backup_payment.credit.taken(redis, stack.names) == {f"{saga_id}:charge_backup": {"c-9": 700}}
        assert await payment.credit.taken(redis, stack.names) == {}
        down = order_command(
            f"p-{uuid.uuid4().hex[:6]}", "charge_payment", "charge", 700, replies.name,
            fail_at=["charge_payment:unavailable"],
        )  # fmt: skip
        reply = await ask(stack, replies, "payment", down)
        assert reply.outcome == "failure" and reply.error is not None and reply.error.code == "unavailable"
        assert await payment.credit.taken(redis, stack.names) == {}
    finally:
        await connection.close()


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

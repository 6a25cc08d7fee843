"""The Node.js payment participant, written from docs/protocol.md alone, in place of the Python one.

It passes `saga conformance`, and runs order sagas with the Python
inventory and shipping participants: completed, compensated, a duplicate
command, and a compensation that arrives before its action.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
from redis.asyncio import Redis

from orchestrator.tools.conformance import Target, check, table
from participants.edge.settings import Settings
from participants.examples import inventory, shipping
from participants.examples.payment import CREDIT_LIMIT, credit
from statemachines.messages import Command, Reply, decode, encode
from tests.integration.conftest import Stack, eventually, running, saga_env
from tests.nodejs import NODE_PAYMENT, node


@contextlib.asynccontextmanager
async def node_payment(settings: Settings) -> AsyncIterator[asyncio.subprocess.Process]:
    """`node payment.js` in this test's namespace, up once it says so."""
    binary = node(NODE_PAYMENT)
    process = await asyncio.create_subprocess_exec(
        binary,
        "payment.js",
        cwd=NODE_PAYMENT,
        env=saga_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert process.stdout is not None
    said: list[str] = []
    try:
        async with asyncio.timeout(30):
            while "up: queue" not in (said[-1] if said else ""):
                line = await process.stdout.readline()
                if not line:
                    raise AssertionError(f"node payment.js exited {await process.wait()}: {''.join(said)}")
                said.append(line.decode())
        yield process
    finally:
        if process.returncode is None:
            process.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 10)
        if process.returncode is None:
            process.kill()
            await process.wait()


@contextlib.asynccontextmanager
async def orders(settings: Settings) -> AsyncIterator[Stack]:
    """The orchestrator, the Python inventory and shipping, and the Node payment."""
    async with node_payment(settings), running(settings, workers=[inventory.worker, shipping.worker]) as stack:
        yield stack


def order(**extra: Any) -> dict[str, Any]:
    customer = f"c-{uuid.uuid4().hex[:6]}"
    return {"order_id": "o-1", "customer_id": customer, "items": [{"sku": "sku-1", "qty": 2}], "amount": 4200, **extra}


async def test_it_passes_saga_conformance(settings: Settings, redis: Redis) -> None:
    async with node_payment(settings):
        results = await check(settings, Target("payment", "charge", "refund", {"customer_id": "c-1", "amount": 100}))
    print(table(results))
    assert {r.status for r in results} == {"pass"}, table(results)
    # Its two dead letters are counted where the orchestrator counts its own.
    queue = settings.names.participant_queue("payment")
    assert await redis.hget(settings.names.counters_key, f"dead_letters:{queue}") == b"2"


async def test_an_order_completes_and_is_charged_once(settings: Settings, redis: Redis) -> None:
    async with orders(settings) as stack:
        data = order()
        outcome = await stack.run("order", data)
        assert outcome.status == "completed", outcome
        assert outcome.data["charge_id"] == f"{outcome.saga_id}:charge_payment"
        taken = await credit.taken(redis, stack.names)
        assert taken == {f"{outcome.saga_id}:charge_payment": {data["customer_id"]: 4200}}
        assert await credit.level(redis, stack.names, data["customer_id"]) == CREDIT_LIMIT - 4200


async def test_a_failing_shipment_refunds_the_charge(settings: Settings, redis: Redis) -> None:
    async with orders(settings) as stack:
        data = order(fail_at=["create_shipment"])
        outcome = await stack.run("order", data)
        assert outcome.status == "compensated", outcome
        assert outcome.error is not None and outcome.error.code == "asked_to_fail"
        key = f"{outcome.saga_id}:charge_payment"
        assert key in await credit.taken(redis, stack.names)
        assert key in await credit.returned(redis, stack.names)
        assert await credit.level(redis, stack.names, data["customer_id"]) == CREDIT_LIMIT


async def test_a_duplicate_charge_gets_the_first_reply_and_charges_nothing(settings: Settings, redis: Redis) -> None:
    async with orders(settings) as stack:
        # A copy of every command to payment, to send one of them again as the broker would redeliver it.
        connection = await aio_pika.connect(settings.amqp_url)
        channel = await connection.channel()
        tap = await channel.declare_queue(exclusive=True)
        await tap.bind(stack.names.commands_exchange, "payment")
        data = order()
        outcome = await stack.run("order", data)
        assert outcome.status == "completed"
        message = await eventually(lambda: tap.get(no_ack=True, fail=False))
        charge = decode(Command, message.body)
        await channel.default_exchange.publish(
            aio_pika.Message(message.body, message_id=message.message_id, delivery_mode=2),
            routing_key=stack.names.participant_queue("payment"),
        )

        async def ignored() -> list[str]:
            history = await stack.client.store.history(outcome.saga_id)
            return [h.detail for h in history if h.event == "ignored_reply"]

        # The orchestrator saw the same success again, for a command it no longer awaits.
        [detail] = await eventually(ignored)
        assert detail.startswith(f"success reply to {charge.message_id}")
        await connection.close()
        assert len(await credit.taken(redis, stack.names)) == 1
        assert await credit.level(redis, stack.names, data["customer_id"]) == CREDIT_LIMIT - 4200


async def test_a_refund_before_its_charge_refuses_the_charge(settings: Settings, redis: Redis) -> None:
    async with orders(settings) as stack:
        saga_id = f"o-{uuid.uuid4().hex[:8]}"
        data = order()
        # The refund for this saga's charge arrives first (its charge was, say, redelivered late).
        connection = await aio_pika.connect(settings.amqp_url)
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        refund = Command(
            message_id=f"{saga_id}:early",
            saga_id=saga_id,
            saga_type="order",
            step="charge_payment",
            action="compensate",
            command="refund",
            attempt=1,
            payload={"customer_id": data["customer_id"], "amount": 4200},
            reply_to=replies.name,
            deadline=time.time() + 10,
        )
        exchange = await channel.get_exchange(stack.names.commands_exchange)
        trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        command = aio_pika.Message(encode(refund), delivery_mode=2, headers={"traceparent": trace})
        await exchange.publish(command, routing_key="payment")
        answer = await eventually(lambda: replies.get(no_ack=True, fail=False))
        reply = decode(Reply, answer.body)
        assert (reply.outcome, reply.in_reply_to) == ("success", refund.message_id)
        assert (answer.headers or {}).get("traceparent") == trace  # the command's trace context, forwarded
        await connection.close()

        outcome = await stack.run("order", data, saga_id=saga_id)
        assert outcome.status == "compensated", outcome
        assert outcome.error is not None and outcome.error.code == "compensated"
        # Nothing was charged; the stock reserved by the first step went back.
        assert f"{saga_id}:charge_payment" not in await credit.taken(redis, stack.names)
        assert await credit.level(redis, stack.names, data["customer_id"]) == 0  # never charged, so never seen
        assert f"{saga_id}:reserve_inventory" in await inventory.stock.returned(redis, stack.names)

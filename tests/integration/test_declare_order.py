"""Declaring in any order works: a participant that declares its queue first does not stop the orchestrator."""

from __future__ import annotations

import logging
from typing import Any

import aio_pika
import pytest

from participants.edge.settings import Settings
from tests.integration.conftest import running

ORDER = {"order_id": "o-1", "customer_id": "c-1", "items": [{"sku": "sku-1", "qty": 1}], "amount": 100}


async def declare_first(settings: Settings, arguments: dict[str, Any] | None, commands: str = "direct") -> None:
    """What a participant in another language does before any orchestrator ran: declare, bind."""
    names = settings.names
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(names.commands_exchange, commands, durable=True)
        for participant in ("inventory", "payment", "shipping"):
            queue = await channel.declare_queue(names.participant_queue(participant), durable=True, arguments=arguments)
            await queue.bind(exchange, participant)
    finally:
        await connection.close()


async def test_a_queue_declared_first_with_the_protocols_arguments_is_shared(settings: Settings) -> None:
    await declare_first(settings, settings.names.queue_arguments())
    async with running(settings) as stack:
        outcome = await stack.run("order", ORDER)
    assert outcome.status == "completed"


async def test_a_queue_declared_first_with_other_arguments_does_not_stop_the_orchestrator(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # A classic queue without a dead-letter exchange, and a topic exchange where a direct one belongs.
    await declare_first(settings, {"x-queue-type": "classic"}, commands="topic")
    with caplog.at_level(logging.WARNING, logger="saga.amqp"):
        async with running(settings) as stack:
            outcome = await stack.run("order", ORDER)
    assert outcome.status == "completed"
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert f"'{settings.names.participant_queue('payment')}'" in warned
    assert "inequivalent arg" in warned
    assert "using it as it is" in warned

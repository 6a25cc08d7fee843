"""Declaring in any order works: a participant that declares its queue first does not stop the orchestrator.

Unless its queue is of another type than SAGA_QUEUE_TYPE: then every process
of the namespace is told so in one sentence, and none starts.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import aio_pika
import pytest

from orchestrator.registry import Registry
from orchestrator.service import Orchestrator
from participants.edge.amqp import QueueTypeMismatch
from participants.edge.settings import Settings
from participants.examples import payment
from statemachines.sagas import SAGAS
from tests.integration.conftest import FAST, remove_namespace, running
from tests.integration.scripted import cli

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
    # A queue of the namespace's type without a dead-letter exchange, and a topic exchange where a direct one belongs.
    await declare_first(settings, {"x-queue-type": settings.queue_type}, commands="topic")
    with caplog.at_level(logging.WARNING, logger="saga.amqp"):
        async with running(settings) as stack:
            outcome = await stack.run("order", ORDER)
    assert outcome.status == "completed"
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert f"'{settings.names.participant_queue('payment')}'" in warned
    assert "inequivalent arg" in warned
    assert "using it as it is" in warned


# "bare": declared with no arguments at all, as a client library does by default: a classic queue.
@pytest.mark.parametrize(("first", "then"), [("classic", "quorum"), ("quorum", "classic"), ("bare", "quorum")])
async def test_a_queue_of_the_other_type_stops_every_process_with_one_sentence(
    settings: Settings, first: str, then: str
) -> None:
    ours = replace(settings, queue_type=then)
    theirs = replace(settings, queue_type="classic" if first == "bare" else first)
    await declare_first(theirs, None if first == "bare" else theirs.names.queue_arguments())
    queue = settings.names.participant_queue("inventory")
    said = f"queue '{queue}' exists as {theirs.queue_type}, SAGA_QUEUE_TYPE says {then}"
    try:
        orchestrator = Orchestrator(ours, Registry(list(SAGAS)), FAST)
        with pytest.raises(QueueTypeMismatch) as refused:
            await orchestrator.start()
        await orchestrator._abandon()
        assert str(refused.value).startswith(said)
        with pytest.raises(QueueTypeMismatch) as worker:
            await payment.worker.start(ours)
        assert f"queue '{settings.names.participant_queue('payment')}' exists as {theirs.queue_type}" in str(
            worker.value
        )
        await payment.worker.close()

        # The real processes: one sentence on stderr, exit 1, no traceback.
        for args in (["orchestrator"], ["participant", "participants.examples.inventory:worker"]):
            done = await cli(settings, *args, "--queue-type", then)
            assert done.returncode == 1, done.stderr
            last = done.stderr.strip().splitlines()[-1]
            assert last.startswith(f"saga: {said}"), done.stderr
            assert "Traceback" not in done.stderr
    finally:
        await remove_namespace(settings, {"inventory", "payment", "shipping"})

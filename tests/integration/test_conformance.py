"""`saga conformance` against real participants: every Python example passes, a sloppy one fails where it is sloppy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from itertools import count

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage

from orchestrator.tools.conformance import RULES, NotReady, Result, Target, check, table
from participants.edge.amqp import Broker
from participants.edge.settings import Settings
from participants.worker import Worker
from tests.integration.conftest import example_workers, remove_namespace, saga_command, saga_env

# What each example participant is held to: an action, its compensation, and a payload it succeeds with.
EXAMPLES = [
    Target("inventory", "reserve_stock", "release_stock", {"order_id": "o-1", "items": [{"sku": "sku-1", "qty": 1}]}),
    Target("payment", "charge", "refund", {"customer_id": "c-1", "amount": 100}),
    Target("backup_payment", "charge", "refund", {"customer_id": "c-1", "amount": 100}),
    Target("fraud", "check_fraud", None, {"customer_id": "c-1", "amount": 100}),
    Target("shipping", "create_shipment", None, {"items": [{"sku": "sku-1", "qty": 1}]}),
    Target("flight", "book_flight", "cancel_flight", {"destination": "paris"}),
    Target("hotel", "book_hotel", "cancel_hotel", {"destination": "paris", "nights": 2}),
    Target("car", "rent_car", "return_car", {"destination": "paris"}),
]


@asynccontextmanager
async def started(settings: Settings, workers: list[Worker]) -> AsyncIterator[None]:
    try:
        for worker in workers:
            await worker.start(settings)
        yield
    finally:
        for worker in workers:
            await worker.close()
        await remove_namespace(settings, {w.name for w in workers} | {"sloppy"})


def statuses(results: list[Result]) -> dict[str, str]:
    return {r.check: r.status for r in results}


async def test_every_python_example_participant_passes(settings: Settings) -> None:
    async with started(settings, example_workers()):
        for target in EXAMPLES:
            results = await check(settings, target)
            print(f"\n{target.participant}\n{table(results)}")
            assert {r.status for r in results} <= {"pass", "skip"}, table(results)
            skipped = [r.check for r in results if r.status == "skip"]
            # Only a participant without a compensation skips: the compensation checks.
            assert bool(skipped) == (target.compensation is None)
            assert [r.check for r in results] == list(RULES)


@asynccontextmanager
async def sloppy(settings: Settings) -> AsyncIterator[None]:
    """A participant that replies success to every JSON body, counting, and rejects the rest to the broker."""
    broker = await Broker.open(settings.amqp_url, settings.names)
    queue = await broker.declare_participant("sloppy")
    channel = await broker.connection.channel()
    numbers = count(1)

    async def answer(message: AbstractIncomingMessage) -> None:
        try:
            command = json.loads(message.body)
        except ValueError:
            await message.reject(requeue=False)
            return
        reply = {
            "message_id": f"r-{next(numbers)}",
            "in_reply_to": command.get("message_id"),
            "saga_id": command.get("saga_id"),
            "step": command.get("step"),
            "action": command.get("action"),
            "outcome": "success",
            "data": {"n": next(numbers)},
        }
        await channel.default_exchange.publish(
            aio_pika.Message(json.dumps(reply).encode()), routing_key=command["reply_to"]
        )
        await message.ack()

    await (await channel.get_queue(queue.name)).consume(answer)
    try:
        yield
    finally:
        await broker.close()


async def test_a_sloppy_participant_fails_where_it_is_sloppy(settings: Settings) -> None:
    async with started(settings, []), sloppy(settings):
        results = await check(settings, Target("sloppy", "act", "undo", {}, timeout=3.0))
    got = statuses(results)
    assert got["an action gets a reply of the documented shape"] == "pass"
    assert got["the reply carries the documented AMQP properties"] == "warn"  # not persistent, no correlation_id
    for failing in (
        "a repeated message_id gets the same reply",
        "a new attempt of a succeeded step gets its success back",
        "an action after its compensation is refused",
        "the action arriving after it is refused",
        "an action past its deadline is not started",
        "an unknown command gets a failure reply",
        "a body that is not JSON is dead-lettered with a reason",
        "a command of the wrong shape is dead-lettered with a reason",
    ):
        assert got[failing] == "FAIL", (failing, table(results))
    details = {r.check: r.detail for r in results}
    assert "by the broker" in details["a body that is not JSON is dead-lettered with a reason"]
    assert "replied instead of dead-lettering" in details["a command of the wrong shape is dead-lettered with a reason"]


async def run_cli(settings: Settings, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *saga_command("conformance", *args),
        env=saga_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_the_command_prints_the_table_and_exits_by_the_result(settings: Settings) -> None:
    from participants.examples import payment

    async with started(settings, [payment.worker]):
        code, out = await run_cli(
            settings,
            "payment",
            "--command",
            "charge",
            "--compensation",
            "refund",
            "--payload",
            '{"customer_id": "c-1", "amount": 1}',
        )
        assert code == 0, out
        assert out.splitlines()[0].split() == ["check", "result", "§", "detail"]
        assert "15 checks passed, 0 failed, 0 warned, 0 skipped" in out
        async with sloppy(settings):
            code, out = await run_cli(settings, "sloppy", "--command", "act", "--timeout", "2", "--json")
        assert code == 1
        rows = [json.loads(line) for line in out.splitlines()]
        assert {"FAIL", "skip"} <= {row["status"] for row in rows}


async def test_a_participant_that_is_not_running_gets_a_sentence(settings: Settings) -> None:
    async with started(settings, []):
        with pytest.raises(NotReady, match="is participant 'nobody' running"):
            await check(settings, Target("nobody", "act", None, {}))
        code, out = await run_cli(settings, "nobody", "--command", "act")
    assert code == 1
    assert out.strip().startswith("saga: there is no queue")
    assert "Traceback" not in out
    code, out = await run_cli(settings, "nobody", "--command", "act", "--payload", "[1]")
    assert (code, out.strip()) == (1, "saga: --payload must be a JSON object")

"""Every refusal is answered: a refused start at once with its reason, a refused reply in its saga's history.

Over the real services: the client and `saga start` learn of a refusal in
well under two seconds (never by a timeout), a reused id with other data is
a conflict, values that would become routing keys, queue names or Redis keys
are refused with the reason where they enter, outcomes go only to queues
that may receive them, and a wait only ever sees its own saga.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

import aio_pika
import msgspec
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from orchestrator.client import SagaClient, SagaConflict, SagaRejected
from participants.edge.settings import Settings
from statemachines.dsl import Retry, Saga, Step
from statemachines.messages import Command, SagaEvent, StartSaga, encode
from tests.integration.conftest import Stack, eventually, running
from tests.integration.scripted import Scripted, cli, participants_of, publish_raw, take_dead_letters
from tests.integration.test_end_to_end import order

ANSWERED_WITHIN = 2.0


class Events:
    """Every event of the namespace with `<status>` as its last word, as (routing key, event)."""

    def __init__(self, queue: AbstractQueue) -> None:
        self.queue = queue
        self.got: list[tuple[str, SagaEvent]] = []

    async def on(self, message: AbstractIncomingMessage) -> None:
        self.got.append((message.routing_key or "", msgspec.json.decode(message.body, type=SagaEvent)))


async def listen(stack: Stack, pattern: str) -> tuple[aio_pika.abc.AbstractConnection, Events]:
    connection = await aio_pika.connect(stack.settings.amqp_url)
    channel = await connection.channel()
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(stack.names.events_exchange, pattern)
    events = Events(queue)
    await queue.consume(events.on, no_ack=True)
    return connection, events


async def counters(stack: Stack) -> dict[str, int]:
    return await stack.orchestrators[0].engine.store.counters()  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("saga_type", "data", "code", "reason"),
    [
        ("nosuchtype", {}, "unknown_saga_type", "unknown saga type 'nosuchtype'; known: order, trip"),
        ("order", {"order_id": 7}, "invalid_data", "data does not fit saga 'order': Expected `str`, got `int`"),
        ("order", None, "invalid_data", "saga 'order' takes data (OrderData) and the start carries none"),
        (
            "order",
            order(items=[{"sku": "sku-1", "qty": 0}]),
            "invalid_data",
            "Expected `int` >= 1 - at `$.items[0].qty`",
        ),
        ("order", order(amount=-500_000), "invalid_data", "Expected `int` >= 1 - at `$.amount`"),
    ],
)
async def test_a_start_the_orchestrator_refuses_is_answered_at_once(
    stack: Stack, saga_type: str, data: dict[str, Any] | None, code: str, reason: str
) -> None:
    connection, events = await listen(stack, "*.*.rejected")
    saga_id = f"r-{uuid.uuid4().hex[:8]}"
    began = time.monotonic()
    with pytest.raises(SagaRejected) as refused:
        await stack.client.start(saga_type, data, saga_id, wait=True, timeout=30)
    took = time.monotonic() - began
    assert took < ANSWERED_WITHIN, f"answered after {took:.2f}s"
    assert refused.value.code == code and reason in refused.value.reason
    assert not isinstance(refused.value, SagaConflict)

    # On the events exchange as <type>.<id>.rejected, for anyone watching.
    await eventually(lambda: asyncio.sleep(0, events.got))
    [(key, event)] = events.got
    assert key == f"{saga_type}.{saga_id}.rejected" and event.status == "rejected" and event.saga_id == saga_id
    await connection.close()

    # A record `saga show` prints, never a saga that runs.
    store = stack.orchestrators[0].engine.store  # type: ignore[union-attr]
    assert await store.load(saga_id) is None
    record = await store.rejection(saga_id)
    assert record is not None and record.error is not None and reason in record.error.message
    shown = await cli(stack.settings, "show", saga_id)
    assert shown.returncode == 0 and f"rejected: {record.error.message}" in shown.stdout

    # Dead-lettered as before, now with the saga id; and counted.
    [letter] = await take_dead_letters(stack.settings, 1)
    assert reason in str(letter.headers["x-saga-reason"]) and letter.headers["x-saga-id"] == saga_id
    assert (await counters(stack))["rejected_starts"] == 1


async def test_saga_start_exits_at_once_with_the_reason_and_its_own_code(stack: Stack) -> None:
    began = time.monotonic()
    await cli(stack.settings, "--version")
    startup = time.monotonic() - began  # the interpreter and its imports, not the answer

    cases = [
        (["nosuchtype", "--data", "{}", "--wait"], "unknown saga type 'nosuchtype'"),
        (["order", "--wait"], "takes data (OrderData) and the start carries none"),
        (["order", "--data", json.dumps(order(amount=0)), "--wait"], "Expected `int` >= 1 - at `$.amount`"),
        (["nosuchtype", "--data", "{}"], "unknown saga type 'nosuchtype'"),  # no --wait: refused all the same
        (["order", "--id", "#.#", "--wait"], "a saga id may hold only letters"),  # refused before it is sent
    ]
    for args, reason in cases:
        began = time.monotonic()
        done = await cli(stack.settings, "start", *args)
        took = time.monotonic() - began - startup
        assert done.returncode == 4, (args, done.stdout, done.stderr)
        assert "saga: rejected: " in done.stderr and reason in done.stderr, done.stderr
        assert took < ANSWERED_WITHIN, f"{args}: answered {took:.2f}s after starting up"
        if "--wait" in args:
            assert json.loads(done.stdout.splitlines()[-1])["status"] == "rejected"

    started = await cli(stack.settings, "start", "order", "--data", json.dumps(order()))
    assert started.returncode == 0 and started.stderr == "", "taken by the orchestrator: exit 0, no warning"


async def test_a_reused_id_with_other_data_is_a_conflict(stack: Stack) -> None:
    saga_id = f"c-{uuid.uuid4().hex[:8]}"
    data = order()
    first = await stack.run("order", data, saga_id=saga_id)
    again = await stack.run("order", dict(data), saga_id=saga_id)
    assert first.status == again.status == "completed" and again.saga_id == saga_id

    for other_type, other in (
        ("order", order()),
        ("trip", {"trip_id": "t", "customer_id": "c", "destination": "rome"}),
    ):
        began = time.monotonic()
        with pytest.raises(SagaConflict) as conflict:
            await stack.run(other_type, other, saga_id=saga_id)
        assert time.monotonic() - began < ANSWERED_WITHIN
        assert conflict.value.code == "conflict"
        assert f"saga {saga_id!r} exists already, started" in conflict.value.reason
    store = stack.orchestrators[0].engine.store  # type: ignore[union-attr]
    inst = await store.load(saga_id)
    assert inst is not None and inst.data["order_id"] == data["order_id"], "the saga is untouched"
    refused = [h for h in await store.history(saga_id) if h.event == "refused_start"]
    assert [h.detail.split(", started ")[1].split(":")[0] for h in refused] == ["with other data", "as a 'order' saga"]

    done = await cli(stack.settings, "start", "order", "--data", json.dumps(order()), "--id", saga_id, "--wait")
    assert done.returncode == 5 and "exists already" in done.stderr


async def test_values_out_of_bounds_are_refused_where_they_enter(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    """Raw starts (not through the client, which refuses them itself) with ids and names that cannot be keys."""
    caplog.set_level(logging.INFO)
    names = stack.names
    cases = {
        "x" * 250: "a saga id is 250 characters long; at most 128 are allowed",
        "y" * 10_000: "a saga id is 10000 characters long; at most 128 are allowed",
        "#.#": "a saga id may hold only letters",
        "{tag}": "a saga id may hold only letters",
    }
    for saga_id, _ in cases.items():
        body = json.dumps({"saga_type": "order", "saga_id": saga_id, "data": order()}).encode()
        await publish_raw(stack.settings, names.start_queue, body, message_id=uuid.uuid4().hex)
    long_reply_to = json.dumps({"saga_type": "order", "data": order(), "reply_to": "q" * 300}).encode()
    await publish_raw(stack.settings, names.start_queue, long_reply_to, message_id="long-reply-to")
    dotted_type = json.dumps({"saga_type": "or.der", "saga_id": "ok-id", "data": order()}).encode()
    await publish_raw(stack.settings, names.start_queue, dotted_type, message_id="dotted-type")

    letters = await take_dead_letters(stack.settings, len(cases) + 2)
    reasons = [str(m.headers["x-saga-reason"]) for m in letters]
    for reason in cases.values():
        assert any(r.startswith(reason) for r in reasons), reasons
    assert "reply_to is 300 characters long; at most 255 are allowed" in reasons
    assert any(r.startswith("the saga type may hold only letters, digits, _ and -") for r in reasons), reasons
    # Nothing of them was stored, nothing failed to publish, and the service goes on.
    assert (await counters(stack))["rejected_starts"] == len(cases) + 2
    assert stack.orchestrators[0].engine.stats["publish_failures"] == 0  # type: ignore[union-attr]
    assert (await stack.run("order", order())).status == "completed"
    # The 10 KB id is never quoted whole: every log line stays short.
    assert max(len(record.getMessage()) for record in caplog.records) < 1000
    assert all("y" * 300 not in record.getMessage() for record in caplog.records)


async def test_a_wait_sees_only_its_own_saga(settings: Settings, cleanup: set[str]) -> None:
    """No orchestrator here: the test plays it, sending events that only look like the awaited saga's."""
    names = settings.names
    async with await SagaClient.connect(settings) as client:
        saga_id = f"w-{uuid.uuid4().hex[:8]}"
        waiting = asyncio.create_task(client.start("order", order(), saga_id, wait=True, timeout=20))
        connection = await aio_pika.connect(settings.amqp_url)
        channel = await connection.channel()
        start_queue = await channel.declare_queue(names.start_queue, durable=True, arguments=names.queue_arguments())
        await eventually(lambda: start_queue.get(fail=False, no_ack=True))  # the wait is bound: the start is out
        events = await channel.get_exchange(names.events_exchange)

        def event(of: str, data: dict[str, Any]) -> aio_pika.Message:
            body = encode(
                SagaEvent(saga_id=of, saga_type="order", status="completed", state="completed", at=0.0, data=data)
            )
            return aio_pika.Message(body)

        # Its own routing key with another saga in it, and another saga's key: neither is taken.
        await events.publish(event("someone-else", {"who": "someone-else"}), f"order.{saga_id}.completed")
        await events.publish(event(saga_id, {"who": "wrong key"}), "order.someone-else.completed")
        await events.publish(event(saga_id, {"who": "wrong key"}), f"order.{saga_id}.x.completed")
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await events.publish(event(saga_id, {"who": "me"}), f"order.{saga_id}.completed")
        outcome = await asyncio.wait_for(waiting, 10)
        assert outcome.saga_id == saga_id and outcome.data == {"who": "me"}
        await connection.close()

        # An id that would be a topic pattern never gets as far as a wait.
        with pytest.raises(SagaRejected, match="a saga id may hold only letters"):
            await client.start("order", order(), "#.#", wait=True, timeout=20)
        with pytest.raises(SagaRejected, match="at most 128"):
            await client.start("order", order(), "z" * 250)


async def test_saga_start_with_a_pattern_id_never_prints_another_sagas_outcome(stack: Stack) -> None:
    others = [asyncio.create_task(stack.run("order", order(secret=f"s-{n}"))) for n in range(5)]
    done = await cli(stack.settings, "start", "order", "--data", json.dumps(order()), "--id", "#.#", "--wait")
    assert done.returncode == 4 and "secret" not in done.stdout
    assert all(o.status == "completed" for o in await asyncio.gather(*others))


async def test_outcomes_go_only_where_they_may(stack: Stack) -> None:
    names = stack.names
    connection = await aio_pika.connect(stack.settings.amqp_url)
    channel = await connection.channel()
    exclusive = await channel.declare_queue(exclusive=True)
    shared = await channel.declare_queue(auto_delete=True)  # named by the client, but anyone may use it
    named = await channel.declare_queue(f"{names.reply_prefix}billing", auto_delete=True)

    async def start(saga_type: str, reply_to: str, **data: Any) -> str:
        saga_id = f"rt-{uuid.uuid4().hex[:8]}"
        start = StartSaga(saga_type=saga_type, data=order(**data), saga_id=saga_id, reply_to=reply_to)
        await publish_raw(stack.settings, names.start_queue, encode(start), message_id=saga_id)
        return saga_id

    async def outcome(queue: AbstractQueue) -> SagaEvent:
        message = await eventually(lambda: queue.get(fail=False, no_ack=True), timeout=20)
        return msgspec.json.decode(message.body, type=SagaEvent)

    # Allowed: an exclusive queue of the starter's, or one named <ns>.reply.<name>; refusals go there too.
    for queue in (exclusive, named):
        saga_id = await start("order", queue.name)
        got = await outcome(queue)
        assert (got.saga_id, got.status) == (saga_id, "completed")
        refused_id = await start("nosuchtype", queue.name)
        got = await outcome(queue)
        assert (got.saga_id, got.status) == (refused_id, "rejected")

    # Refused, with the reason: a participant's queue, and a queue that is not exclusive.
    for target in (names.participant_queue("payment"), shared.name):
        saga_id = await start("order", target)
        record = await eventually(lambda: stack.client.store.rejection(saga_id))  # noqa: B023
        assert record.error.code == "reply_to_not_allowed"
        assert f"reply_to {target!r} is neither an exclusive queue" in record.error.message
        assert await stack.client.store.load(saga_id) is None
    assert await shared.get(fail=False) is None
    assert (await stack.run("order", order())).status == "completed"
    assert (await counters(stack)).get(f"dead_letters:{names.participant_queue('payment')}", 0) == 0
    await connection.close()


# A participant whose replies are refused: the saga's history says why, and so does the timeout after.
TIMEOUT = 1.0
paying = Saga("rr_paying", steps=[Step("pay", participant="rr_pay", command="pay", timeout=TIMEOUT, retry=Retry(1))])


def malformed(kind: str) -> Any:
    async def script(worker: Scripted, command: Command, body: bytes) -> None:
        doc = json.loads(body)
        if kind == "failure without error":
            doc.update(outcome="failure", error=None)
        elif kind == "data as an array":
            doc["data"] = [1, 2]
        else:
            del doc["in_reply_to"]
        await worker.send(command, json.dumps(doc).encode())

    return script


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("failure without error", "a failure reply needs an error"),
        ("data as an array", "Expected `object`, got `array` - at `$.data`"),
        ("missing in_reply_to", "Object missing required field `in_reply_to`"),
    ],
)
async def test_a_refused_reply_is_written_into_its_sagas_history(
    settings: Settings, cleanup: set[str], kind: str, why: str
) -> None:
    cleanup.update(participants_of([paying]))
    worker = Scripted("rr_pay", malformed(kind))
    worker.act("pay", {"paid": True})
    async with running(settings, [paying], [worker]) as stack:
        outcome = await stack.run("rr_paying", {})
        assert outcome.status == "compensated"
        reason = f"reply from rr_pay refused: {why}"
        assert outcome.error is not None
        assert outcome.error.message == f"no reply to attempt 1 within 1s; a reply to it was refused ({reason})"
        store = stack.orchestrators[0].engine.store  # type: ignore[union-attr]
        history = await store.history(outcome.saga_id)
        assert [(h.event, h.detail) for h in history][:3] == [
            ("start", ""),
            ("refused_reply", reason),
            ("timed_out", outcome.error.message),
        ]
        assert (await store.counters())["refused_replies"] == 1
        shown = await cli(settings, "show", outcome.saga_id)
        assert "refused_reply" in shown.stdout and reason in shown.stdout
        [letter] = await take_dead_letters(settings, 1)
        assert letter.headers["x-saga-id"] == outcome.saga_id

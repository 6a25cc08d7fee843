"""--max-in-flight: starts beyond the limit wait in the start queue, and are taken as sagas finish."""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter

import aio_pika

from participants.edge.settings import Settings
from statemachines.dsl import Retry, Saga, Step
from statemachines.messages import StartSaga, encode
from tests.integration.conftest import FAST, eventually, running
from tests.integration.scripted import Scripted, open_store, participants_of, publish_raw

waits = Saga("adm_waits", steps=[Step("book", participant="adm_desk", command="book", timeout=60.0)])
LIMIT, STARTS = 10, 50


async def ready(settings: Settings, queue: str) -> int:
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        declared = await (await connection.channel()).declare_queue(queue, passive=True)
        return int(declared.declaration_result.message_count or 0)
    finally:
        await connection.close()


async def test_starts_beyond_the_limit_wait_in_the_queue_until_sagas_finish(
    settings: Settings, cleanup: set[str]
) -> None:
    cleanup.update(participants_of([waits]))
    tuning = dataclasses.replace(FAST, max_in_flight=LIMIT)
    async with running(settings, [waits], [], tuning=tuning) as stack:
        store = await open_store(settings)
        tag = uuid.uuid4().hex[:6]
        ids = [f"adm-{tag}-{n:02}" for n in range(STARTS)]
        for saga_id in ids:
            await publish_raw(
                settings, stack.names.start_queue, encode(StartSaga(saga_type="adm_waits", saga_id=saga_id, data={}))
            )

        async def started() -> list[str]:
            return [saga_id for saga_id in ids if await store.load(saga_id) is not None]

        # The participant is down: the first ten wait for it, the other forty for room.
        await eventually(lambda: _equals(started(), LIMIT), timeout=20)
        # At most LIMIT deliveries are held waiting for room: the rest stay ready in the queue.
        await eventually(lambda: _equals(ready(settings, stack.names.start_queue), STARTS - 2 * LIMIT), timeout=20)
        assert len(await started()) == LIMIT, "no more sagas than the limit"

        desk = Scripted("adm_desk")
        desk.act("book")
        await desk.start(settings)
        stack.workers.append(desk)

        async def completed() -> bool:
            statuses = [inst.status if (inst := await store.load(saga_id)) else None for saga_id in ids]
            return statuses == ["completed"] * STARTS

        await eventually(completed, timeout=60)
        assert await ready(settings, stack.names.start_queue) == 0
        await store.redis.aclose()


async def _equals(value: object, wanted: int) -> bool:
    got = await value  # type: ignore[misc]
    return (len(got) if isinstance(got, list) else got) == wanted


flaky = Saga(
    "adm_retries",
    steps=[Step("book", participant="adm_away", command="book", timeout=0.3, retry=Retry(9, backoff=0.05, jitter=0))],
)


async def test_a_participant_with_no_consumer_is_waited_for_not_sent_every_retry(
    settings: Settings, cleanup: set[str]
) -> None:
    cleanup.update(participants_of([flaky]))
    tuning = dataclasses.replace(FAST, hold_seconds=600.0)
    async with running(settings, [flaky], [], tuning=tuning) as stack:
        engine = stack.orchestrators[0].engine
        assert engine is not None
        engine.hold_recheck = 0.2
        ids = [await stack.client.start("adm_retries", {}) for _ in range(5)]
        # Every saga's deadline came due several times while the participant was away...
        await eventually(lambda: _at_least(engine.stats["held_back"], 5 * 5), timeout=20)
        # ...and not one attempt was spent: one command each waits in its queue.
        assert await ready(settings, stack.names.participant_queue("adm_away")) == len(ids)

        away = Scripted("adm_away")
        away.act("book")
        await away.start(settings)
        stack.workers.append(away)
        store = engine.store

        async def completed() -> bool:
            found = [await store.load(saga_id) for saga_id in ids]
            return all(inst is not None and inst.status == "completed" for inst in found)

        await eventually(completed, timeout=30)
        # The held command, past its deadline when it is read, is refused unstarted (deadline_exceeded)
        # and sent once more: two commands a saga at most, where its retry policy allows nine.
        per_saga = Counter(c.saga_id for c in away.received)
        assert set(per_saga) == set(ids) and max(per_saga.values()) <= 2, per_saga


async def _at_least(value: int, wanted: int) -> bool:
    return value >= wanted

"""--max-in-flight: starts beyond the limit wait in the start queue, and are taken as sagas finish."""

from __future__ import annotations

import dataclasses
import uuid

import aio_pika

from participants.edge.settings import Settings
from statemachines.dsl import Saga, Step
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

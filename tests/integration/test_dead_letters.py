"""`saga dead-letters`: list, show, replay after a fix, purge; reading them loses none."""

from __future__ import annotations

import json
import uuid

from orchestrator.registry import Registry
from orchestrator.service import Orchestrator
from participants.edge.settings import Settings
from statemachines.messages import StartSaga, encode
from statemachines.sagas import SAGAS, trip
from tests.integration.conftest import FAST, eventually, example_workers, remove_namespace
from tests.integration.scripted import cli, open_store, publish_raw
from tests.integration.test_end_to_end import order


async def letters(settings: Settings) -> list[dict[str, object]]:
    listed = await cli(settings, "dead-letters", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    return [json.loads(line) for line in listed.stdout.splitlines()]


async def test_dead_letters_list_show_replay_and_purge(settings: Settings) -> None:
    names = settings.names
    workers = example_workers()
    # An orchestrator that does not run the order saga yet: an order start is refused.
    old = Orchestrator(settings, Registry([trip]), FAST)
    store = await open_store(settings)
    try:
        await old.start()
        for worker in workers:
            await worker.start(settings)
        saga_id = f"dl-{uuid.uuid4().hex[:8]}"
        start = StartSaga(saga_type="order", data=order(), saga_id=saga_id)
        await publish_raw(settings, names.start_queue, encode(start), message_id=saga_id, correlation_id=saga_id)
        await publish_raw(settings, names.start_queue, b'{"saga_type": "order", "data": ', message_id="torn")

        async def two() -> list[dict[str, object]]:
            found = await letters(settings)
            return found if len(found) == 2 else []

        found = {doc["message_id"]: doc for doc in await eventually(two, timeout=20)}
        refused, torn = found[saga_id], found["torn"]
        assert refused["reason"] == "unknown saga type 'order'; known: trip"
        assert (refused["queue"], refused["deliveries"], refused["saga_id"]) == (names.start_queue, 1, saga_id)
        assert refused["body"] == json.loads(encode(start))
        # Without a saga_id of its own, a start goes by its message id.
        assert str(torn["reason"]).startswith("not a valid StartSaga: ") and torn["saga_id"] == "torn"
        assert torn["body_text"] == '{"saga_type": "order", "data": '
        assert len(await letters(settings)) == 2, "reading them took none away"

        listed = await cli(settings, "dead-letters", "list")
        header, *rows = listed.stdout.splitlines()
        assert header.split() == ["MESSAGE_ID", "QUEUE", "DELIVERIES", "SAGA", "REASON"]
        assert len(rows) == 2 and "2 dead letter(s)" in listed.stderr
        shown = await cli(settings, "dead-letters", "show", saga_id)
        assert shown.returncode == 0 and "unknown saga type 'order'" in shown.stdout and '"order_id"' in shown.stdout

        # The fix: an orchestrator that runs the order saga. Replayed, the start becomes a saga that completes.
        await old.close()
        new = Orchestrator(settings, Registry(list(SAGAS)), FAST)
        await new.start()
        try:
            replayed = await cli(settings, "dead-letters", "replay", saga_id)
            assert replayed.returncode == 0 and f"replayed to {names.start_queue}" in replayed.stdout

            async def completed() -> bool:
                inst = await store.load(saga_id)
                return inst is not None and inst.status == "completed"

            await eventually(completed, timeout=20)
            assert [doc["message_id"] for doc in await letters(settings)] == ["torn"]

            # Purge asks first; with nobody to say yes, nothing goes.
            asked = await cli(settings, "dead-letters", "purge")
            assert asked.returncode == 1 and "purge 1 dead letter(s)" in asked.stdout
            assert len(await letters(settings)) == 1
            purged = await cli(settings, "dead-letters", "purge", "--yes")
            assert purged.returncode == 0 and "purged 1 dead letter(s)" in purged.stdout
            assert await letters(settings) == []
            none = await cli(settings, "dead-letters", "replay", "torn")
            assert none.returncode == 1 and "no dead letter torn" in none.stderr
        finally:
            await new.close()
    finally:
        for worker in workers:
            await worker.close()
        await old.close()
        await store.redis.aclose()
        await remove_namespace(settings, {w.name for w in workers})

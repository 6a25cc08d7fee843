"""The worker honours a command's deadline: commands that waited out their deadline in the queue are not acted on."""

from __future__ import annotations

from typing import Any

from participants.edge.settings import Settings
from participants.worker import Context, Worker
from statemachines.dsl import Retry, Saga, Step
from tests.integration.conftest import eventually, running

QUICK = Retry(2, backoff=0.05, jitter=0)
ride = Saga(
    "dl_ride",
    [Step("ride", participant="dl_taxi", command="ride", compensation="unride", timeout=0.4, retry=QUICK)],
)


def taxi(log: list[str]) -> Worker:
    worker = Worker("dl_taxi")

    async def act(ctx: Context) -> dict[str, Any]:
        log.append("ride")
        return {"taxi": "t-1"}

    async def undo(ctx: Context) -> None:
        log.append("unride")

    worker.handler("ride")(act)
    worker.handler("unride")(undo)
    return worker


async def test_a_participant_back_after_the_saga_gave_up_does_not_act_and_then_undo(settings: Settings) -> None:
    """Down while both attempts timed out, the taxi comes back to a queue of stale rides and an unride.

    Without deadlines it would ride (the first stale attempt), then unride: a charge and a refund on the
    customer's statement. With them, the stale rides are refused unstarted and the unride finds nothing
    to undo.
    """
    log: list[str] = []
    async with running(settings, sagas=[ride], workers=[]) as stack:
        saga_id = await stack.client.start("dl_ride", {})

        async def compensating() -> bool:
            saga = await stack.client.status(saga_id)
            return saga is not None and saga.status == "compensating"

        await eventually(compensating)
        worker = taxi(log)
        await worker.start(settings)
        stack.workers.append(worker)
        outcome = await stack.client.start("dl_ride", {}, saga_id=saga_id, wait=True, timeout=20)
        assert outcome.status == "compensated"
        assert log == []
        history = await stack.client.store.history(saga_id)
        ignored = [h.detail for h in history if h.event == "ignored_reply"]
        # Each stale attempt was answered at once, with a refusal the saga no longer waited for.
        assert len([d for d in ignored if d.startswith("failure reply")]) == 2, ignored

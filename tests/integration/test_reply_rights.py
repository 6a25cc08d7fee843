"""What a reply may change, over the real services: it may not rewrite the saga's data, nor answer for another.

A refused reply is not taken: its saga's history and the dead letter say
why, and the step's timeout runs on as for any refused reply.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from participants.edge.settings import Settings
from statemachines.dsl import Retry, Saga, Step
from statemachines.messages import Command
from tests.integration.conftest import running
from tests.integration.scripted import Scripted, cli, participants_of, take_dead_letters

paying = Saga(
    "rd_paying",
    steps=[Step("pay", participant="rd_pay", command="pay", compensation="refund", timeout=1.0, retry=Retry(1))],
)


def claiming(participant: str) -> Any:
    async def script(worker: Scripted, command: Command, body: bytes) -> None:
        doc = json.loads(body)
        if command.action == "do":
            doc["participant"] = participant
        await worker.send(command, json.dumps(doc).encode())

    return script


@pytest.mark.parametrize(
    ("replies", "claims", "why"),
    [
        (
            {"customer_id": "other", "paid": True},
            "rd_pay",
            "step 'pay' may not change data key 'customer_id' (declare it in returns=[...])",
        ),
        ({"paid": True}, "shipping", "step 'pay' is answered by 'rd_pay', not by 'shipping'"),
    ],
    ids=["rewrites start data", "claims another participant"],
)
async def test_a_reply_that_may_not_be_taken_is_refused_and_changes_nothing(
    settings: Settings, cleanup: set[str], replies: dict[str, Any], claims: str, why: str
) -> None:
    cleanup.update(participants_of([paying]))
    worker = Scripted("rd_pay", claiming(claims))
    worker.act("pay", replies)
    worker.act("refund", {})
    async with running(settings, [paying], [worker]) as stack:
        outcome = await stack.run("rd_paying", {"customer_id": "c-1"})
        assert outcome.status == "compensated"
        store = stack.orchestrators[0].engine.store  # type: ignore[union-attr]
        inst = await store.load(outcome.saga_id)
        assert inst is not None and inst.data == {"customer_id": "c-1"}
        reason = f"reply from {claims} refused: {why}"
        history = await store.history(outcome.saga_id)
        assert ("refused_reply", reason) in [(h.event, h.detail) for h in history]
        assert outcome.error is not None and reason in outcome.error.message
        assert (await store.counters())["refused_replies"] >= 1
        shown = await cli(settings, "show", outcome.saga_id)
        assert reason in shown.stdout
        letters = await take_dead_letters(settings, 1)
        assert any(letter.headers["x-saga-reason"] == reason for letter in letters)

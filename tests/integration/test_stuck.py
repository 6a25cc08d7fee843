"""Stuck sagas and the operator's commands, through the real `saga` CLI in a subprocess.

A compensation that keeps failing ends the saga `stuck`, with the error kept
where an operator looks: the saga's final event and `saga show`. `saga retry`
resumes it once the participant works again; `saga compensate` forces a
running saga (waiting on a slow participant) to compensate. Both are
idempotent, and both refuse with one sentence and exit code 1 what cannot be
done. The CLI loads this module's sagas with `--sagas`.
"""

from __future__ import annotations

import json
import uuid

from participants.edge.settings import Settings
from participants.worker import Context, Failure
from statemachines.dsl import Retry, Saga, Step
from statemachines.messages import ErrorInfo
from tests.integration.conftest import eventually, running
from tests.integration.scripted import Scripted, cli, loaded, participants_of, transitions

MODULE = "tests.integration.test_stuck"
QUICK = Retry(2, backoff=0.05, jitter=0)

repair = Saga(
    "stk_repair",
    steps=[
        Step(
            "reserve",
            participant="stk_desk",
            command="reserve",
            compensation="unreserve",
            timeout=10.0,
            compensation_retry=QUICK,
        ),
        Step("book", participant="stk_desk", command="book", timeout=10.0, retry=Retry(1)),
    ],
)

slow = Saga(
    "stk_slow",
    steps=[
        Step("reserve", participant="stk_desk", command="reserve", compensation="unreserve", timeout=10.0),
        Step("book", participant="stk_hotel", command="book", compensation="unbook", timeout=30.0),
        Step("confirm", participant="stk_desk", command="confirm", timeout=10.0, pivot=True),
        Step("notify", participant="stk_mailer", command="notify", timeout=30.0),
    ],
)
SAGAS = [repair, slow]


class Desk(Scripted):
    """Reserves; cannot book; cannot undo a reservation while its ledger is read-only."""

    def __init__(self) -> None:
        super().__init__("stk_desk")
        self.ledger_down = True
        self.act("reserve", {"reservation": "r-1"})
        self.act("book", failure=lambda ctx: Failure("no_room", "fully booked"))
        self.act("unreserve", failure=self._unreserve)
        self.act("confirm")

    def _unreserve(self, ctx: Context) -> Failure | None:
        return Failure("ledger_down", "the ledger is read-only") if self.ledger_down else None


def hotel() -> Scripted:
    worker = Scripted("stk_hotel", prefetch=1)  # one at a time: the booking first, then its undo
    worker.act("book", {"booking": "b-1"})
    worker.act("unbook")
    return worker


async def test_a_failing_compensation_is_stuck_and_saga_retry_finishes_it(
    settings: Settings, cleanup: set[str]
) -> None:
    cleanup.update(participants_of(SAGAS))
    desk = Desk()
    async with running(settings, SAGAS, [desk]) as stack:
        store = stack.orchestrators[0].engine.store  # type: ignore[union-attr]
        outcome = await stack.run("stk_repair", {"guest": "g-1"})
        saga_id = outcome.saga_id
        assert outcome.status == "stuck"
        assert (outcome.state, outcome.step) == ("stuck", "reserve")
        assert outcome.error == ErrorInfo("ledger_down", "the ledger is read-only")
        assert desk.calls["unreserve"] == [f"{saga_id}:reserve"] * 2, "its compensation retry policy: 2 attempts"

        shown = await cli(settings, "show", saga_id)
        assert shown.returncode == 0, shown.stderr
        assert "status    stuck" in shown.stdout
        assert "error     ledger_down: the ledger is read-only" in shown.stdout
        assert "step      reserve (compensate), attempt 2" in shown.stdout, "where it is stuck, first"
        doc = json.loads((await cli(settings, "show", saga_id, "--json")).stdout)
        assert doc["status"] == "stuck" and doc["error"]["code"] == "ledger_down"

        # The ledger works again: a retry resumes the compensation where it stuck, and it ends.
        desk.ledger_down = False
        retried = await cli(settings, "retry", saga_id, "--sagas", MODULE)
        assert retried.returncode == 0, retried.stdout + retried.stderr
        assert f"{saga_id}: resumed; now compensating in compensating_reserve" in retried.stdout
        done = await eventually(lambda: loaded(store, saga_id, lambda i: i.status == "compensated"))
        assert done.state == "compensated"
        assert desk.calls["unreserve"] == [f"{saga_id}:reserve"] * 3
        assert not await store.redis.exists(stack.names.outbox_key(saga_id)), "the CLI forgot what it published"

        again = await cli(settings, "retry", saga_id, "--sagas", MODULE)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "not stuck: nothing to resume" in again.stdout
        # Nothing to do is no error to either command: they agree.
        nothing = await cli(settings, "compensate", saga_id, "--sagas", MODULE)
        assert nothing.returncode == 0 and "nothing to compensate" in nothing.stdout, nothing.stdout + nothing.stderr
        entries = await store.history(saga_id)
        assert [(h.event, h.dest) for h in transitions(entries)] == [
            ("start", "reserve"),
            ("succeeded", "book"),
            ("failed", "compensating_reserve"),
            ("failed", "compensating_reserve"),
            ("resend", "compensating_reserve"),
            ("failed", "stuck"),
            ("resume", "compensating_reserve"),
            ("succeeded", "compensated"),
        ]
        assert await store.load(saga_id) == done, "the second retry changed nothing"


async def test_saga_compensate_forces_a_saga_waiting_on_a_slow_participant_to_compensate(
    settings: Settings, cleanup: set[str]
) -> None:
    cleanup.update(participants_of(SAGAS))
    desk = Desk()
    desk.ledger_down = False
    async with running(settings, SAGAS, [desk]) as stack:
        store = stack.orchestrators[0].engine.store  # type: ignore[union-attr]
        saga_id = f"stk-{uuid.uuid4().hex[:8]}"
        await stack.client.start("stk_slow", {"guest": "g-2"}, saga_id)
        # The hotel is not even up: the booking waits in its queue.
        await eventually(lambda: loaded(store, saga_id, lambda i: i.state == "book"))

        forced = await cli(settings, "compensate", saga_id, "--sagas", MODULE)
        assert forced.returncode == 0, forced.stdout + forced.stderr
        assert f"{saga_id}: compensation forced; now compensating in compensating_book" in forced.stdout
        assert not await store.redis.exists(stack.names.outbox_key(saga_id)), "the CLI forgot what it published"
        twice = await cli(settings, "compensate", saga_id, "--sagas", MODULE)
        assert twice.returncode == 0, twice.stdout + twice.stderr

        # The hotel comes up: it books (the answer is too late to count), then undoes the booking.
        worker = hotel()
        await worker.start(settings)
        stack.workers.append(worker)
        done = await eventually(lambda: loaded(store, saga_id, lambda i: i.status == "compensated"))
        assert done.error == ErrorInfo("aborted", "compensation forced by an operator")
        key = f"{saga_id}:book"
        assert worker.calls["book"] == [key] and worker.calls["unbook"] == [key]
        assert worker.attempts(saga_id) == [("do", "book", 1), ("compensate", "unbook", 1)]
        assert desk.calls["unreserve"] == [f"{saga_id}:reserve"]

        async def late_answer_recorded() -> bool:
            return any(h.event == "ignored_reply" for h in await store.history(saga_id))

        await eventually(late_answer_recorded)
        entries = await store.history(saga_id)
        assert [(h.event, h.dest) for h in transitions(entries)] == [
            ("start", "reserve"),
            ("succeeded", "book"),
            ("abort", "compensating_book"),
            ("succeeded", "compensating_reserve"),
            ("succeeded", "compensated"),
        ]
        thrice = await cli(settings, "compensate", saga_id, "--sagas", MODULE)
        assert thrice.returncode == 0, thrice.stdout + thrice.stderr


async def test_operator_commands_refuse_what_cannot_be_done_with_a_sentence(
    settings: Settings, cleanup: set[str]
) -> None:
    cleanup.update(participants_of(SAGAS))
    desk = Desk()
    async with running(settings, SAGAS, [desk, hotel()]) as stack:
        store = stack.orchestrators[0].engine.store  # type: ignore[union-attr]
        saga_id = f"stk-{uuid.uuid4().hex[:8]}"
        await stack.client.start("stk_slow", {"guest": "g-3"}, saga_id)
        # Past its pivot, waiting on a mailer that is not up.
        before = await eventually(lambda: loaded(store, saga_id, lambda i: i.state == "notify"))

        refused = await cli(settings, "compensate", saga_id, "--sagas", MODULE)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        said = (refused.stdout + refused.stderr).strip()
        assert len(said.splitlines()) == 1 and "Traceback" not in said
        assert "pivot" in said, said
        assert await store.load(saga_id) == before, "nothing changed"

        running_retry = await cli(settings, "retry", saga_id, "--sagas", MODULE)
        assert running_retry.returncode == 0, "a saga that is running needs no retry: not an error"
        assert "not stuck" in running_retry.stdout

        missing = await cli(settings, "retry", "no-such-saga", "--sagas", MODULE)
        assert missing.returncode == 1
        assert missing.stderr.startswith("saga: no saga 'no-such-saga'") and "Traceback" not in missing.stderr

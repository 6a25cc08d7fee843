"""A step's time to live and the saga's deadline, over real RabbitMQ and Redis.

The hotel participant below is a real worker: it runs its handlers and
records each step. Only its answers are scripted: lost, held back and sent
late, or sent. From the orchestrator's side that is a silent or slow
participant, whose action may well have happened.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from participants.edge.settings import Settings
from statemachines.dsl import Retry, Saga, Step
from statemachines.messages import Command, ErrorInfo
from tests.integration.conftest import eventually, running
from tests.integration.scripted import Script, Scripted, loaded, now, participants_of, transitions

TIMEOUT = 0.4
QUICK = Retry(3, backoff=0.05, jitter=0)

booking = Saga(
    "tmo_booking",
    steps=[
        Step("reserve", participant="tmo_desk", command="reserve", compensation="unreserve", timeout=10.0),
        Step(
            "book",
            participant="tmo_hotel",
            command="book",
            compensation="unbook",
            timeout=TIMEOUT,
            retry=QUICK,
            compensation_retry=QUICK,
        ),
        Step("confirm", participant="tmo_desk", command="confirm", timeout=10.0, pivot=True),
    ],
)

DEADLINE = 1.0
deadlined = Saga(
    "tmo_deadlined",
    deadline=DEADLINE,
    steps=[
        Step("reserve", participant="tmo_desk", command="reserve", compensation="unreserve", timeout=10.0),
        Step("book", participant="tmo_hotel", command="book", compensation="unbook", timeout=10.0),
        Step("confirm", participant="tmo_desk", command="confirm", timeout=10.0, pivot=True),
        Step("notify", participant="tmo_hotel", command="notify", timeout=10.0),
    ],
)
SAGAS = [booking, deadlined]


def desk() -> Scripted:
    worker = Scripted("tmo_desk")
    worker.act("reserve", {"reservation": "r-1"})
    worker.act("unreserve")
    worker.act("confirm")
    return worker


def hotel(script: Script) -> Scripted:
    worker = Scripted("tmo_hotel", script)
    worker.act("book", {"booking": "b-1"})
    worker.act("unbook")
    worker.act("notify")
    return worker


async def hold_actions(worker: Scripted, command: Command, body: bytes) -> None:
    """The hotel books, but its answers to bookings arrive only when the test says."""
    if command.action == "do":
        worker.hold(command, body)
    else:
        await worker.send(command, body)


async def test_a_silent_step_times_out_is_retried_then_compensated_with_itself(
    settings: Settings, cleanup: set[str]
) -> None:
    cleanup.update(participants_of(SAGAS))
    front, slow = desk(), hotel(hold_actions)
    async with running(settings, SAGAS, [front, slow]) as stack:
        store = stack.orchestrators[0].engine.store  # type: ignore[union-attr]
        outcome = await stack.run("tmo_booking", {"guest": "g-1"})
        saga_id = outcome.saga_id
        assert outcome.status == "compensated"
        assert outcome.error == ErrorInfo("timeout", f"no reply to attempt 3 within {TIMEOUT:g}s")

        # The retry policy on the wire: three attempts, then the step's own compensation.
        assert slow.attempts(saga_id) == [
            ("do", "book", 1),
            ("do", "book", 2),
            ("do", "book", 3),
            ("compensate", "unbook", 1),
        ]
        key = f"{saga_id}:book"
        assert slow.calls["book"] == [key], "the booking happened once; retries got its first result"
        assert slow.calls["unbook"] == [key], "the booking that timed out is undone"
        assert front.calls["unreserve"] == [f"{saga_id}:reserve"]
        assert "confirm" not in front.calls

        entries = await store.history(saga_id)
        assert [(h.event, h.dest) for h in entries] == [
            ("start", "reserve"),
            ("succeeded", "book"),
            ("timed_out", "book"),
            ("resend", "book"),
            ("timed_out", "book"),
            ("resend", "book"),
            ("timed_out", "compensating_book"),
            ("succeeded", "compensating_reserve"),
            ("succeeded", "compensated"),
        ]
        # Each attempt timed out no sooner than its time to live after it was sent, and promptly.
        sent = [h for h in entries if h.dest == "book" and h.event in ("succeeded", "resend")]
        timed_out = [h for h in entries if h.event == "timed_out"]
        assert [h.detail for h in timed_out] == [f"no reply to attempt {n} within {TIMEOUT:g}s" for n in (1, 2, 3)]
        commands = {c.attempt: c for c in reversed(slow.received) if c.action == "do"}
        for attempt, (sender, expiry) in enumerate(zip(sent, timed_out, strict=True), start=1):
            deadline = commands[attempt].deadline
            assert deadline is not None and deadline == pytest.approx(sender.at + TIMEOUT)
            assert deadline <= expiry.at < deadline + 3.0

        # The hotel's answers turn up now, late: recorded, and nothing changes.
        before = await store.load(saga_id)
        late = await slow.release()
        assert [c.attempt for c in late] == [1, 2, 3]

        async def ignored() -> list[str]:
            found = [h for h in await store.history(saga_id) if h.event == "ignored_reply"]
            return [h.detail for h in found] if len(found) == 3 else []

        details = await eventually(ignored)
        for command in late:
            assert any(f"success reply to {command.message_id}" in d for d in details), details
        after = await store.load(saga_id)
        assert after == before
        assert after is not None and "booking" not in after.data


async def late_then_third(worker: Scripted, command: Command, body: bytes) -> None:
    """The answer to attempt 1 arrives while the saga waits for attempt 2; attempt 2's is lost; 3's arrives."""
    if command.action != "do" or command.attempt >= 3:
        await worker.send(command, body)
    elif command.attempt == 1:
        worker.hold(command, body)
    else:
        await worker.release()


async def test_a_step_answered_on_a_later_attempt_completes_and_the_late_answer_is_ignored(
    settings: Settings, cleanup: set[str]
) -> None:
    cleanup.update(participants_of(SAGAS))
    front, slow = desk(), hotel(late_then_third)
    async with running(settings, SAGAS, [front, slow]) as stack:
        store = stack.orchestrators[0].engine.store  # type: ignore[union-attr]
        outcome = await stack.run("tmo_booking", {"guest": "g-2"})
        saga_id = outcome.saga_id
        assert outcome.status == "completed"
        assert outcome.data["booking"] == "b-1"
        assert slow.attempts(saga_id) == [("do", "book", 1), ("do", "book", 2), ("do", "book", 3)]
        assert slow.calls["book"] == [f"{saga_id}:book"]
        assert "unbook" not in slow.calls and "unreserve" not in front.calls

        entries = await store.history(saga_id)
        assert [(h.event, h.dest) for h in transitions(entries)] == [
            ("start", "reserve"),
            ("succeeded", "book"),
            ("timed_out", "book"),
            ("resend", "book"),
            ("timed_out", "book"),
            ("resend", "book"),
            ("succeeded", "confirm"),
            ("succeeded", "completed"),
        ]
        timed_out = [h.detail for h in entries if h.event == "timed_out"]
        assert timed_out == [f"no reply to attempt {n} within {TIMEOUT:g}s" for n in (1, 2)]
        [late] = [h for h in entries if h.event == "ignored_reply"]
        assert (late.source, late.dest, late.attempt) == ("book", "book", 2)
        assert f"success reply to {saga_id}:" in late.detail and "the saga awaits" in late.detail


async def test_the_saga_deadline_compensates_before_the_pivot(settings: Settings, cleanup: set[str]) -> None:
    cleanup.update(participants_of(SAGAS))
    front, slow = desk(), hotel(hold_actions)
    async with running(settings, SAGAS, [front, slow]) as stack:
        store = stack.orchestrators[0].engine.store  # type: ignore[union-attr]
        outcome = await stack.run("tmo_deadlined", {"guest": "g-3"})
        saga_id = outcome.saga_id
        assert outcome.status == "compensated"
        assert outcome.error == ErrorInfo("expired", "saga deadline passed at step 'book'")
        key = f"{saga_id}:book"
        assert slow.calls["book"] == [key] and slow.calls["unbook"] == [key]
        assert front.calls["unreserve"] == [f"{saga_id}:reserve"]
        assert slow.attempts(saga_id) == [("do", "book", 1), ("compensate", "unbook", 1)]

        inst = await store.load(saga_id)
        assert inst is not None
        entries = await store.history(saga_id)
        [expired] = [h for h in entries if h.event == "expired"]
        assert (expired.source, expired.dest) == ("book", "compensating_book")
        assert inst.created_at + DEADLINE <= expired.at < inst.created_at + DEADLINE + 3.0
        assert "timed_out" not in {h.event for h in entries}, "the step's own 10 s never ran out"


async def hold_notify(worker: Scripted, command: Command, body: bytes) -> None:
    if command.command == "notify":
        worker.hold(command, body)
    else:
        await worker.send(command, body)


async def test_the_saga_deadline_does_not_apply_after_the_pivot(settings: Settings, cleanup: set[str]) -> None:
    cleanup.update(participants_of(SAGAS))
    front, slow = desk(), hotel(hold_notify)
    async with running(settings, SAGAS, [front, slow]) as stack:
        store = stack.orchestrators[0].engine.store  # type: ignore[union-attr]
        saga_id = await stack.client.start("tmo_deadlined", {"guest": "g-4"})
        inst = await eventually(lambda: loaded(store, saga_id, lambda i: i.state == "notify"))
        assert inst.deadline is None, "past the pivot the saga has no deadline any more"
        await eventually(lambda: now(bool(slow.held)))
        # Let the deadline the saga was started with pass, well beyond a timer tick.
        await asyncio.sleep(max(0.0, inst.created_at + DEADLINE + 0.3 - time.time()))
        still = await store.load(saga_id)
        assert still is not None and still.state == "notify" and still.rev == inst.rev

        await slow.release()
        done = await eventually(lambda: loaded(store, saga_id, lambda i: i.status == "completed"))
        assert done.state == "completed"
        events = [h.event for h in await store.history(saga_id)]
        assert "expired" not in events and "timed_out" not in events
        assert "unreserve" not in front.calls and "unbook" not in slow.calls

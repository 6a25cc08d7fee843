"""The harness as a user sees it: start, feed replies, move the clock, read what happened."""

from __future__ import annotations

from typing import Any

import pytest

import statemachines.harness
from orchestrator.tools.bench_sagas import in_line
from statemachines import Decision, Due, Retry, Saga, SagaHarness, Step, decide
from statemachines.sagas import order, trip

ORDER = {"order_id": "o-1", "customer_id": "c-1", "items": [{"sku": "book", "qty": 2}], "amount": 30}
TRIP = {"trip_id": "t-1", "customer_id": "c-1", "destination": "Oslo"}


def test_the_docstring_example_works() -> None:
    harness = SagaHarness(order)
    run = harness.start("order", ORDER)
    run.succeed({"reservation_id": "r-1"})
    run.fail("card_declined")
    assert run.sent[-1].command == "release_stock"
    run.succeed()
    assert run.status == "compensated"


def test_start_names_each_saga_and_reads_what_it_sent() -> None:
    harness = SagaHarness(order, trip)
    first = harness.start("order", ORDER)
    second = harness.start("order", ORDER)
    assert first.saga_id != second.saga_id
    assert harness.runs == {first.saga_id: first, second.saga_id: second}
    [sent] = first.sent
    assert (sent.participant, sent.command, sent.step, sent.action, sent.attempt) == (
        "inventory",
        "reserve_stock",
        "reserve_inventory",
        "do",
        1,
    )
    assert sent.payload == {"order_id": "o-1", "items": [{"sku": "book", "qty": 2}], "fail_at": []}
    assert first.awaiting == sent
    assert (first.state, first.status, first.done) == ("reserve_inventory", "running", False)
    assert first.states == ["new", "reserve_inventory"]
    assert [e.status for e in first.events] == ["running"]
    named = harness.start("trip", TRIP, saga_id="my-trip")
    assert named.saga_id == "my-trip"
    assert {sent.participant for sent in named.awaited} == {"flight", "hotel", "car"}


def test_start_needs_the_type_only_when_there_are_several_sagas() -> None:
    assert SagaHarness(trip).start(data=TRIP).saga.name == "trip"
    with pytest.raises(ValueError, match=r"name the saga type, one of \['order', 'trip'\]"):
        SagaHarness(order, trip).start(data=ORDER)


def test_start_of_an_unknown_type_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown saga type 'ordr', one of \['order', 'trip'\]"):
        SagaHarness(order, trip).start("ordr", ORDER)


def test_start_with_bad_data_raises_and_keeps_no_run() -> None:
    harness = SagaHarness(order)
    with pytest.raises(ValueError, match="does not fit saga 'order'"):
        harness.start(data={"order_id": "o-1"}, saga_id="bad")
    assert harness.runs == {}


def test_a_harness_needs_a_saga() -> None:
    with pytest.raises(ValueError, match="at least one saga"):
        SagaHarness()


def test_succeed_and_fail_answer_the_awaited_command() -> None:
    harness = SagaHarness(in_line(trip, "trip"))
    run = harness.start(data=TRIP)
    decision = run.succeed({"flight": "SK123"})
    assert decision.changed
    assert run.data["flight"] == "SK123"
    assert run.awaiting is not None and run.awaiting.command == "book_hotel"
    run.fail("no_rooms", "fully booked")
    assert run.error is not None and (run.error.code, run.error.message) == ("no_rooms", "fully booked")
    assert run.awaiting is not None and (run.awaiting.command, run.awaiting.action) == ("cancel_flight", "compensate")
    run.succeed()
    assert (run.status, run.done) == ("compensated", True)
    assert run.states == ["new", "book_flight", "book_hotel", "compensating_book_flight", "compensated"]
    assert [e.status for e in run.events] == ["running", "compensating", "compensated"]


def test_advance_fires_timeouts_and_retries_in_time_order_across_sagas() -> None:
    slow = Saga("slow", [Step("wait", participant="p", command="c", timeout=5, retry=Retry(2, backoff=1, jitter=0))])
    fast = Saga("fast", [Step("wait", participant="p", command="c", timeout=3, retry=Retry(2, backoff=1, jitter=0))])
    harness = SagaHarness(slow, fast, start_time=100.0)
    a = harness.start("slow")
    b = harness.start("fast")
    harness.advance(4)
    assert harness.now == 104.0
    assert [s.attempt for s in a.sent] == [1]
    assert [s.attempt for s in b.sent] == [1, 2]  # timed out at 103, resent at 104
    assert b.sent[1].message.deadline == 107.0
    harness.advance(3.5)
    assert harness.now == 107.5
    assert [h.at for h in a.history] == [100.0, 105.0, 106.0]
    assert [h.at for h in b.history] == [100.0, 103.0, 104.0, 107.0]
    assert b.status == "compensated"  # attempt 2 timed out too; nothing to undo
    assert a.awaiting is not None and a.awaiting.attempt == 2


def test_advance_with_nothing_due_only_moves_the_clock() -> None:
    harness = SagaHarness(order)
    run = harness.start(data=ORDER)
    harness.advance(9.5)
    assert harness.now == 9.5
    assert len(run.sent) == 1
    assert len(run.history) == 1


def test_the_clock_does_not_go_back() -> None:
    harness = SagaHarness(order)
    with pytest.raises(ValueError, match="only moves forward"):
        harness.advance(-1)
    assert harness.now == 0.0


def test_nothing_awaited_is_a_readable_error() -> None:
    harness = SagaHarness(order)
    run = harness.start(data=ORDER)
    run.fail("unavailable")
    assert run.awaiting is None
    with pytest.raises(AssertionError, match=r"awaits no reply \(state 'reserve_inventory', waiting 'backoff'\)"):
        run.succeed()
    with pytest.raises(AssertionError, match=r"advance the clock or pass to=run\.sent"):
        run.fail("again")
    # An explicit target still builds a reply, e.g. a late one.
    late = run.reply("success", to=run.sent[0])
    assert late.in_reply_to == run.sent[0].message.message_id
    assert not run.deliver(late).changed
    run.abort()
    with pytest.raises(AssertionError, match=r"state 'compensated', waiting None"):
        run.succeed()


def test_reply_builds_without_delivering() -> None:
    harness = SagaHarness(order)
    run = harness.start(data=ORDER)
    reply = run.reply("success", data={"reservation_id": "r-1"})
    assert (reply.saga_id, reply.step, reply.action, reply.outcome, reply.participant) == (
        run.saga_id,
        "reserve_inventory",
        "do",
        "success",
        "inventory",
    )
    assert len(run.history) == 1  # not delivered yet
    assert run.state == "reserve_inventory"
    run.deliver(reply)
    assert run.state == "charge_payment"
    assert run.reply("success").message_id != reply.message_id


def test_abort_and_resume_from_the_run() -> None:
    harness = SagaHarness(order)
    run = harness.start(data=ORDER)
    run.succeed()
    run.abort("customer cancelled")
    assert run.status == "compensating"
    assert run.history[-1].detail == "customer cancelled"
    assert not run.resume().changed


def test_repr_shows_the_state() -> None:
    harness = SagaHarness(order)
    run = harness.start(data=ORDER, saga_id="o-9")
    assert repr(run) == "<SagaRun order o-9 reserve_inventory>"


def test_a_due_event_that_changes_nothing_fails_instead_of_looping(monkeypatch: pytest.MonkeyPatch) -> None:
    harness = SagaHarness(order)
    harness.start(data=ORDER)
    real = decide
    calls = []

    def stubborn(saga: Saga, instance: Any, event: Any, now: float, *breakers: Any) -> Decision:
        calls.append(event)
        assert len(calls) < 50, "advance keeps firing the same Due"
        return (
            Decision(instance, note="nothing is due yet")
            if isinstance(event, Due)
            else real(saga, instance, event, now)
        )

    monkeypatch.setattr(statemachines.harness, "decide", stubborn)
    with pytest.raises(
        AssertionError, match=r"saga 'order-1' is due at 10 but its Due event changed nothing: nothing is"
    ):
        harness.advance(60)

"""decide() rules, driven through the harness (and decide directly where that is clearer)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import msgspec
import pytest

from statemachines import Abort, Due, ErrorInfo, Reply, Resume, Retry, Saga, SagaHarness, SagaRun, Start, Step, decide
from statemachines.harness import Sent

DATA = {"order_id": "o-1", "items": ["book"], "amount": 12}
# No jitter, so the backoff is exactly 1s, then 2s.
FORWARD = Retry(3, backoff=1.0, multiplier=2.0, jitter=0.0, retry_on=["unavailable"])
UNDO = Retry(2, backoff=1.0, jitter=0.0)


def charge_payload(data: Mapping[str, Any]) -> dict[str, Any]:
    return {"order_id": data["order_id"], "cents": data["amount"] * 100}


def shop(*, charge_payload: Any = charge_payload, **options: Any) -> Saga:
    """reserve (compensable) -> charge (compensable) -> ship (pivot) -> notify."""
    common: dict[str, Any] = {"timeout": 10.0, "retry": FORWARD, "compensation_retry": UNDO}
    return Saga(
        "shop",
        [
            Step(
                "reserve",
                participant="inventory",
                command="reserve_stock",
                compensation="release_stock",
                payload=["order_id", "items", "reservation_id"],
                returns=["reservation_id", "amount"],  # a reservation may reprice the order
                **common,
            ),
            Step(
                "charge",
                participant="payment",
                command="charge",
                compensation="refund",
                payload=charge_payload,
                **common,
            ),
            Step(
                "ship",
                participant="shipping",
                command="ship",
                payload=["order_id", "reservation_id"],
                pivot=True,
                **common,
            ),
            Step("notify", participant="mail", command="send_mail", payload=["order_id", "tracking"], **common),
        ],
        **options,
    )


def started(saga: Saga | None = None, data: Mapping[str, Any] = DATA) -> tuple[SagaHarness, SagaRun]:
    harness = SagaHarness(saga or shop())
    return harness, harness.start("shop", data)


def awaited(run: SagaRun) -> Sent:
    sent = run.awaiting
    assert sent is not None, f"{run} awaits nothing"
    return sent


def succeed_until(run: SagaRun, step: str) -> None:
    """Answer every command with success until the saga awaits `step`."""
    while awaited(run).step != step:
        run.succeed()


def sent_summary(run: SagaRun) -> list[tuple[str, str, int]]:
    return [(s.step, s.action, s.attempt) for s in run.sent]


def compensations(run: SagaRun) -> list[str]:
    return [s.command for s in run.sent if s.action == "compensate"]


def statuses(run: SagaRun) -> list[str]:
    return [e.status for e in run.events]


# Payloads and data


def test_start_sends_the_first_command_with_its_payload() -> None:
    _, run = started()
    assert run.status == "running"
    assert run.state == "reserve"
    [first] = run.sent
    assert (first.participant, first.command, first.action, first.attempt) == ("inventory", "reserve_stock", "do", 1)
    # Only the keys the step names, and of those only the ones present.
    assert first.payload == {"order_id": "o-1", "items": ["book"]}
    assert first.message.saga_id == run.saga_id
    assert first.message.saga_type == "shop"
    assert first.message.deadline == 10.0


def test_a_payload_builder_computes_the_payload_and_no_payload_means_all_data() -> None:
    _, run = started()
    run.succeed()
    assert awaited(run).payload == {"order_id": "o-1", "cents": 1200}
    everything = Saga("plain", [Step("only", participant="p", command="c")])
    plain = SagaHarness(everything).start(data={"a": 1, "b": [2]})
    assert plain.sent[0].payload == {"a": 1, "b": [2]}


def test_success_merges_the_reply_data_and_sends_the_next_command() -> None:
    _, run = started()
    run.succeed({"reservation_id": "r-1", "amount": 15})
    assert run.data == {**DATA, "reservation_id": "r-1", "amount": 15}
    assert awaited(run).command == "charge"
    assert awaited(run).payload == {"order_id": "o-1", "cents": 1500}  # built from the merged data
    run.succeed({"charge_id": "c-9"})
    assert awaited(run).payload == {"order_id": "o-1", "reservation_id": "r-1"}
    run.succeed({"tracking": "t-3"})
    assert awaited(run).payload == {"order_id": "o-1", "tracking": "t-3"}
    run.succeed()
    assert run.status == "completed"
    assert run.state == "completed"
    assert run.awaiting is None
    assert run.events[-1].data == {**DATA, "reservation_id": "r-1", "amount": 15, "charge_id": "c-9", "tracking": "t-3"}
    assert [(s.step, s.attempt) for s in run.sent] == [("reserve", 1), ("charge", 1), ("ship", 1), ("notify", 1)]


# Retries


def test_a_retryable_failure_resends_with_attempt_plus_one_after_the_backoff() -> None:
    harness, run = started()
    run.succeed()
    first = awaited(run)
    run.fail("unavailable", "payment service restarting")
    assert len(run.sent) == 2  # nothing resent yet
    assert run.awaiting is None
    assert run.instance is not None and run.instance.waiting == "backoff"
    harness.advance(0.5)
    assert len(run.sent) == 2
    harness.advance(0.5)
    second = awaited(run)
    assert len(run.sent) == 3
    assert (second.command, second.attempt, second.payload) == ("charge", 2, first.payload)
    assert second.message.message_id != first.message.message_id
    assert second.message.deadline == harness.now + 10.0
    # The backoff grows by the multiplier: 2s before attempt 3.
    run.fail("unavailable")
    harness.advance(1.5)
    assert len(run.sent) == 3
    harness.advance(0.5)
    assert awaited(run).attempt == 3
    run.succeed()
    assert awaited(run).step == "ship"
    assert run.status == "running"


def test_retryable_failures_past_the_limit_compensate_completed_steps_in_reverse_order() -> None:
    saga = Saga(
        "three",
        [
            Step(name, participant=name, command=f"do_{name}", compensation=f"undo_{name}", retry=Retry(3, jitter=0))
            for name in ("a", "b", "c")
        ],
    )
    harness = SagaHarness(saga)
    run = harness.start()
    run.succeed()
    run.succeed()
    run.fail("unavailable")
    harness.advance(0.5)
    run.fail("unavailable")
    harness.advance(1)
    run.fail("unavailable")
    # c failed, so it did not happen: only b and a are undone, b first.
    assert compensations(run) == ["undo_b"]
    assert [s.attempt for s in run.sent if s.step == "c"] == [1, 2, 3]
    run.succeed()
    assert compensations(run) == ["undo_b", "undo_a"]
    run.succeed()
    assert run.status == "compensated"
    assert run.error is not None and run.error.code == "unavailable"


def test_a_code_not_in_retry_on_compensates_at_once() -> None:
    _, run = started()
    run.succeed()
    run.fail("card_declined", "insufficient funds")
    assert run.state == "compensating_reserve"
    assert run.status == "compensating"
    assert sent_summary(run) == [("reserve", "do", 1), ("charge", "do", 1), ("reserve", "compensate", 1)]
    assert awaited(run).command == "release_stock"
    assert run.error is not None and (run.error.code, run.error.message) == ("card_declined", "insufficient funds")


def test_retry_on_none_retries_any_code() -> None:
    saga = Saga("any", [Step("a", participant="p", command="c", retry=Retry(2, backoff=0))])
    run = SagaHarness(saga).start()
    run.fail("whatever")
    # A zero backoff resends at once.
    assert sent_summary(run) == [("a", "do", 1), ("a", "do", 2)]


def test_jitter_is_deterministic_per_attempt_and_capped() -> None:
    policy = Retry(4, backoff=1.0, multiplier=2.0, max_backoff=3.0, jitter=0.2)
    saga = Saga("jittery", [Step("a", participant="p", command="c", timeout=100, retry=policy)])

    def delays(saga_id: str) -> list[float]:
        harness = SagaHarness(saga)
        run = harness.start(saga_id=saga_id)
        found = []
        for _ in range(3):
            run.fail("busy")
            assert run.instance is not None and run.instance.due_at is not None
            found.append(run.instance.due_at - harness.now)
            harness.advance(found[-1] + 0.001)
            assert run.awaiting is not None
        return found

    runs = {saga_id: delays(saga_id) for saga_id in (f"order-{n}" for n in range(30))}
    assert delays("order-7") == runs["order-7"]  # the same saga and attempt wait the same time
    first = [d[0] for d in runs.values()]
    assert len(set(first)) > 20  # spread across sagas, so retries do not come in waves
    assert all(0.8 <= d <= 1.2 for d in first)  # 1s +/- 20%
    assert all(1.6 <= d[1] <= 2.4 for d in runs.values())  # 2s +/- 20%
    assert len({d[1] for d in runs.values()}) > 20
    assert all(d[2] == pytest.approx(3.0) for d in runs.values())  # 4s +/- 20%, capped at 3


# Timeouts


def test_timeout_retries_then_compensates_the_timed_out_step_itself() -> None:
    harness, run = started()
    run.succeed()
    harness.advance(10)  # attempt 1 times out at 10, backoff 1s
    assert run.instance is not None and run.instance.waiting == "backoff"
    assert run.error is not None and run.error.code == "timeout"
    harness.advance(1)
    assert awaited(run).attempt == 2
    harness.advance(10 + 2 + 10)  # attempt 2 times out at 21, attempt 3 at 23 times out at 33
    # Its charge may have happened late, so it is refunded before the stock is released.
    assert compensations(run) == ["refund"]
    assert run.state == "compensating_charge"
    assert awaited(run).payload == {"order_id": "o-1", "cents": 1200}
    run.succeed()
    assert compensations(run) == ["refund", "release_stock"]
    run.succeed()
    assert run.status == "compensated"
    assert run.states == ["new", "reserve", "charge", "compensating_charge", "compensating_reserve", "compensated"]
    assert [h.event for h in run.history if h.event == "timed_out"] == ["timed_out"] * 3


def test_a_step_that_timed_out_once_is_compensated_even_if_it_then_fails() -> None:
    harness, run = started()
    run.succeed()
    harness.advance(11)  # timeout, backoff, attempt 2
    assert awaited(run).attempt == 2
    run.fail("card_declined")
    assert compensations(run) == ["refund"]


def test_a_step_that_only_failed_is_not_compensated() -> None:
    harness, run = started()
    run.succeed()
    run.fail("unavailable")
    harness.advance(1)
    run.fail("card_declined")
    assert compensations(run) == ["release_stock"]


def test_a_late_reply_after_a_timeout_changes_nothing() -> None:
    harness, run = started()
    timed_out = awaited(run)
    harness.advance(10)
    before = run.instance
    decision = run.deliver(run.reply("success", data={"reservation_id": "late"}, to=timed_out))
    assert not decision.changed
    assert run.instance == before
    assert "reservation_id" not in run.data
    assert run.history[-1].event == "ignored_reply"
    harness.advance(1)  # the resend still happens
    assert awaited(run).attempt == 2


# Compensation that fails


def refused_charge() -> tuple[SagaHarness, SagaRun]:
    harness, run = started()
    run.succeed({"reservation_id": "r-1"})
    run.fail("card_declined")
    assert awaited(run).command == "release_stock"
    return harness, run


def test_a_failing_compensation_is_retried_then_the_saga_is_stuck_with_the_error_kept() -> None:
    harness, run = refused_charge()
    run.fail("db_down", "inventory database unreachable")
    assert run.status == "compensating"
    harness.advance(1)
    assert (awaited(run).command, awaited(run).attempt) == ("release_stock", 2)
    run.fail("db_down", "inventory database unreachable")
    assert run.status == "stuck"
    assert run.state == "stuck"
    assert run.error is not None
    assert (run.error.code, run.error.message) == ("db_down", "inventory database unreachable")
    assert run.awaiting is None
    assert run.events[-1].status == "stuck"
    assert run.events[-1].error == run.error
    sent = len(run.sent)
    harness.advance(3600)  # nothing is due any more
    assert len(run.sent) == sent
    assert run.status == "stuck"


def test_a_compensation_that_times_out_is_retried_then_stuck() -> None:
    harness, run = refused_charge()
    harness.advance(10 + 1 + 10)
    assert run.status == "stuck"
    assert run.error is not None and run.error.code == "timeout"
    assert [s.attempt for s in run.sent if s.action == "compensate"] == [1, 2]


def test_resume_of_a_stuck_compensation_resends_it_and_can_finish() -> None:
    harness, run = refused_charge()
    run.fail("db_down")
    harness.advance(1)
    run.fail("db_down")
    stuck_on = run.sent[-1]
    decision = run.resume()
    assert decision.changed
    assert run.status == "compensating"
    again = awaited(run)
    assert (again.command, again.attempt, again.payload) == ("release_stock", 1, stuck_on.payload)
    assert again.message.message_id != stuck_on.message.message_id
    run.succeed()
    assert run.status == "compensated"
    assert statuses(run) == ["running", "compensating", "stuck", "compensating", "compensated"]


# After the pivot


def past_the_pivot() -> tuple[SagaHarness, SagaRun]:
    harness, run = started()
    succeed_until(run, "notify")
    return harness, run


def test_after_the_pivot_failures_retry_forward_and_end_stuck_never_compensating() -> None:
    harness, run = past_the_pivot()
    run.fail("unavailable")
    harness.advance(1)
    harness.advance(10)  # attempt 2 times out
    harness.advance(2)
    assert awaited(run).attempt == 3
    run.fail("unavailable", "smtp down")
    assert run.status == "stuck"
    assert run.state == "stuck"
    assert compensations(run) == []
    assert run.error is not None and run.error.message == "smtp down"
    assert statuses(run) == ["running", "stuck"]


def test_after_the_pivot_a_non_retryable_failure_is_stuck_at_once() -> None:
    _, run = past_the_pivot()
    run.fail("bad_address")
    assert run.status == "stuck"
    assert compensations(run) == []


def test_resume_after_the_pivot_resends_the_step_and_can_complete() -> None:
    _, run = past_the_pivot()
    run.fail("bad_address")
    run.resume()
    assert run.status == "running"
    assert (awaited(run).command, awaited(run).attempt) == ("send_mail", 1)
    run.succeed()
    assert run.status == "completed"
    assert statuses(run) == ["running", "stuck", "running", "completed"]


def test_a_failing_pivot_compensates_the_steps_before_it() -> None:
    _, run = started()
    succeed_until(run, "ship")
    run.fail("no_courier")
    assert compensations(run) == ["refund"]


# Operators: abort and resume


def test_abort_before_the_pivot_compensates_the_in_flight_step_and_the_completed_ones() -> None:
    _, run = started()
    run.succeed()
    assert awaited(run).step == "charge"
    decision = run.abort("customer cancelled")
    assert decision.changed
    assert run.status == "compensating"
    # The charge is in flight and may happen, so it is refunded too.
    assert compensations(run) == ["refund"]
    run.succeed()
    run.succeed()
    assert compensations(run) == ["refund", "release_stock"]
    assert run.status == "compensated"
    assert run.error is not None and (run.error.code, run.error.message) == ("aborted", "customer cancelled")
    assert [(e.status, e.error and e.error.code) for e in run.events] == [
        ("running", None),
        ("compensating", "aborted"),
        ("compensated", "aborted"),
    ]


def test_abort_while_a_step_waits_out_a_failure_backoff_does_not_compensate_it() -> None:
    _, run = started()
    run.succeed()
    run.fail("unavailable")  # the charge did not happen; no attempt is in flight
    run.abort()
    assert compensations(run) == ["release_stock"]


def test_abort_while_a_step_waits_out_a_timeout_backoff_compensates_it() -> None:
    harness, run = started()
    run.succeed()
    harness.advance(10)
    run.abort()
    assert compensations(run) == ["refund"]


def test_abort_of_the_first_step_in_backoff_ends_compensated_at_once() -> None:
    _, run = started()
    run.fail("unavailable")
    run.abort()
    assert run.status == "compensated"
    assert compensations(run) == []


def test_abort_after_the_pivot_is_refused_and_changes_nothing() -> None:
    _, run = past_the_pivot()
    before, sent, events, history = run.instance, list(run.sent), list(run.events), list(run.history)
    decision = run.abort()
    assert not decision.changed
    assert "abort" in decision.note
    assert run.instance == before
    assert run.error is None
    assert (run.sent, run.events, run.history) == (sent, events, history)
    run.succeed()
    assert run.status == "completed"


def test_abort_and_resume_are_idempotent() -> None:
    _, run = started()
    run.succeed()
    run.abort()
    sent = len(run.sent)
    again = run.abort()
    assert not again.changed
    assert again.note == "saga is compensating: nothing to compensate"
    assert len(run.sent) == sent
    run.succeed()
    run.succeed()
    assert not run.abort().changed  # compensated
    assert not run.resume().changed
    assert run.status == "compensated"

    harness, stuck = refused_charge()
    stuck.fail("db_down")
    harness.advance(1)
    stuck.fail("db_down")
    assert stuck.resume().changed
    sent = len(stuck.sent)
    again = stuck.resume()
    assert not again.changed
    assert again.note == "saga is compensating, not stuck: nothing to resume"
    assert len(stuck.sent) == sent


def test_resume_of_a_running_saga_changes_nothing() -> None:
    _, run = started()
    decision = run.resume()
    assert not decision.changed
    assert len(run.sent) == 1


# The whole-saga deadline


def test_deadline_expiry_before_the_pivot_compensates() -> None:
    harness, run = started(shop(deadline=5))
    run.succeed()
    harness.advance(4.5)
    assert run.status == "running"
    harness.advance(0.5)
    assert run.status == "compensating"
    assert compensations(run) == ["refund"]  # charge was in flight
    assert run.error is not None and run.error.code == "expired"
    assert "charge" in run.error.message
    assert run.history[-1].event == "expired"


def test_deadline_expiry_during_a_failure_backoff_does_not_compensate_that_step() -> None:
    harness, run = started(shop(deadline=5))
    run.succeed()
    harness.advance(4.5)
    run.fail("unavailable")  # resend would be at 5.5
    harness.advance(0.5)
    assert compensations(run) == ["release_stock"]
    assert run.instance is not None and run.instance.deadline is None


def test_deadline_is_ignored_after_the_pivot() -> None:
    harness, run = started(shop(deadline=5))
    succeed_until(run, "notify")
    harness.advance(9.5)
    assert run.status == "running"
    assert (awaited(run).step, awaited(run).attempt) == ("notify", 1)
    assert run.instance is not None and run.instance.deadline is None
    harness.advance(0.5)  # the step's own timeout still applies
    harness.advance(1)
    assert (awaited(run).step, awaited(run).attempt) == ("notify", 2)
    run.succeed()
    assert run.status == "completed"


def test_deadline_does_not_apply_to_compensation() -> None:
    harness, run = started(shop(deadline=5))
    run.succeed()
    run.fail("card_declined")
    harness.advance(9)
    assert run.status == "compensating"
    assert [s.attempt for s in run.sent if s.action == "compensate"] == [1]


# Starting


def test_a_duplicate_start_is_a_no_op() -> None:
    harness = SagaHarness(shop())
    run = harness.start(data=DATA, saga_id="order-42")
    run.succeed()
    again = harness.start(data={"order_id": "other"}, saga_id="order-42")
    assert again is run
    assert len(run.sent) == 2
    assert run.data["order_id"] == "o-1"
    assert run.instance is not None
    decision = decide(shop(), run.instance, Start(saga_id="order-42", data=DATA), 5.0)
    assert not decision.changed
    assert decision.instance == run.instance
    assert decision.commands == []
    assert decision.note == "duplicate start: the saga exists already"


class OrderData(msgspec.Struct):
    order_id: str
    amount: int
    items: list[str] = []


def test_start_data_that_does_not_fit_the_data_struct_is_refused_with_a_note() -> None:
    saga = shop(data=OrderData)
    decision = decide(saga, None, Start(saga_id="s-1", data={"order_id": "o-1", "amount": "12"}), 0.0)
    assert decision.instance is None
    assert decision.commands == []
    assert not decision.changed
    assert "data does not fit saga 'shop'" in decision.note
    assert "amount" in decision.note
    with pytest.raises(ValueError, match=r"does not fit saga 'shop'.*order_id"):
        SagaHarness(saga).start(data={"amount": 1})


def test_start_data_is_converted_to_the_data_struct() -> None:
    run = SagaHarness(shop(data=OrderData)).start(data={"order_id": "o-1", "amount": 3, "junk": True})
    assert run.data == {"order_id": "o-1", "amount": 3, "items": []}


# Replies that do not answer the awaited command


def test_a_duplicate_reply_changes_nothing_but_is_recorded() -> None:
    _, run = started()
    reply = run.reply("success", data={"reservation_id": "r-1"})
    run.deliver(reply)
    before, sent = run.instance, len(run.sent)
    decision = run.deliver(reply)
    assert not decision.changed
    assert decision.commands == []
    assert decision.events == []
    assert run.instance == before
    assert len(run.sent) == sent
    [entry] = decision.history
    assert entry == run.history[-1]
    assert (entry.event, entry.source, entry.dest) == ("ignored_reply", "charge", "charge")
    assert reply.in_reply_to in entry.detail


def test_a_second_reply_with_other_data_to_an_answered_command_is_not_merged() -> None:
    _, run = started()
    first = awaited(run)
    run.succeed({"reservation_id": "r-1"})
    run.deliver(run.reply("success", data={"reservation_id": "r-2"}, to=first))
    run.deliver(run.reply("failure", error=None, to=first))
    assert run.data["reservation_id"] == "r-1"
    assert run.state == "charge"
    assert [h.event for h in run.history][-2:] == ["ignored_reply", "ignored_reply"]


def test_a_reply_to_a_stale_attempt_changes_nothing() -> None:
    harness, run = started()
    stale = awaited(run)
    run.fail("unavailable")
    harness.advance(1)
    current = awaited(run)
    decision = run.deliver(run.reply("failure", error=None, to=stale))
    assert not decision.changed
    assert run.awaiting == current
    assert run.status == "running"
    decision = run.deliver(run.reply("success", to=stale))
    assert not decision.changed
    assert run.state == "reserve"


def test_a_reply_with_the_awaited_id_but_another_step_or_action_changes_nothing() -> None:
    _, run = started()
    good = run.reply("success")
    for wrong in (msgspec.structs.replace(good, step="charge"), msgspec.structs.replace(good, action="compensate")):
        assert not run.deliver(wrong).changed
    assert run.state == "reserve"
    assert run.deliver(good).changed


def test_a_reply_to_a_finished_saga_is_recorded_only() -> None:
    _, run = started()
    succeed_until(run, "notify")
    last = awaited(run)
    run.succeed()
    decision = run.deliver(run.reply("failure", error=None, to=last))
    assert not decision.changed
    assert run.status == "completed"
    assert run.history[-1].event == "ignored_reply"


def test_events_for_an_unknown_saga_change_nothing() -> None:
    saga = shop()
    reply = Reply(message_id="m", in_reply_to="x:1", saga_id="x", step="reserve", action="do", outcome="success")
    for event in (reply, Due(), Resume(), Abort()):
        decision = decide(saga, None, event, 0.0)
        assert decision.instance is None
        assert decision.note == "unknown saga"


def test_due_before_anything_is_due_changes_nothing() -> None:
    _, run = started()
    assert run.instance is not None
    decision = decide(shop(), run.instance, Due(), 9.99)
    assert not decision.changed
    assert decision.instance == run.instance
    assert decision.note == "nothing is due yet"


# Lifecycle events


def test_a_lifecycle_event_on_each_status_change() -> None:
    harness, run = started()
    assert [(e.status, e.state, e.step, e.at) for e in run.events] == [("running", "reserve", "reserve", 0.0)]
    run.succeed()
    harness.advance(3)
    run.succeed()  # staying "running" publishes nothing
    assert statuses(run) == ["running"]
    run.fail("no_courier")
    assert [(e.status, e.state, e.at) for e in run.events[1:]] == [("compensating", "compensating_charge", 3.0)]
    assert run.events[-1].data == {}  # data only travels on the final event
    run.succeed()
    run.succeed()
    final = run.events[-1]
    assert (final.status, final.state, final.saga_id, final.saga_type) == (
        "compensated",
        "compensated",
        run.saga_id,
        "shop",
    )
    assert final.error is not None and final.error.code == "no_courier"
    assert final.data == run.data
    assert statuses(run) == ["running", "compensating", "compensated"]


def test_completed_event_carries_no_stale_error() -> None:
    harness, run = started()
    run.fail("unavailable")
    harness.advance(1)
    succeed_until(run, "notify")
    run.succeed()
    assert run.events[-1].status == "completed"
    assert run.events[-1].error is None


# A payload builder that raises


class Flaky:
    """A payload builder with a bug that a deploy can fix."""

    def __init__(self, broken: bool = True) -> None:
        self.broken = broken

    def __call__(self, data: Mapping[str, Any]) -> dict[str, Any]:
        if self.broken:
            raise KeyError("amount_cents")
        return {"order_id": data["order_id"]}


def test_a_payload_builder_that_raises_makes_the_saga_stuck_and_resume_works_after_a_fix() -> None:
    builder = Flaky()
    _, run = started(shop(charge_payload=builder))
    run.succeed()
    assert run.status == "stuck"
    assert run.state == "stuck"
    assert run.error is not None
    assert run.error.code == "payload_error"
    assert "'charge'" in run.error.message and "amount_cents" in run.error.message
    assert [s.command for s in run.sent] == ["reserve_stock"]  # nothing half-built went out
    assert run.events[-1].status == "stuck"
    assert run.history[-1].event == "fault"

    assert run.resume().changed  # still broken: stuck again, nothing sent
    assert run.status == "stuck"
    assert [s.command for s in run.sent] == ["reserve_stock"]

    builder.broken = False
    run.resume()
    assert run.status == "running"
    assert (awaited(run).command, awaited(run).attempt, awaited(run).payload) == ("charge", 1, {"order_id": "o-1"})
    succeed_until(run, "notify")
    run.succeed()
    assert run.status == "completed"


def test_a_payload_error_on_the_first_step_is_stuck_from_the_start() -> None:
    saga = Saga("bad", [Step("a", participant="p", command="c", payload=Flaky())])
    run = SagaHarness(saga).start()
    assert run.status == "stuck"
    assert run.error is not None and run.error.code == "payload_error"
    assert run.sent == []


def test_a_timed_out_step_stays_compensable_across_a_payload_fault_and_resume() -> None:
    builder = Flaky(broken=False)
    harness, run = started(shop(charge_payload=builder))
    run.succeed()
    harness.advance(10)  # attempt 1 times out: the charge may have happened
    builder.broken = True
    harness.advance(1)  # the resend cannot be built
    assert run.status == "stuck"
    builder.broken = False
    run.resume()
    run.fail("card_declined")
    assert compensations(run) == ["refund"]


# Purity


def test_decide_never_reads_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_clock(*_: Any) -> float:
        raise AssertionError("decide read the clock")

    for name in ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter", "perf_counter_ns"):
        monkeypatch.setattr(time, name, no_clock)
    harness, run = started(shop(deadline=100, data=OrderData, charge_payload=Flaky()))
    run.fail("unavailable")
    harness.advance(1)
    harness.advance(10)
    harness.advance(2)
    run.deliver(run.reply("success", to=run.sent[0]))
    run.succeed()  # reserve done; the charge payload cannot be built
    assert run.status == "stuck"
    run.resume()
    assert run.status == "stuck"
    other = harness.start(data=DATA)
    other.abort()
    other.succeed()
    harness.advance(200)
    assert other.status == "compensated"
    assert run.history[-1].at == 13.0


def test_decide_does_not_mutate_its_input_and_is_deterministic() -> None:
    saga = shop()
    _, run = started(saga)
    run.succeed()
    inst = run.instance
    assert inst is not None
    frozen = msgspec.json.encode(inst)
    reply = run.reply("failure", error=ErrorInfo("unavailable"))
    for event in (reply, Due(), Abort(), Resume()):
        first = decide(saga, inst, event, 3.0)
        second = decide(saga, inst, event, 3.0)
        assert msgspec.json.encode(inst) == frozen
        assert first == second


def test_a_stuck_saga_before_its_pivot_can_be_forced_to_compensate() -> None:
    builder = Flaky()
    _, run = started(shop(charge_payload=builder))
    run.succeed()  # reserve done; building charge's payload fails
    assert run.status == "stuck"
    builder.broken = False
    assert run.abort("give up on this order").changed
    # charge may or may not have gone out before it got stuck: it is compensated
    # (a no-op for a participant that never saw it), then reserve.
    assert compensations(run) == ["refund"]
    run.succeed()
    assert compensations(run) == ["refund", "release_stock"]
    run.succeed()
    assert run.status == "compensated"
    assert run.error == ErrorInfo("aborted", "give up on this order")


def test_a_stuck_saga_after_its_pivot_cannot_be_forced_to_compensate() -> None:
    _, run = started()
    succeed_until(run, "notify")
    for _ in range(3):
        run.fail("unavailable")
        if run.status == "running":
            run.harness.advance(10)
    assert run.status == "stuck"
    decision = run.abort()
    assert not decision.changed and run.status == "stuck"


def test_history_names_the_step_each_event_was_about() -> None:
    harness, run = started()
    run.succeed({"reservation_id": "r-1"})
    run.fail("unavailable")
    harness.advance(1)
    events = [(h.event, h.step, h.attempt) for h in run.history]
    assert events == [
        ("start", "reserve", 1),
        ("succeeded", "reserve", 1),
        ("failed", "charge", 1),
        ("resend", "charge", 2),
    ]


def test_an_error_is_forgotten_once_its_step_succeeds() -> None:
    harness, run = started()
    run.fail("unavailable")
    assert run.error is not None
    harness.advance(1)
    run.succeed()
    assert run.error is None, "a completed step leaves no stale error for `saga show`"


def awaited_in(run: SagaRun, harness: SagaHarness) -> float:
    """Seconds until the saga's backoff ends and it sends again."""
    assert run.instance is not None and run.instance.due_at is not None
    return run.instance.due_at - harness.now


def test_an_unknown_outcome_is_compensated_like_a_timeout() -> None:
    harness, run = started()
    run.succeed()  # reserve
    for attempt in (1, 2, 3):  # charge: the participant's handler kept crashing, whatever retry_on says
        if attempt > 1:
            harness.advance(awaited_in(run, harness))
        run.fail("outcome_unknown", "ConnectionError: lost Redis")
    assert [s.attempt for s in run.sent if s.step == "charge" and s.action == "do"] == [1, 2, 3]
    # Whether charge happened is unknown, so it is refunded before reserve is released.
    assert compensations(run) == ["refund"]
    run.succeed()
    assert compensations(run) == ["refund", "release_stock"]


def test_a_business_failure_is_not_compensated() -> None:
    _, run = started(shop(), DATA)
    run.succeed()
    run.fail("card_declined")
    assert compensations(run) == ["release_stock"]

"""Parallel groups, guarded steps, fallbacks, breakers, awaits and ForEach, driven through the harness."""

from __future__ import annotations

from typing import Any

import pytest

from statemachines import (
    Await,
    CircuitBreaker,
    ForEach,
    Parallel,
    Retry,
    Saga,
    SagaDefinitionError,
    SagaHarness,
    Step,
    breaker_key,
)
from statemachines.expr import ExpressionError, compile_expression


def step(name: str, participant: str | None = None, comp: bool = True, **options: Any) -> Step:
    options.setdefault("retry", Retry(1))
    return Step(
        name,
        participant=participant or name,
        command=f"do_{name}",
        compensation=f"undo_{name}" if comp else None,
        **options,
    )


def trip() -> Saga:
    return Saga(
        "trip",
        [
            step("pay"),
            Parallel("book", [step("flight"), step("hotel"), [step("car"), step("insure")]]),
            step("mail", comp=False),
        ],
    )


def undone(run: Any) -> list[str]:
    return [s.step for s in run.sent if s.action == "compensate"]


# Parallel


def test_all_branches_go_out_at_once_and_the_group_waits_for_all() -> None:
    run = SagaHarness(trip()).start("trip")
    run.succeed()  # pay
    assert sorted(s.step for s in run.awaited) == ["car", "flight", "hotel"]
    assert run.state == "book"
    run.succeed({"hotel_ref": "h1"}, step="hotel")
    run.succeed(step="book.flight")
    run.succeed(step="car")
    assert [s.step for s in run.awaited] == ["insure"]  # a branch's sequence goes on by itself
    run.succeed(step="insure")
    assert run.awaiting is not None and run.awaiting.step == "mail"
    run.succeed()
    assert run.status == "completed"
    assert run.data["hotel_ref"] == "h1"
    assert run.states == ["new", "pay", "book", "mail", "completed"]


def test_a_failed_branch_compensates_succeeded_and_in_flight_branches_then_earlier_steps() -> None:
    harness = SagaHarness(trip())
    run = harness.start("trip")
    run.succeed()
    run.succeed(step="hotel")
    run.fail("no_seats", step="flight")
    assert run.state == "compensating_book"
    # hotel succeeded, car is in flight: both are compensated; flight refused, so it is not.
    assert sorted(undone(run)) == ["car", "hotel"]
    run.succeed(step="hotel")
    assert run.state == "compensating_book"
    run.succeed(step="car")
    assert undone(run)[-1] == "pay"
    run.succeed()
    assert run.status == "compensated"
    assert "flight" not in undone(run) and "insure" not in undone(run)


def test_a_timed_out_branch_is_compensated_as_one_that_may_have_applied() -> None:
    harness = SagaHarness(trip())
    run = harness.start("trip")
    run.succeed()
    for name in ("flight", "hotel", "car"):
        if name != "hotel":
            run.succeed(step=name)
    run.succeed(step="insure")
    harness.advance(31)  # hotel's single attempt times out
    assert run.state == "compensating_book"
    assert sorted(undone(run)) == ["flight", "hotel", "insure"]
    # the car branch compensates insure before car
    run.succeed(step="insure")
    assert undone(run)[-1] == "car"


def test_a_late_reply_to_a_compensated_branch_changes_nothing() -> None:
    run = SagaHarness(trip()).start("trip")
    run.succeed()
    flight = run.awaited_step("flight")
    run.fail("no_seats", step="hotel")
    decision = run.deliver(run.reply("success", to=flight))
    assert not decision.changed
    assert decision.history[0].event == "ignored_reply"


def test_conflicting_branch_results_fail_the_group_instead_of_overwriting() -> None:
    run = SagaHarness(trip()).start("trip")
    run.succeed()
    run.succeed({"ref": "f1"}, step="flight")
    run.succeed({"ref": "h1"}, step="hotel")
    assert run.state == "compensating_book"
    assert run.error is not None and run.error.code == "conflicting_result"
    assert run.data["ref"] == "f1"
    assert sorted(undone(run)) == ["car", "flight", "hotel"]


def test_a_crash_mid_group_loses_nothing_the_instance_round_trips() -> None:
    import msgspec

    from statemachines import SagaInstance

    harness = SagaHarness(trip())
    run = harness.start("trip")
    run.succeed()
    run.succeed(step="hotel")
    assert run.instance is not None
    stored = msgspec.json.decode(msgspec.json.encode(run.instance), type=SagaInstance)
    assert stored == run.instance
    # an instance stored before lanes existed still decodes
    old = msgspec.json.decode(b'{"saga_id":"x","saga_type":"trip","definition_version":1}', type=SagaInstance)
    assert old.groups == {} and old.signals == []


# when


def order(**options: Any) -> Saga:
    return Saga(
        "order",
        [step("reserve"), step("fraud", when="amount > 100000 and not trusted", comp=False), step("charge")],
        **options,
    )


def test_a_step_whose_guard_does_not_hold_is_neither_sent_nor_compensated() -> None:
    run = SagaHarness(order()).start("order", {"amount": 50})
    run.succeed()
    assert run.awaiting is not None and run.awaiting.step == "charge"
    assert any(h.event == "skipped" and h.step == "fraud" for h in run.history)
    run.fail("declined")
    run.succeed()
    assert run.status == "compensated"
    assert undone(run) == ["reserve"]
    assert "fraud" not in [s.step for s in run.sent]


def test_a_step_whose_guard_holds_runs() -> None:
    run = SagaHarness(order()).start("order", {"amount": 200000, "trusted": False})
    run.succeed()
    assert run.awaiting is not None and run.awaiting.step == "fraud"
    run.fail("fraud_suspected")
    run.succeed()
    assert run.status == "compensated" and undone(run) == ["reserve"]


def test_a_named_predicate_is_a_guard() -> None:
    def big_order(data: Any) -> bool:
        return bool(data["amount"] > 10)

    saga = Saga("order", [step("fraud", when=big_order), step("charge")])
    run = SagaHarness(saga).start("order", {"amount": 1})
    assert run.awaiting is not None and run.awaiting.step == "charge"
    assert saga.step("fraud").guard_label == "big_order"


@pytest.mark.parametrize(
    ("text", "data", "expected"),
    [
        ("amount > 100000", {"amount": 100001}, True),
        ("amount > 100000", {"amount": "lots"}, False),
        ("amount > 100000", {}, False),
        ("customer.tier == 'gold' or items[0].qty >= 2", {"customer": {"tier": "x"}, "items": [{"qty": 2}]}, True),
        ("country in ['FR', 'DE'] and not blocked", {"country": "FR", "blocked": False}, True),
        ("country not in ['FR', \"DE\"]", {"country": "FR"}, False),
        ("(a or b) and c == null", {"a": 1}, True),
        ("x <= -1.5e2", {"x": -200}, True),
    ],
)
def test_expressions(text: str, data: dict[str, Any], expected: bool) -> None:
    assert compile_expression(text)(data) is expected


@pytest.mark.parametrize("text", ["", "amount >", "amount > > 1", "__import__('os')", "a = 1", "a and", "[a]", "f(x)"])
def test_bad_expressions(text: str) -> None:
    with pytest.raises(ExpressionError):
        compile_expression(text)


# definition mistakes


@pytest.mark.parametrize(
    ("steps", "words"),
    [
        ([Parallel("book", [step("a"), step("b", pivot=True)])], "pivot cannot be inside a Parallel"),
        ([Parallel("book", [step("a")])], "at least two branches"),
        ([Parallel("book", [step("a"), step("b", results=["x"])]), step("book")], "duplicate"),
        ([Parallel("book", [step("a", results=["ref"]), step("b", results=["ref"])])], "both declare result 'ref'"),
        ([step("a", when="amount >")], "does not parse"),
        ([step("a", when=3)], "when must be"),
        ([step("a"), step("b", pivot=True, comp=False), step("c", comp=False, fallback=step("d"))], "fallback after"),
        ([Await("bank")], "needs a timeout"),
        ([step("a", fallback=step("a"))], "duplicate"),
        ([step("a", fallback=step("b", fallback=step("c")))], "fallback of its own"),
        ([ForEach("each", step=step("a"), max_concurrency=0)], "max_concurrency"),
        ([step("a", breaker=CircuitBreaker(failures=0))], "breaker failures"),
    ],
)
def test_definition_mistakes_fail_at_declaration(steps: list[Any], words: str) -> None:
    with pytest.raises(SagaDefinitionError, match=words):
        Saga("s", steps)


def test_breakers_name_participants_of_the_saga() -> None:
    with pytest.raises(SagaDefinitionError, match="no step of the saga sends to"):
        Saga("s", [step("a")], breakers={"nobody": CircuitBreaker()})
    saga = Saga("s", [step("a", breaker=CircuitBreaker()), step("b")], breakers={"b": CircuitBreaker()})
    assert breaker_key(saga, "a") == "step:s.a"
    assert breaker_key(saga, "b") == "participant:b"


# fallback and breakers


def payment(**options: Any) -> Saga:
    backup = step("backup", participant="backup_payment")
    charge = step("charge", participant="payment", retry=Retry(2, backoff=0, retry_on=["unavailable"]))
    charge.fallback = backup
    return Saga("order", [step("reserve"), Step(**_same(charge, fallback=backup)), step("ship", comp=False)], **options)


def _same(s: Step, **changes: Any) -> dict[str, Any]:
    options = {
        "name": s.name,
        "participant": s.participant,
        "command": s.command,
        "compensation": s.compensation,
        "retry": s.retry,
    }
    options.update(changes)
    return options


def test_exhausted_retriable_failures_go_to_the_fallback_which_is_compensated_later() -> None:
    run = SagaHarness(payment()).start("order")
    run.succeed()
    run.fail("unavailable")
    run.fail("unavailable")
    assert run.awaiting is not None and run.awaiting.step == "backup"
    assert run.awaiting.participant == "backup_payment"
    run.succeed()
    run.fail("address_unknown")  # ship: not compensable, fails for good
    assert undone(run) == ["backup"]
    run.succeed()
    assert undone(run) == ["backup", "reserve"]
    run.succeed()
    assert run.status == "compensated"


def test_a_business_refusal_does_not_fall_back() -> None:
    run = SagaHarness(payment()).start("order")
    run.succeed()
    run.fail("card_declined")
    assert run.awaiting is not None and run.awaiting.step == "reserve"
    assert "backup" not in [s.step for s in run.sent]


def test_a_timed_out_primary_is_compensated_too_should_the_saga_compensate() -> None:
    harness = SagaHarness(payment())
    run = harness.start("order")
    run.succeed()
    harness.advance(31)
    harness.advance(31)  # two timeouts: charge may have happened
    assert run.awaiting is not None and run.awaiting.step == "backup"
    run.fail("declined")
    assert undone(run) == ["charge"]


def test_an_open_breaker_sends_the_step_straight_to_its_fallback_or_fails_fast() -> None:
    saga = payment(breakers={"payment": CircuitBreaker()})
    harness = SagaHarness(saga)
    key = breaker_key(saga, "charge")
    assert key == "participant:payment"
    harness.open_breaker(key)
    run = harness.start("order")
    run.succeed()
    assert run.awaiting is not None and run.awaiting.step == "backup"
    assert "charge" not in [s.step for s in run.sent]
    harness.close_breaker(key)
    again = harness.start("order")
    again.succeed()
    again.fail("unavailable")
    again.succeed()
    assert again.breaker_results == [(key, False), (key, True)]

    plain = Saga(
        "plain", [step("reserve"), step("charge", participant="payment")], breakers={"payment": CircuitBreaker()}
    )
    harness = SagaHarness(plain)
    harness.open_breaker("participant:payment")
    run = harness.start("plain")
    run.succeed()
    assert run.state == "compensating_reserve"
    assert run.error is not None and run.error.code == "breaker_open"


def test_business_refusals_are_not_counted_by_a_breaker() -> None:
    saga = payment(breakers={"payment": CircuitBreaker()})
    run = SagaHarness(saga).start("order")
    run.succeed()
    run.fail("card_declined")
    assert run.breaker_results == []


# Await


def bank() -> Saga:
    undo = Step("release_hold", participant="bank", command="release_hold")
    return Saga(
        "transfer",
        [step("hold"), Await("bank_confirmed", timeout=3600, compensation=undo), step("settle", comp=False)],
    )


def test_the_saga_parks_until_its_signal_and_merges_its_data() -> None:
    harness = SagaHarness(bank())
    run = harness.start("transfer")
    run.succeed()
    assert run.state == "bank_confirmed" and run.awaited == []
    harness.advance(100)
    decision = run.signal("bank_confirmed", {"bank_ref": "b-1"}, signal_id="s1")
    assert decision.changed
    assert run.data["bank_ref"] == "b-1"
    assert run.awaiting is not None and run.awaiting.step == "settle"
    repeat = run.signal("bank_confirmed", {"bank_ref": "other"}, signal_id="s1")
    assert not repeat.changed and repeat.signal_refusal is None
    assert run.data["bank_ref"] == "b-1"
    run.fail("settlement_refused")
    # the Await's compensation runs its command, then the hold is released
    assert [(s.step, s.command) for s in run.sent if s.action == "compensate"] == [("release_hold", "release_hold")]
    run.succeed()
    assert undone(run) == ["release_hold", "hold"]


def test_a_signal_the_saga_does_not_wait_for_is_refused_with_a_reason() -> None:
    harness = SagaHarness(bank())
    run = harness.start("transfer")
    assert run.signal("bank_confirmed").signal_refusal == "not_waiting"
    assert run.signal("bank_declined").signal_refusal == "unknown_signal"
    run.succeed()
    harness.advance(3601)
    assert run.state == "compensating_hold"
    assert run.error is not None and run.error.code == "timeout"
    run.succeed()
    assert run.status == "compensated"
    assert undone(run) == ["hold"]
    assert run.signal("bank_confirmed").signal_refusal == "finished"


# ForEach


def reserve(limit: int = 2) -> Saga:
    return Saga(
        "stock",
        [
            step("pay"),
            ForEach(
                "reserve", items="warehouses", step=step("reserve_one", participant="inventory"), max_concurrency=limit
            ),
        ],
    )


def test_for_each_sends_one_command_per_item_within_its_concurrency_and_collects_in_order() -> None:
    run = SagaHarness(reserve()).start("stock", {"warehouses": ["a", "b", "c"]})
    run.succeed()
    assert [s.step for s in run.awaited] == ["reserve_one-0", "reserve_one-1"]
    assert run.awaited[0].payload["item"] == "a"
    run.succeed({"n": 1}, step="reserve_one-1")
    assert [s.step for s in run.awaited] == ["reserve_one-0", "reserve_one-2"]
    run.succeed({"n": 2}, step="reserve.2")
    run.succeed({"n": 0}, step="reserve_one-0")
    assert run.status == "completed"
    assert run.data["reserve"] == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_a_failed_item_compensates_succeeded_and_in_flight_items_then_earlier_steps() -> None:
    run = SagaHarness(reserve()).start("stock", {"warehouses": ["a", "b", "c", "d"]})
    run.succeed()
    run.succeed(step="reserve_one-0")
    run.fail("out_of_stock", step="reserve_one-1")
    assert sorted(undone(run)) == ["reserve_one-0", "reserve_one-2"]
    assert "reserve_one-3" not in [s.step for s in run.sent]
    run.succeed(step="reserve_one-0")
    run.succeed(step="reserve_one-2")
    assert undone(run)[-1] == "pay"


def test_for_each_over_no_items_succeeds_and_over_a_non_list_is_stuck() -> None:
    run = SagaHarness(reserve()).start("stock", {"warehouses": []})
    run.succeed()
    assert run.status == "completed" and run.data["reserve"] == []
    bad = SagaHarness(reserve()).start("stock", {"warehouses": "a"})
    bad.succeed()
    assert bad.status == "stuck" and bad.error is not None and bad.error.code == "payload_error"

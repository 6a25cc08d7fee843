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

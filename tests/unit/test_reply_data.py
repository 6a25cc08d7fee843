"""What a reply may change in the saga data (Step.merge) and who may answer a step."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from statemachines import ForEach, Parallel, ReplyDataError, Retry, Saga, SagaDefinitionError, SagaHarness, Step


class Quote(msgspec.Struct):
    price: int
    currency: str = "EUR"


def step(name: str, **options: Any) -> Step:
    options.setdefault("retry", Retry(1))
    return Step(name, participant=name, command=f"do_{name}", compensation=f"undo_{name}", **options)


def test_a_reply_may_add_keys_and_repeat_a_value_but_not_change_one() -> None:
    charge = step("charge")
    assert charge.merge({"customer_id": "c-1"}, {"charge_id": "x"}) == {"customer_id": "c-1", "charge_id": "x"}
    assert charge.merge({"customer_id": "c-1"}, {"customer_id": "c-1"}) == {"customer_id": "c-1"}
    with pytest.raises(ReplyDataError, match="may not change data key 'customer_id'"):
        charge.merge({"customer_id": "c-1"}, {"customer_id": "other"})


def test_returns_keys_may_be_set_and_nothing_else() -> None:
    reprice = step("reprice", returns=["amount"])
    assert reprice.merge({"amount": 5, "id": 1}, {"amount": 7}) == {"amount": 7, "id": 1}
    with pytest.raises(ReplyDataError, match="returns only \\['amount'\\], not 'id'"):
        reprice.merge({"amount": 5, "id": 1}, {"id": 2})


def test_returns_struct_validates_the_reply_data_and_sets_its_fields() -> None:
    quote = step("quote", returns=Quote)
    assert quote.merge({"price": 1}, {"price": 3}) == {"price": 3}
    with pytest.raises(ReplyDataError, match="does not fit Quote"):
        quote.merge({}, {"price": "free"})
    with pytest.raises(ReplyDataError, match="not 'nights'"):
        quote.merge({}, {"price": 3, "nights": -5})


def test_returns_must_be_a_struct_or_keys() -> None:
    with pytest.raises(SagaDefinitionError, match="returns must be a msgspec Struct or a list of data keys"):
        Saga("bad", [step("a", returns=dict)])


def test_a_reply_that_rewrites_start_data_is_refused_and_the_step_still_awaits_it() -> None:
    run = SagaHarness(Saga("order", [step("charge"), step("ship")])).start(data={"customer_id": "c-1"})
    awaited = run.awaiting
    decision = run.succeed({"customer_id": "other"})
    assert decision.reply_refusal is not None and "may not change data key 'customer_id'" in decision.reply_refusal
    assert run.data == {"customer_id": "c-1"}
    assert run.awaiting == awaited  # its timeout says a reply was refused; a good reply is still taken
    assert run.history[-1].event == "refused_reply"
    run.succeed({"charge_id": "x"})
    assert run.data == {"customer_id": "c-1", "charge_id": "x"}
    assert run.awaiting is not None and run.awaiting.step == "ship"


def test_a_reply_from_another_participant_is_refused() -> None:
    run = SagaHarness(Saga("order", [step("charge")])).start(data={})
    forged = msgspec.structs.replace(run.reply("success", data={"charge_id": "x"}), participant="shipping")
    decision = run.deliver(forged)
    assert decision.reply_refusal is not None and "answered by 'charge', not by 'shipping'" in decision.reply_refusal
    assert run.data == {} and run.status == "running"


def test_a_parallel_branch_may_not_rewrite_the_start_data() -> None:
    saga = Saga("trip", [Parallel("book", [step("flight"), step("hotel")])])
    run = SagaHarness(saga).start(data={"nights": 2})
    decision = run.succeed({"nights": -5}, step="hotel")
    assert decision.reply_refusal is not None
    run.succeed({"hotel_ref": "h"}, step="hotel")
    run.succeed(step="flight")
    assert run.status == "completed" and run.data == {"nights": 2, "hotel_ref": "h"}


def test_a_foreach_item_reply_is_held_to_its_step_returns_and_never_touches_the_saga_data() -> None:
    saga = Saga("bulk", [ForEach("each", items="items", step=step("pick", returns=["picked"]))])
    run = SagaHarness(saga).start(data={"items": ["a"]})
    assert run.succeed({"items": ["z"]}, step="each.0").reply_refusal is not None
    run.succeed({"picked": 1}, step="each.0")
    assert run.status == "completed" and run.data["items"] == ["a"]
    assert run.data["each"] == [{"picked": 1}]

"""The pure side of refusals: decide() refuses starts and notes refused replies; bounds agree everywhere."""

from __future__ import annotations

import re

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.refusals import about, bounds_problem
from statemachines.decide import Due, RefusedReply, Start, decide
from statemachines.dsl import Retry, Saga, Step
from statemachines.harness import SagaHarness
from statemachines.messages import MalformedMessage, StartSaga, decode, start_digest
from statemachines.names import MAX_ID, Names, id_problem, name_problem, reply_to_problem
from statemachines.sagas import OrderData, order

ORDER = {"order_id": "o-1", "customer_id": "c-1", "items": [{"sku": "sku-1", "qty": 2}], "amount": 4200}
free = Saga("free", steps=[Step("ping", participant="p", command="ping", timeout=10.0, retry=Retry(1))])


def started(saga: Saga, data: dict[str, object] | None = ORDER, saga_id: str = "s-1") -> object:
    decision = decide(saga, None, Start(saga_id=saga_id, data=data), 0.0)
    assert decision.instance is not None, decision.note
    return decision.instance


def test_a_start_without_data_is_refused_only_by_a_saga_that_declares_a_data_type() -> None:
    refused = decide(order, None, Start(saga_id="s-1", data=None), 0.0)
    assert refused.instance is None and refused.refusal is not None
    assert (refused.refusal.code, refused.refusal.message) == (
        "invalid_data",
        "saga 'order' takes data (OrderData) and the start carries none",
    )
    ran = decide(free, None, Start(saga_id="s-1", data=None), 0.0)
    assert ran.instance is not None and ran.instance.data == {} and ran.refusal is None


def test_data_that_does_not_fit_is_a_refusal_with_the_reason() -> None:
    refused = decide(order, None, Start(saga_id="s-1", data={**ORDER, "amount": -5}), 0.0)
    assert refused.refusal is not None and refused.refusal.code == "invalid_data"
    assert refused.refusal.message == "data does not fit saga 'order': Expected `int` >= 1 - at `$.amount`"


def test_the_same_start_again_is_the_same_saga_and_other_data_a_conflict() -> None:
    inst = started(order)
    same = decide(order, inst, Start(saga_id="s-1", data=dict(reversed(list(ORDER.items())))), 1.0)
    assert same.refusal is None and not same.changed and same.instance == inst
    other = decide(order, inst, Start(saga_id="s-1", data={**ORDER, "amount": 1}), 1.0)
    assert other.refusal is not None and other.refusal.code == "conflict" and not other.changed
    assert (
        other.refusal.message
        == "saga 's-1' exists already, started with other data: start a different saga under a new id"
    )
    assert [(h.event, h.detail) for h in other.history] == [("refused_start", other.refusal.message)]
    typed = decide(order, inst, Start(saga_id="s-1", data=ORDER, saga_type="trip"), 1.0)
    assert typed.refusal is not None and "started as a 'order' saga" in typed.refusal.message
    # Sagas stored before starts were digested are taken as the same start.
    legacy = msgspec.structs.replace(inst, start_digest="")
    assert decide(order, legacy, Start(saga_id="s-1", data={**ORDER, "amount": 1}), 1.0).refusal is None


def test_the_same_start_with_a_new_reply_queue_moves_the_outcome_there() -> None:
    inst = started(order)
    moved = decide(order, inst, Start(saga_id="s-1", data=ORDER, reply_to="saga.reply.new"), 1.0)
    assert moved.changed and moved.keeps_outbox and not moved.commands and not moved.events
    assert moved.instance is not None and moved.instance.reply_to == "saga.reply.new"
    assert moved.instance.state == inst.state and moved.instance.due_at == inst.due_at


def test_a_refused_reply_is_noted_and_the_timeout_after_it_says_so() -> None:
    inst = started(free)
    awaited = inst.awaiting
    noted = decide(free, inst, RefusedReply("reply from p refused: a failure reply needs an error", awaited), 1.0)
    assert noted.changed and noted.keeps_outbox and not noted.commands and not noted.events
    assert [h.event for h in noted.history] == ["refused_reply"]
    assert noted.instance is not None and noted.instance.state == inst.state and noted.instance.due_at == inst.due_at
    timed_out = decide(free, noted.instance, Due(), 10.0)
    assert timed_out.instance is not None and timed_out.instance.error is not None
    assert timed_out.instance.error.message == (
        "no reply to attempt 1 within 10s; a reply to it was refused "
        "(reply from p refused: a failure reply needs an error)"
    )
    # One that answers another command (stale) only goes into the history.
    stale = decide(free, inst, RefusedReply("reply from p refused: ...", "s-1:99"), 1.0)
    assert not stale.changed and [h.event for h in stale.history] == ["refused_reply"]


def test_a_resend_forgets_the_refused_reply_of_the_attempt_before() -> None:
    retried = Saga(
        "retried", steps=[Step("ping", participant="p", command="ping", timeout=10.0, retry=Retry(2, backoff=0))]
    )
    inst = started(retried)
    noted = decide(retried, inst, RefusedReply("refused", None), 1.0).instance
    again = decide(retried, noted, Due(), 10.0).instance
    assert again is not None and again.attempt == 2 and again.refused_reply is None
    last = decide(retried, again, Due(), 20.0).instance
    assert last is not None and last.error is not None and last.error.message == "no reply to attempt 2 within 10s"


def test_the_harness_refuses_as_the_orchestrator_does() -> None:
    with pytest.raises(ValueError, match=re.escape("Expected `int` >= 1 - at `$.items[0].qty`")):
        SagaHarness(order).start("order", {**ORDER, "items": [{"sku": "sku-1", "qty": 0}]})


def test_a_start_digest_is_of_the_json_not_of_its_spelling() -> None:
    assert start_digest("order", {"a": 1, "b": [1, 2]}) == start_digest("order", {"b": [1, 2], "a": 1})
    assert start_digest("free", None) == start_digest("free", {})
    assert start_digest("order", {"a": 1}) != start_digest("order", {"a": 2}) != start_digest("trip", {"a": 2})


def _decodes(start: dict[str, str]) -> bool:
    try:
        decode(StartSaga, msgspec.json.encode(start))
    except MalformedMessage:
        return False
    return True


@given(st.text(max_size=140) | st.text(alphabet="abcXYZ019_-:@+=~/.#*{}\n ", max_size=140))
def test_the_bounds_in_words_and_in_the_schema_agree(value: str) -> None:
    """What names.id_problem accepts is exactly what decoding a start accepts, and nothing that can break a key."""
    body = msgspec.json.encode({"saga_type": "order", "saga_id": value})
    decodes = _decodes({"saga_type": "order", "saga_id": value})
    assert decodes == (id_problem(value) is None)
    if decodes:
        assert len(value.encode()) <= MAX_ID and not set(value) & set(".#*{} \n")
        assert bounds_problem(body) is None
    else:
        assert bounds_problem(body) == id_problem(value)


@given(st.text(max_size=80))
def test_names_are_bounded_alike(value: str) -> None:
    assert _decodes({"saga_type": value}) == (name_problem(value) is None)


def test_reply_to_bounds_and_prefix() -> None:
    names = Names("ns")
    assert reply_to_problem("amq.gen-JzTY20BRgKO-HjmUJj0wLg") is None
    assert reply_to_problem("q" * 256) == "reply_to is 256 characters long; at most 255 are allowed"
    assert names.named_reply_queue("ns.reply.billing")
    assert not names.named_reply_queue("ns.reply.") and not names.named_reply_queue("ns.participant.payment")


@given(
    st.binary(max_size=300)
    | st.builds(
        lambda d: msgspec.json.encode(d),
        st.dictionaries(
            st.sampled_from(["saga_id", "saga_type", "reply_to", "participant", "in_reply_to"]),
            st.none() | st.integers() | st.text(max_size=300) | st.lists(st.integers(), max_size=3),
        ),
    )
)
def test_reading_a_malformed_message_leniently_never_raises_and_yields_only_what_is_in_bounds(body: bytes) -> None:
    read = about(body, "fallback")
    assert read.saga_id is None or id_problem(read.saga_id) is None
    assert read.saga_type is None or name_problem(read.saga_type) is None
    assert read.participant is None or name_problem(read.participant) is None
    bounds_problem(body)


def test_the_example_data_types_teach_validation() -> None:
    for bad, where in (
        ({**ORDER, "amount": -500_000}, "$.amount"),
        ({**ORDER, "items": [{"sku": "sku-1", "qty": 0}]}, "$.items[0].qty"),
        ({**ORDER, "items": []}, "$.items"),
    ):
        with pytest.raises(msgspec.ValidationError, match=re.escape(f"at `{where}`")):
            msgspec.convert(bad, OrderData)

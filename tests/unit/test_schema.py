"""The JSON Schema and the AsyncAPI document agree with the decoders: a sample either both accept or both refuse.

Each message is validated three ways: against `saga schema`'s definition
(JSON Schema 2020-12), against the AsyncAPI document's payload schema
(AsyncAPI's schema dialect is a superset of draft 7), and by `decode`, the
orchestrator's and the SDK's own decoder. Samples are written by hand
(each rule the protocol states) and generated (JSON shaped like each
message, every field valid, missing or of another type). Integers are read
the way the protocol says (section 3.1: an integer literal; `1.0` is not
one), which is the one place a stock JSON Schema validator is looser.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statemachines.asyncapi import document
from statemachines.decide import Start, decide
from statemachines.dsl import Saga, Step
from statemachines.harness import SagaHarness
from statemachines.messages import (
    BreakerEvent,
    Command,
    MalformedMessage,
    Reply,
    SagaEvent,
    SignalResult,
    SignalSaga,
    StartSaga,
    decode,
)
from statemachines.names import Names
from statemachines.sagas import SAGAS, Item, OrderData, order, trip
from statemachines.schema import command_uses, schemas
from tests.unit.test_fuzz_decoders import json_values, shaped

KINDS: tuple[type[Any], ...] = (StartSaga, Command, Reply, SagaEvent, SignalSaga, SignalResult, BreakerEvent)


def _integer(checker: Any, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


def _strict(base: Any) -> Any:
    return jsonschema.validators.extend(base, type_checker=base.TYPE_CHECKER.redefine("integer", _integer))


SCHEMA = schemas(SAGAS)
ASYNCAPI = document(Names("t"), SAGAS)
JSON_SCHEMA = _strict(jsonschema.Draft202012Validator)
ASYNCAPI_SCHEMA = _strict(jsonschema.Draft7Validator)


def by_schema(name: str, value: Any) -> bool:
    root = {"$ref": f"#/$defs/{name}", "$defs": SCHEMA["$defs"]}
    return JSON_SCHEMA(root).is_valid(value)


def by_asyncapi(name: str, value: Any) -> bool:
    root = {"$ref": f"#/components/schemas/{name}", "components": ASYNCAPI["components"]}
    return ASYNCAPI_SCHEMA(root).is_valid(value)


def by_decoder(kind: type[Any], body: bytes) -> bool:
    try:
        decode(kind, body)
    except MalformedMessage:
        return False
    return True


def agree(kind: type[Any], body: bytes, name: str | None = None) -> bool:
    """Assert the three agree on `body`; return whether they accept it."""
    name = name or kind.__name__
    accepted = by_decoder(kind, body)
    try:
        value = msgspec.json.decode(body)  # the same JSON parser: NaN, 1e400 and bad UTF-8 are no JSON
    except msgspec.DecodeError:
        assert not accepted
        return False
    assert by_schema(name, value) == accepted, (name, value, accepted)
    assert by_asyncapi(name, value) == accepted, (name, value, accepted)
    return accepted


COMMAND = {
    "message_id": "s-1:1",
    "saga_id": "s-1",
    "saga_type": "order",
    "step": "charge_payment",
    "action": "do",
    "command": "charge",
    "attempt": 1,
    "payload": {"customer_id": "c-1", "amount": 100},
    "reply_to": "saga.replies",
    "deadline": 1767225600.25,
}
REPLY = {
    "message_id": "s-1:1/payment",
    "in_reply_to": "s-1:1",
    "saga_id": "s-1",
    "step": "charge_payment",
    "action": "do",
    "outcome": "success",
    "data": {"charge_id": "s-1:charge_payment"},
    "error": None,
    "participant": "payment",
}
EVENT = {"saga_id": "s-1", "saga_type": "order", "status": "completed", "state": "completed", "at": 1767225600.5}
START = {"saga_type": "order", "data": {"order_id": "o-1"}, "saga_id": "s-1", "reply_to": None}
SIGNAL = {"saga_id": "s-1", "name": "bank_confirmed", "signal_id": "b-77", "data": {"ref": "b-77"}}
ANSWER = {"saga_id": "s-1", "name": "bank_confirmed", "signal_id": "b-77", "outcome": "accepted", "at": 1767225600.5}
BREAKER = {"breaker": "participant:payment", "state": "open", "at": 1767225600.5, "failures": 5, "window": 30}
FAILURE = {**REPLY, "outcome": "failure", "data": {}, "error": {"code": "card_declined", "message": "no"}}

SAMPLES: list[tuple[type[Any], dict[str, Any], bool]] = [
    (Command, COMMAND, True),
    (Command, {**COMMAND, "deadline": None}, True),
    (Command, {k: v for k, v in COMMAND.items() if k != "deadline"}, True),
    (Command, {**COMMAND, "deadline": 1767225600}, True),  # an integer is a number
    (Command, {**COMMAND, "a_field_of_version_1_1": [1, 2]}, True),  # unknown fields are ignored
    (Command, {**COMMAND, "action": "undo"}, False),
    (Command, {**COMMAND, "attempt": 0}, False),
    (Command, {**COMMAND, "attempt": "1"}, False),
    (Command, {**COMMAND, "attempt": 1.0}, False),  # section 3.1: an integer literal
    (Command, {**COMMAND, "attempt": True}, False),
    (Command, {**COMMAND, "payload": []}, False),
    (Command, {**COMMAND, "payload": None}, False),
    (Command, {**COMMAND, "deadline": "soon"}, False),
    (Command, {k: v for k, v in COMMAND.items() if k != "reply_to"}, False),
    (Reply, REPLY, True),
    (Reply, FAILURE, True),
    (Reply, {**FAILURE, "error": {"code": "outcome_unknown"}}, True),
    (Reply, {**FAILURE, "error": None}, False),  # a failure needs an error
    (Reply, {k: v for k, v in FAILURE.items() if k != "error"}, False),
    (Reply, {**FAILURE, "error": {"message": "no code"}}, False),
    (Reply, {**REPLY, "outcome": "outcome_unknown"}, False),  # a code, not an outcome
    (Reply, {**REPLY, "outcome": "maybe"}, False),
    (Reply, {k: v for k, v in REPLY.items() if k not in ("data", "error", "participant")}, True),
    (Reply, {**REPLY, "data": None}, False),
    (Reply, {**REPLY, "in_reply_to": 7}, False),
    (SagaEvent, EVENT, True),
    (SagaEvent, {**EVENT, "status": "exploded"}, False),
    (SagaEvent, {**EVENT, "at": "now"}, False),
    (SagaEvent, {**EVENT, "error": {"code": "timeout", "message": "no reply"}}, True),
    (SignalSaga, SIGNAL, True),
    (SignalSaga, {**SIGNAL, "reply_to": "saga.reply.bank"}, True),
    (SignalSaga, {k: v for k, v in SIGNAL.items() if k != "data"}, True),
    (SignalSaga, {k: v for k, v in SIGNAL.items() if k != "signal_id"}, False),
    (SignalSaga, {**SIGNAL, "name": "bank.confirmed"}, False),  # a name: no dots
    (SignalSaga, {**SIGNAL, "saga_id": "o-1.x"}, False),
    (SignalSaga, {**SIGNAL, "signal_id": ""}, False),
    (SignalSaga, {**SIGNAL, "data": []}, False),
    (SignalSaga, {**SIGNAL, "reply_to": "no spaces"}, False),
    (SignalResult, ANSWER, True),
    (SignalResult, {**ANSWER, "outcome": "refused", "error": {"code": "not_waiting", "message": "later"}}, True),
    (SignalResult, {**ANSWER, "duplicate": True}, True),
    (SignalResult, {**ANSWER, "outcome": "maybe"}, False),
    (SignalResult, {k: v for k, v in ANSWER.items() if k != "at"}, False),
    (BreakerEvent, BREAKER, True),
    (BreakerEvent, {**BREAKER, "state": "closed", "saga_id": None}, True),
    (BreakerEvent, {**BREAKER, "state": "half_open"}, False),
    (BreakerEvent, {**BREAKER, "failures": 1.5}, False),
    (StartSaga, START, True),
    (StartSaga, {"saga_type": "order"}, True),
    (StartSaga, {**START, "saga_type": None}, False),
    (StartSaga, {**START, "data": "x"}, False),
    (StartSaga, {**START, "saga_id": 12}, False),
]


@pytest.mark.parametrize(("kind", "sample", "valid"), SAMPLES)
def test_each_rule_is_the_same_for_the_schemas_and_the_decoders(
    kind: type[Any], sample: dict[str, Any], valid: bool
) -> None:
    assert agree(kind, json.dumps(sample).encode()) == valid


@pytest.mark.parametrize("body", [b"", b"[]", b"null", b'"Command"', b"{", b'{"attempt": NaN}', b"\xff\xfe"])
def test_what_is_not_a_json_object_is_refused_by_all(body: bytes) -> None:
    for kind in KINDS:
        assert not agree(kind, body)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_json_shaped_like_each_message_is_judged_alike(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(KINDS))
    doc = data.draw(shaped(kind))
    agree(kind, json.dumps(doc).encode())


items = st.lists(st.fixed_dictionaries({"sku": st.text(max_size=4), "qty": st.integers()}) | json_values, max_size=2)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_sagas_start_schema_says_what_the_orchestrator_starts(data: st.DataObject) -> None:
    """`StartSaga.order` accepts exactly the starts whose data fits OrderData: those decide() starts."""
    doc = data.draw(shaped(OrderData))
    if "items" in doc and data.draw(st.booleans()):
        doc["items"] = data.draw(items)
    start = {"saga_type": "order", "saga_id": "s-1", "data": doc}
    value = msgspec.json.decode(json.dumps(start).encode())
    accepted = decide(order, None, Start(saga_id="s-1", data=value["data"]), 1000.0).instance is not None
    assert by_schema("StartSaga.order", value) == accepted, (doc, accepted)
    assert by_asyncapi("StartSaga.order", value) == accepted, (doc, accepted)


class Defaults(msgspec.Struct):
    note: str = ""


relaxed = Saga("relaxed", [Step("one", participant="p", command="c")], data=Defaults)


@pytest.mark.parametrize("data", [None, {}, {"note": "x"}, {"note": 1}, "absent"])
def test_a_saga_whose_data_fields_all_have_defaults_still_needs_data(data: Any) -> None:
    defs = schemas([relaxed])["$defs"]
    start: dict[str, Any] = {"saga_type": "relaxed"} if data == "absent" else {"saga_type": "relaxed", "data": data}
    decoded = decode(StartSaga, json.dumps(start).encode())
    accepted = decide(relaxed, None, Start(saga_id="s-1", data=decoded.data), 1000.0).instance is not None
    assert JSON_SCHEMA({"$ref": "#/$defs/StartSaga.relaxed", "$defs": defs}).is_valid(start) == accepted


def test_an_item_of_the_wrong_shape_is_refused_by_the_start_schema_too() -> None:
    good = {"order_id": "o", "customer_id": "c", "items": [{"sku": "a", "qty": 1}], "amount": 1}
    assert by_schema("StartSaga.order", {"saga_type": "order", "data": good})
    assert not by_schema("StartSaga.order", {"saga_type": "order", "data": {**good, "items": [{"sku": "a"}]}})
    assert not by_schema("StartSaga.order", {"saga_type": "trip", "data": good})
    assert not by_schema("StartSaga.order", {"saga_type": "order"})  # OrderData has required fields
    assert Item.__name__ in SCHEMA["$defs"]  # the nested type is in the document too


def test_every_command_the_sagas_send_fits_its_schema() -> None:
    """`Command.<participant>.<command>` describes what decide() sends, compensations included."""
    data = {
        # Above the fraud check's limit, so every step of the order runs.
        "order": {"order_id": "o-1", "customer_id": "c-1", "items": [{"sku": "sku-1", "qty": 2}], "amount": 200_000},
        "trip": {"trip_id": "t-1", "customer_id": "c-1", "destination": "rome", "nights": 2},
    }
    # The first processor keeps crashing (so the backup is charged, and both
    # refunded); the last step may have happened, so every compensation is sent.
    last = {"order": "create_shipment", "trip": "rent_car"}
    seen = set()
    for saga in (order, trip):
        harness = SagaHarness(saga)
        run = harness.start(saga.name, data[saga.name])
        while run.status == "running":
            if not run.awaited:
                harness.advance(1)  # a retry's backoff, shorter than any timeout
            for sent in run.awaited:
                if sent.step == "charge_payment" or sent.step == last[saga.name]:
                    run.fail("outcome_unknown", step=sent.step)
                else:
                    run.succeed({f"ref_{sent.step}": "r-1"}, step=sent.step)
        while run.status == "compensating":
            if not run.awaited:
                harness.advance(1)
            for sent in run.awaited:
                run.succeed(step=sent.step)
        for sent in run.sent:
            command = msgspec.to_builtins(sent.message)
            command["reply_to"] = "t.replies"
            name = f"Command.{sent.participant}.{sent.command}"
            assert by_schema(name, command), name
            assert by_asyncapi(name, command), name
            assert by_decoder(Command, json.dumps(command).encode())
            seen.add(name)
    assert seen == {use.name for use in command_uses([order, trip])}


def test_a_command_to_the_wrong_participant_or_with_a_wrong_payload_does_not_fit() -> None:
    command = {**COMMAND, "payload": {"customer_id": "c-1", "amount": 100, "order_id": "o-1"}}
    assert by_schema("Command.payment.charge", command)
    assert not by_schema("Command.payment.charge", {**command, "command": "refund"})
    assert not by_schema("Command.payment.charge", {**command, "payload": {"amount": "a lot"}})
    assert not by_schema("Command.inventory.reserve_stock", command)


def test_the_schema_describes_every_field_and_the_codes_with_a_meaning() -> None:
    defs = SCHEMA["$defs"]
    for name in (*(kind.__name__ for kind in KINDS), "ErrorInfo"):
        assert defs[name]["description"]
        for field, spec in defs[name]["properties"].items():
            assert spec.get("description"), f"{name}.{field} has no description"
    codes = defs["ErrorInfo"]["properties"]["code"]
    assert {"outcome_unknown", "deadline_exceeded", "compensated", "unknown_command"} <= set(codes["examples"])
    assert "outcome_unknown" in codes["description"]
    assert "epoch" in defs["Command"]["properties"]["deadline"]["description"]

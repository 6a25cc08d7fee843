"""Fuzz the wire decoders: whatever arrives, the outcome is a valid message or `MalformedMessage`.

Every queue's consumer dead-letters a `MalformedMessage` at once; any other
exception means "try again", so a message that raises anything else on every
decode would be redelivered until the delivery limit instead of being
refused on sight. Random bytes, random JSON and JSON shaped like the real
messages (the real field names, each value of the right type or of any
other) are thrown at `statemachines.messages.decode` for every message type.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from participants.worker import Worker
from statemachines.decide import Start, decide
from statemachines.instance import SagaInstance
from statemachines.messages import Command, ErrorInfo, MalformedMessage, Reply, SagaEvent, StartSaga, decode, encode
from statemachines.sagas import order

KINDS: tuple[type[Any], ...] = (StartSaga, Command, Reply, SagaEvent)
kinds = st.sampled_from(KINDS)

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=16,
)


def _valid(info: msgspec.inspect.Type) -> st.SearchStrategy[Any]:
    """Values of the field's own type, as JSON."""
    if isinstance(info, msgspec.inspect.Metadata):  # a description, examples: the type is inside
        return _valid(info.type)
    if isinstance(info, msgspec.inspect.StrType):
        if info.pattern is None:
            return st.text(max_size=min(16, info.max_length or 16))
        # A bounded name or id: the end-of-string lookahead of the pattern is Python's \Z.
        pattern = info.pattern.replace("(?![\\s\\S])", "\\Z")
        return st.from_regex(pattern, fullmatch=True).filter(lambda text: len(text) <= (info.max_length or 16))
    if isinstance(info, msgspec.inspect.IntType):
        return st.integers(min_value=info.ge)
    if isinstance(info, msgspec.inspect.FloatType):
        return st.floats(allow_nan=False, allow_infinity=False) | st.integers(-(2**53), 2**53)
    if isinstance(info, msgspec.inspect.LiteralType):
        return st.sampled_from(info.values)
    if isinstance(info, msgspec.inspect.NoneType):
        return st.none()
    if isinstance(info, msgspec.inspect.DictType):
        return st.dictionaries(st.text(max_size=8), json_values, max_size=4)
    if isinstance(info, msgspec.inspect.UnionType):
        return st.one_of(*(_valid(t) for t in info.types))
    if isinstance(info, msgspec.inspect.StructType):
        return st.fixed_dictionaries({f.encode_name: _valid(f.type) for f in info.fields})
    return json_values


def shaped(kind: type[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A JSON object with `kind`'s field names; each field present or not, of its type or of any other."""
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        doc: dict[str, Any] = {}
        for field in info.fields:
            how = draw(st.sampled_from(["valid", "valid", "valid", "other", "missing"]))
            if how == "valid":
                doc[field.encode_name] = draw(_valid(field.type))
            elif how == "other":
                doc[field.encode_name] = draw(json_values)
        doc.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
        return doc

    return build()


def deeply_nested(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * depth + inner + b"]" * depth


def check(kind: type[Any], body: bytes) -> None:
    """The property: a valid message of `kind` that survives a round trip, or MalformedMessage."""
    try:
        message = decode(kind, body)
    except MalformedMessage as exc:
        assert str(exc), "a malformed message says why"
        return
    assert type(message) is kind
    assert decode(kind, encode(message)) == message
    if isinstance(message, Reply) and message.outcome == "failure":
        assert message.error is not None


@settings(max_examples=500, deadline=None)
@given(kind=kinds, body=st.binary(max_size=256))
def test_random_bytes(kind: type[Any], body: bytes) -> None:
    check(kind, body)


@settings(max_examples=500, deadline=None)
@given(kind=kinds, value=json_values)
def test_random_json(kind: type[Any], value: Any) -> None:
    check(kind, json.dumps(value).encode())


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_json_shaped_like_each_message_with_wrong_types(data: st.DataObject) -> None:
    kind = data.draw(kinds)
    doc = data.draw(shaped(kind))
    check(kind, json.dumps(doc).encode())
    # The same document read as every other message type, as on a mis-routed queue.
    for other in KINDS:
        check(other, json.dumps(doc).encode())


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_valid_messages_decode(data: st.DataObject) -> None:
    """Not everything is refused: each field of its own type always decodes."""
    kind = data.draw(kinds)
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    doc = {f.encode_name: data.draw(_valid(f.type)) for f in info.fields}
    if kind is Reply and doc["outcome"] == "failure" and doc["error"] is None:
        doc["error"] = {"code": "declined"}
    message = decode(kind, json.dumps(doc).encode())
    assert type(message) is kind


@settings(max_examples=60, deadline=None)
@given(
    kind=kinds,
    depth=st.integers(min_value=1, max_value=50_000),
    where=st.sampled_from(["top", "data", "payload"]),
)
@example(kind=StartSaga, depth=5_000, where="data")
@example(kind=Command, depth=100_000, where="payload")
@example(kind=Reply, depth=2_000, where="top")
def test_deeply_nested_json(kind: type[Any], depth: int, where: str) -> None:
    """A message nested past any sane depth is malformed, not a crash that is retried."""
    nested = deeply_nested(depth)
    body = {
        "top": nested,
        "data": b'{"saga_type": "order", "saga_id": "s", "status": "running", "state": "x", "at": 1, "data": {"a": '
        + nested
        + b"}}",
        "payload": b'{"message_id": "m", "saga_id": "s", "saga_type": "order", "step": "x", "action": "do", '
        b'"command": "c", "attempt": 1, "reply_to": "r", "payload": {"a": ' + nested + b"}}",
    }[where]
    check(kind, body)


@settings(max_examples=300, deadline=None)
@given(
    step=st.sampled_from(["reserve_inventory", "charge_payment", "nope"]),
    to_awaited=st.booleans(),
    action=st.sampled_from(["do", "compensate"]),
    outcome=st.sampled_from(["success", "failure"]),
    data=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    code=st.text(max_size=8),
)
def test_any_valid_reply_is_applied_or_recorded_and_the_result_can_be_stored(
    step: str, to_awaited: bool, action: str, outcome: str, data: dict[str, Any], code: str
) -> None:
    """The orchestrator's path after decoding: decide() takes any valid Reply without raising."""
    now = 1_000.0
    started = decide(
        order,
        None,
        Start(
            saga_id="s-1", data={"order_id": "o", "customer_id": "c", "items": [{"sku": "s", "qty": 1}], "amount": 1}
        ),
        now,
    ).instance
    assert started is not None and started.awaiting is not None
    body = encode(
        Reply(
            message_id="r-1",
            in_reply_to=started.awaiting if to_awaited else "s-1:99",
            saga_id="s-1",
            step=step,
            action=action,  # type: ignore[arg-type]
            outcome=outcome,  # type: ignore[arg-type]
            data=data,
            error=ErrorInfo(code) if outcome == "failure" else None,
        )
    )
    reply = decode(Reply, body)
    decision = decide(order, started, reply, now + 1)
    matches = to_awaited and step == started.step and action == started.action
    assert decision.changed == matches
    if not matches:
        assert [h.event for h in decision.history] == ["ignored_reply"]
    assert decision.instance is not None
    stored = msgspec.json.encode(decision.instance)
    assert msgspec.json.decode(stored, type=SagaInstance) == decision.instance


@settings(max_examples=300, deadline=None)
@given(doc=shaped(Command), failed=st.booleans(), data=st.dictionaries(st.text(max_size=8), json_values, max_size=3))
def test_a_worker_answers_any_command_it_accepts_with_a_valid_reply(
    doc: dict[str, Any], failed: bool, data: dict[str, Any]
) -> None:
    """The participant's path after decoding: the reply it builds always decodes on the other side."""
    try:
        command = decode(Command, json.dumps(doc).encode())
    except MalformedMessage:
        return
    worker = Worker("fuzz")
    reply = worker._reply(command, ErrorInfo("declined", "no") if failed else data)
    assert decode(Reply, encode(reply)) == reply

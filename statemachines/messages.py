"""The wire protocol: every message on the broker, as msgspec structs.

Decoding is strict (no type coercion, required fields required); unknown
fields are tolerated so that either side can add one without a flag day.
`schemas()` gives the JSON Schema of each message for participants written
in other languages.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import msgspec

Action = Literal["do", "compensate"]
Outcome = Literal["success", "failure"]
Status = Literal["new", "running", "compensating", "completed", "compensated", "stuck"]
TERMINAL: frozenset[str] = frozenset({"completed", "compensated", "stuck"})
# A stuck saga is terminal for waiters, but an operator may still resume it.
FINAL: frozenset[str] = frozenset({"completed", "compensated"})


# The failure code that says "it is not known whether the action happened"
# (the participant's handler kept crashing): the orchestrator treats it as a
# timeout, retrying it whatever `retry_on` says and compensating the step
# should the saga compensate.
OUTCOME_UNKNOWN = "outcome_unknown"


class ErrorInfo(msgspec.Struct, frozen=True):
    code: str
    message: str = ""


class StartSaga(msgspec.Struct, kw_only=True):
    """Start a saga; starting one with a saga_id that exists already does nothing."""

    saga_type: str
    data: dict[str, Any] = {}
    saga_id: str | None = None
    # A queue that receives the saga's final SagaEvent.
    reply_to: str | None = None


class Command(msgspec.Struct, kw_only=True):
    message_id: str
    saga_id: str
    saga_type: str
    step: str
    action: Action
    command: str
    attempt: int
    payload: dict[str, Any]
    reply_to: str
    # Epoch seconds after which the orchestrator stops waiting for this reply.
    deadline: float | None = None


class Reply(msgspec.Struct, kw_only=True):
    message_id: str
    in_reply_to: str
    saga_id: str
    step: str
    action: Action
    outcome: Outcome
    data: dict[str, Any] = {}
    error: ErrorInfo | None = None
    participant: str = ""


class SagaEvent(msgspec.Struct, kw_only=True):
    """A saga's lifecycle: started, compensating, completed, compensated, stuck."""

    saga_id: str
    saga_type: str
    status: Status
    state: str
    at: float
    data: dict[str, Any] = {}
    step: str | None = None
    error: ErrorInfo | None = None


M = TypeVar("M", StartSaga, Command, Reply, SagaEvent)

_decoders: dict[type, msgspec.json.Decoder[Any]] = {
    kind: msgspec.json.Decoder(kind) for kind in (StartSaga, Command, Reply, SagaEvent)
}
_encoder = msgspec.json.Encoder()


class MalformedMessage(ValueError):
    """A message body that is not valid JSON of the expected shape."""


def decode(kind: type[M], body: bytes) -> M:
    """Decode `body` as `kind`, raising MalformedMessage with a readable reason."""
    try:
        message: M = _decoders[kind].decode(body)
    except msgspec.DecodeError as exc:  # ValidationError is a subclass
        raise MalformedMessage(f"not a valid {kind.__name__}: {exc}") from None
    except RecursionError:  # msgspec's answer to JSON nested past the interpreter's depth
        raise MalformedMessage(f"not a valid {kind.__name__}: nested too deeply") from None
    if isinstance(message, Reply) and message.outcome == "failure" and message.error is None:
        raise MalformedMessage("not a valid Reply: a failure reply needs an error")
    return message


def encode(message: msgspec.Struct) -> bytes:
    return _encoder.encode(message)


def schemas() -> dict[str, Any]:
    """JSON Schema of every message, keyed by message name."""
    kinds = (StartSaga, Command, Reply, SagaEvent)
    _, components = msgspec.json.schema_components(kinds)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": components}

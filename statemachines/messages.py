"""The wire protocol: every message on the broker, as msgspec structs.

Decoding is strict (no type coercion, required fields required); unknown
fields are tolerated so that either side can add one without a flag day.
`schemas()` gives the JSON Schema of each message for participants written
in other languages.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from statemachines.names import ID_PATTERN, MAX_ID, MAX_NAME, MAX_QUEUE, NAME_PATTERN, QUEUE_PATTERN

Action = Literal["do", "compensate"]
Outcome = Literal["success", "failure"]
Status = Literal["new", "running", "compensating", "completed", "compensated", "stuck"]
# A refused start's event: no saga ever runs under it (see `statemachines.names.Names.rejected_key`).
EventStatus = Status | Literal["rejected"]
REJECTED: Literal["rejected"] = "rejected"
TERMINAL: frozenset[str] = frozenset({"completed", "compensated", "stuck"})
# A stuck saga is terminal for waiters, but an operator may still resume it.
FINAL: frozenset[str] = frozenset({"completed", "compensated"})


# The failure code that says "it is not known whether the action happened"
# (the participant's handler kept crashing): the orchestrator treats it as a
# timeout, retrying it whatever `retry_on` says and compensating the step
# should the saga compensate.
OUTCOME_UNKNOWN = "outcome_unknown"


# Bounded where they enter: these become routing keys, queue names and Redis keys.
SagaId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID, pattern=ID_PATTERN)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME, pattern=NAME_PATTERN)]
Queue = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_QUEUE, pattern=QUEUE_PATTERN)]
MessageId = Annotated[str, msgspec.Meta(max_length=255)]


class ErrorInfo(msgspec.Struct, frozen=True):
    code: str
    message: str = ""


class StartSaga(msgspec.Struct, kw_only=True):
    """Start a saga; a saga_id that exists already with the same data is the same saga, with other data a conflict."""

    saga_type: Name
    # None (or absent): no data given, refused when the saga declares a data type.
    data: dict[str, Any] | None = None
    saga_id: SagaId | None = None
    # A queue that receives the saga's final SagaEvent, or its refusal: a
    # server-named queue or one named `<ns>.reply.<name>`.
    reply_to: Queue | None = None


class Command(msgspec.Struct, kw_only=True):
    message_id: MessageId
    saga_id: SagaId
    saga_type: str
    step: Name
    action: Action
    command: str
    attempt: int
    payload: dict[str, Any]
    reply_to: str
    # Epoch seconds after which the orchestrator stops waiting for this reply.
    deadline: float | None = None


class Reply(msgspec.Struct, kw_only=True):
    message_id: MessageId
    in_reply_to: MessageId
    saga_id: SagaId
    step: Name
    action: Action
    outcome: Outcome
    data: dict[str, Any] = {}
    error: ErrorInfo | None = None
    participant: str = ""


class SagaEvent(msgspec.Struct, kw_only=True):
    """A saga's lifecycle: started, compensating, completed, compensated, stuck; or its start rejected."""

    saga_id: str
    saga_type: str
    status: EventStatus
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


_canonical = msgspec.json.Encoder(order="sorted")


def start_digest(saga_type: str, data: dict[str, Any] | None) -> str:
    """What two starts under one saga id must share to be the same start: their type and data, canonically."""
    # No data and empty data are the same start: either is all a saga without a data type takes.
    return hashlib.sha256(_canonical.encode([saga_type, data or {}])).hexdigest()[:32]


def schemas() -> dict[str, Any]:
    """JSON Schema of every message, keyed by message name."""
    kinds = (StartSaga, Command, Reply, SagaEvent)
    _, components = msgspec.json.schema_components(kinds)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$defs": components}

"""The wire protocol: every message on the broker, as msgspec structs.

Decoding is strict (no type coercion, required fields required); unknown
fields are tolerated so that either side can add one without a flag day.
The descriptions here are the field reference of docs/protocol.md; the
JSON Schema and the AsyncAPI document (`statemachines.schema`,
`statemachines.asyncapi`) are generated from these structs.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal, TypeVar

import msgspec

from statemachines.names import ID_PATTERN, MAX_ID, MAX_NAME, MAX_QUEUE, NAME_PATTERN, QUEUE_PATTERN

# The protocol's major version: what docs/protocol.md describes. Additions
# (an optional field, an error code, a message on a queue of its own) keep it;
# only a change an old participant would misread bumps it.
PROTOCOL_VERSION = "1"

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
# The participant did not start the action: the command's deadline had
# passed. Retried like a timeout, but known not to have happened.
DEADLINE_EXCEEDED = "deadline_exceeded"
# The action was refused because its step was compensated already (the
# compensation arrived first).
COMPENSATED = "compensated"
# The participant has no handler for the command.
UNKNOWN_COMMAND = "unknown_command"
# The orchestrator's own: a saga's messages could never be published (the
# broker or its client refuses them for good); the saga is stuck with it.
UNPUBLISHABLE = "unpublishable"
# Failures retried like a timeout, whatever the step's `retry_on` says.
RETRIED_ALWAYS = frozenset({OUTCOME_UNKNOWN, DEADLINE_EXCEEDED})

ERROR_CODES = {
    OUTCOME_UNKNOWN: "the action may or may not have happened (the handler kept crashing); the orchestrator retries "
    "it like a timeout and compensates the step should the saga compensate",
    DEADLINE_EXCEEDED: "the participant did not start the action because the command's deadline had passed; the "
    "orchestrator retries it like a timeout, knowing that nothing happened",
    COMPENSATED: "the action was refused because its step was compensated already (the compensation arrived first)",
    UNKNOWN_COMMAND: "the participant has no handler for this command",
}


# Bounded where they enter: these become routing keys, queue names and Redis keys.
SagaId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID, pattern=ID_PATTERN)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME, pattern=NAME_PATTERN)]
Queue = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_QUEUE, pattern=QUEUE_PATTERN)]
MessageId = Annotated[str, msgspec.Meta(max_length=255)]


class ErrorInfo(msgspec.Struct, frozen=True):
    """Why a reply is a failure, or why a saga compensated or is stuck."""

    code: Annotated[
        str,
        msgspec.Meta(
            description="A machine-readable reason, matched against the step's `retry_on`. "
            + "; ".join(f"`{code}`: {meaning}" for code, meaning in ERROR_CODES.items())
            + ". Any other code is the participant's own business refusal (e.g. `out_of_stock`): nothing happened.",
            examples=[*ERROR_CODES, "out_of_stock"],
        ),
    ]
    message: Annotated[str, msgspec.Meta(description="For people: what went wrong, in words.")] = ""


class StartSaga(msgspec.Struct, kw_only=True):
    """Start a saga; a saga_id that exists already with the same data is the same saga, with other data a conflict."""

    saga_type: Annotated[
        Name, msgspec.Meta(description="The saga type to start, as declared; its newest loaded version runs.")
    ]
    data: Annotated[
        dict[str, Any] | None,
        msgspec.Meta(
            description="The saga's data. Where the saga type declares a data type, the data must fit it "
            "(see the per-saga `StartSaga.<type>` schemas) or the start is refused; absent or null: no data, "
            "refused by a saga type that declares one."
        ),
    ] = None
    saga_id: Annotated[
        SagaId | None,
        msgspec.Meta(
            description="The saga's id, an idempotency key chosen by the sender: the same start again is the same "
            "saga, another start under it a conflict. Without it the AMQP message_id property is the id; "
            "without that, a random one."
        ),
    ] = None
    reply_to: Annotated[
        Queue | None,
        msgspec.Meta(
            description="A queue that receives the saga's final SagaEvent (completed, compensated or stuck), or "
            "its refusal (rejected), published to the default exchange: an exclusive queue of the sender's "
            "connection, or one named `<ns>.reply.<name>`."
        ),
    ] = None


class Command(msgspec.Struct, kw_only=True):
    """One attempt of a step's action (`do`) or compensation, sent to the step's participant."""

    message_id: Annotated[
        MessageId,
        msgspec.Meta(
            description="Unique per attempt; opaque (the orchestrator uses `<saga_id>:<revision>`). A participant "
            "answers a message_id it has seen before with the reply it gave then."
        ),
    ]
    saga_id: Annotated[
        SagaId,
        msgspec.Meta(description="The saga this attempt belongs to. With `step`, the idempotency key of the step."),
    ]
    saga_type: Annotated[str, msgspec.Meta(description="The saga's type.")]
    step: Annotated[Name, msgspec.Meta(description="The step's name, unique within the saga type.")]
    action: Annotated[
        Action, msgspec.Meta(description="`do`: perform the step's action. `compensate`: undo it (or refuse it).")
    ]
    command: Annotated[
        str,
        msgspec.Meta(
            description="What to do: the step's command or compensation name; it chooses the participant's handler."
        ),
    ]
    attempt: Annotated[
        int,
        msgspec.Meta(
            ge=1,
            description="1 for the first attempt of this action of this step, then 2, 3, ...; every attempt has a "
            "new message_id.",
        ),
    ]
    payload: Annotated[
        dict[str, Any],
        msgspec.Meta(
            description="The command's arguments, built from the saga data by the step (same for both actions)."
        ),
    ]
    reply_to: Annotated[str, msgspec.Meta(description="The queue to send the Reply to, through the default exchange.")]
    deadline: Annotated[
        float | None,
        msgspec.Meta(
            description="Absolute time, in seconds since the Unix epoch (UTC, may be fractional), after which the "
            "orchestrator stops waiting for this attempt's reply. A participant does not start an action past it "
            "(it replies failure `deadline_exceeded`); a compensation is processed whatever its deadline. "
            "null: no deadline."
        ),
    ] = None


class Reply(msgspec.Struct, kw_only=True):
    """A participant's answer to one Command, sent to the command's reply_to."""

    message_id: Annotated[
        MessageId,
        msgspec.Meta(
            description="Unique per reply; a repeated reply carries the same id. The SDK uses "
            "`<in_reply_to>/<participant>`."
        ),
    ]
    in_reply_to: Annotated[MessageId, msgspec.Meta(description="The message_id of the Command this answers.")]
    saga_id: Annotated[SagaId, msgspec.Meta(description="The Command's saga_id.")]
    step: Annotated[Name, msgspec.Meta(description="The Command's step.")]
    action: Annotated[Action, msgspec.Meta(description="The Command's action.")]
    outcome: Annotated[
        Outcome,
        msgspec.Meta(
            description="`success`: the action (or compensation) happened. `failure`: it did not, and `error` "
            "says why; `error.code` `outcome_unknown` says it may have."
        ),
    ]
    data: Annotated[
        dict[str, Any],
        msgspec.Meta(
            description="On success, merged into the saga data: later steps' payloads can use it. It may only "
            "add keys, unless the step declares `returns`."
        ),
    ] = {}
    error: Annotated[
        ErrorInfo | None, msgspec.Meta(description="Required when outcome is `failure`: why. null on success.")
    ] = None
    participant: Annotated[
        str,
        msgspec.Meta(description="The participant's name: it must be the step's participant, or the reply is refused."),
    ] = ""


class SagaEvent(msgspec.Struct, kw_only=True):
    """A saga's lifecycle: started, compensating, completed, compensated, stuck; or its start rejected."""

    saga_id: Annotated[str, msgspec.Meta(description="The saga's id.")]
    saga_type: Annotated[str, msgspec.Meta(description="The saga's type.")]
    status: Annotated[
        EventStatus,
        msgspec.Meta(
            description="Where the saga is: `running` (started), `compensating`, or the final `completed`, "
            "`compensated`, `stuck` (waits for an operator); `rejected`: the start was refused and no saga runs "
            "under it (`error` says why)."
        ),
    ]
    state: Annotated[
        str,
        msgspec.Meta(description="The state of the saga's state machine, e.g. a step's name or `compensating_<step>`."),
    ]
    at: Annotated[float, msgspec.Meta(description="When it happened, in seconds since the Unix epoch (UTC).")]
    data: Annotated[dict[str, Any], msgspec.Meta(description="The saga data at that moment.")] = {}
    step: Annotated[str | None, msgspec.Meta(description="The step the saga was at, if any.")] = None
    error: Annotated[
        ErrorInfo | None, msgspec.Meta(description="Why the saga compensated or is stuck; null otherwise.")
    ] = None


class SignalSaga(msgspec.Struct, kw_only=True):
    """An outside event for a saga that waits for it (`Await`), from any service, on `<ns>.signals`."""

    saga_id: Annotated[SagaId, msgspec.Meta(description="The saga the signal is for.")]
    name: Annotated[
        Name, msgspec.Meta(description="The signal's name, as the saga's `Await` declares it, e.g. `bank_confirmed`.")
    ]
    signal_id: Annotated[
        SagaId,
        msgspec.Meta(
            description="An idempotency key chosen by the sender: the same signal again is applied once, and "
            "answered as a duplicate."
        ),
    ]
    data: Annotated[
        dict[str, Any], msgspec.Meta(description="Merged into the saga data when the signal is accepted.")
    ] = {}
    reply_to: Annotated[
        Queue | None,
        msgspec.Meta(
            description="A queue that receives the SignalResult, published to the default exchange: an exclusive "
            "queue of the sender's connection, or one named `<ns>.reply.<name>`. null: no answer."
        ),
    ] = None


SIGNAL_REFUSALS = {
    "invalid_signal": "the SignalSaga does not decode or a value is out of bounds",
    "reply_to_not_allowed": "reply_to names a queue answers may not go to",
    "unknown_saga": "no saga has this id (or it expired)",
    "unknown_signal": "the saga's type declares no Await for this signal's name",
    "not_waiting": "the saga is not waiting for this signal now",
    "finished": "the saga has ended",
}


class SignalResult(msgspec.Struct, kw_only=True):
    """The answer to one SignalSaga, sent to its reply_to: accepted, or refused with a reason."""

    saga_id: Annotated[str, msgspec.Meta(description="The signal's saga_id (empty if it could not be read).")]
    name: Annotated[str, msgspec.Meta(description="The signal's name (empty if it could not be read).")]
    signal_id: Annotated[str, msgspec.Meta(description="The signal's signal_id (empty if it could not be read).")]
    outcome: Annotated[
        Literal["accepted", "refused"],
        msgspec.Meta(description="`accepted`: the saga took the signal. `refused`: it did not, `error` says why."),
    ]
    duplicate: Annotated[
        bool,
        msgspec.Meta(description="Accepted before, under this signal_id: nothing was applied again."),
    ] = False
    error: Annotated[
        ErrorInfo | None,
        msgspec.Meta(
            description="Why the signal was refused; null when accepted. Codes: "
            + "; ".join(f"`{code}`: {meaning}" for code, meaning in SIGNAL_REFUSALS.items())
            + ".",
            examples=list(SIGNAL_REFUSALS),
        ),
    ] = None
    at: Annotated[float, msgspec.Meta(description="When it was decided, in seconds since the Unix epoch (UTC).")]


class BreakerEvent(msgspec.Struct, kw_only=True):
    """A circuit breaker opened or closed: on `<ns>.events` as `breaker.<breaker>.<state>`."""

    breaker: Annotated[
        str,
        msgspec.Meta(description="The breaker's key: `step:<saga_type>.<step>` or `participant:<participant>`."),
    ]
    state: Annotated[
        Literal["open", "closed"],
        msgspec.Meta(
            description="`open`: its steps go to their fallback (or compensate) without sending commands, until "
            "its cool-down has passed and one trial succeeds. `closed`: commands go out again."
        ),
    ]
    at: Annotated[float, msgspec.Meta(description="When it happened, in seconds since the Unix epoch (UTC).")]
    saga_id: Annotated[
        str | None, msgspec.Meta(description="The saga whose step's result opened or closed it, where known.")
    ] = None
    failures: Annotated[int, msgspec.Meta(description="Counted failures within `window` that open it.")] = 0
    window: Annotated[float, msgspec.Meta(description="The window failures are counted in, in seconds.")] = 0.0
    cool_down: Annotated[float, msgspec.Meta(description="How long it stays open before a trial, in seconds.")] = 0.0


M = TypeVar("M", StartSaga, Command, Reply, SagaEvent, SignalSaga, SignalResult, BreakerEvent)

_decoders: dict[type, msgspec.json.Decoder[Any]] = {
    kind: msgspec.json.Decoder(kind)
    for kind in (StartSaga, Command, Reply, SagaEvent, SignalSaga, SignalResult, BreakerEvent)
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

"""The JSON Schema of the wire protocol: every message, and per saga type its start and its commands' payloads.

Generated from the structs in `statemachines.messages` and the sagas'
declarations, so it cannot drift from what `decode` accepts: the rules
msgspec cannot state by itself (a failure reply needs an error) are added
here, and tests hold the schema and the decoders to the same samples. The
AsyncAPI document (`statemachines.asyncapi`) references these definitions.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from statemachines.dsl import Saga, Step
from statemachines.messages import (
    PROTOCOL_VERSION,
    BreakerEvent,
    Command,
    ErrorInfo,
    Reply,
    SagaEvent,
    SignalResult,
    SignalSaga,
    StartSaga,
)

MESSAGES: tuple[type[msgspec.Struct], ...] = (
    StartSaga,
    Command,
    Reply,
    SagaEvent,
    SignalSaga,
    SignalResult,
    BreakerEvent,
)
DIALECT = "https://json-schema.org/draft/2020-12/schema"


@dataclass(frozen=True)
class CommandUse:
    """One participant command as the loaded sagas send it: where, and with what payload."""

    participant: str
    command: str
    saga_types: tuple[str, ...]
    steps: tuple[str, ...]
    actions: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"Command.{self.participant}.{self.command}"


def schemas(sagas: Sequence[Saga] = ()) -> dict[str, Any]:
    """The JSON Schema document: every message, and what each saga type in `sagas` adds, under `$defs`."""
    return {
        "$schema": DIALECT,
        "title": f"Saga Orchestrator wire protocol, version {PROTOCOL_VERSION}",
        "description": "Every message on the broker (StartSaga, Command, Reply, SagaEvent, SignalSaga, SignalResult, "
        "BreakerEvent) and, per loaded saga type, "
        "`StartSaga.<type>` (its start, with its data) and `Command.<participant>.<command>` (each command with "
        "its payload). docs/protocol.md is the normative text.",
        "$defs": definitions(sagas),
    }


def definitions(sagas: Sequence[Saga] = (), ref_template: str = "#/$defs/{name}") -> dict[str, Any]:
    """Every schema by name; references between them follow `ref_template`."""
    data_types = _unique(saga.data for saga in sagas if saga.data is not None)
    refs, defs = msgspec.json.schema_components([*MESSAGES, *data_types], ref_template=ref_template)
    data_refs = dict(zip(data_types, refs[len(MESSAGES) :], strict=True))

    def ref(name: str) -> dict[str, str]:
        return {"$ref": ref_template.format(name=name)}

    defs["Reply"] = {
        **defs["Reply"],
        # msgspec states types, not this rule; `decode` refuses such a reply.
        "if": {"properties": {"outcome": {"const": "failure"}}, "required": ["outcome"]},
        "then": {"required": ["error"], "properties": {"error": ref(ErrorInfo.__name__)}},
    }
    for saga in newest(sagas):
        data = data_refs.get(saga.data) if saga.data is not None else None
        defs[f"StartSaga.{saga.name}"] = _start(saga, ref("StartSaga"), data)
    for use in command_uses(sagas):
        defs[use.name] = _command(use, sagas, ref("Command"), data_refs, defs, ref_template)
    return defs


def command_uses(sagas: Iterable[Saga]) -> list[CommandUse]:
    """Every (participant, command) the sagas send, sorted, with the types, steps and actions that send it."""
    found: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    for saga in sagas:
        for step in saga.all_steps.values():
            for action, command in (
                ("do", None if step.undo_by_command else step.command),
                ("compensate", step.undo_command),
            ):
                if command is not None:
                    found.setdefault((step.participant, command), []).append((saga.name, step.name, action))
    return [
        CommandUse(
            participant,
            command,
            tuple(sorted({t for t, _, _ in uses})),
            tuple(sorted({s for _, s, _ in uses})),
            tuple(sorted({a for _, _, a in uses})),
        )
        for (participant, command), uses in sorted(found.items())
    ]


def newest(sagas: Iterable[Saga]) -> list[Saga]:
    """The newest version of each saga type, by name: the ones a start runs."""
    found: dict[str, Saga] = {}
    for saga in sorted(sagas, key=lambda s: s.version):
        found[saga.name] = saga
    return [found[name] for name in sorted(found)]


def _start(saga: Saga, start: dict[str, str], data: dict[str, str] | None) -> dict[str, Any]:
    specific: dict[str, Any] = {"properties": {"saga_type": {"const": saga.name}}, "required": ["saga_type"]}
    if data is not None:
        # A saga with a data type refuses a start without data, however many of its fields have defaults.
        specific["properties"]["data"] = data
        specific["required"].append("data")
    return {
        "title": f"StartSaga.{saga.name}",
        "description": f"Start a saga of type {saga.name!r} (version {saga.version}); its data "
        + ("must fit the schema given." if data is not None else "is any JSON object."),
        "allOf": [start, specific],
    }


def _command(
    use: CommandUse,
    sagas: Sequence[Saga],
    command: dict[str, str],
    data_refs: dict[Any, dict[str, str]],
    defs: dict[str, Any],
    ref_template: str,
) -> dict[str, Any]:
    payloads: list[Any] = []
    for saga in sagas:
        data = data_refs.get(saga.data) if saga.data is not None else None
        for step in saga.all_steps.values():
            if step.participant == use.participant and use.command in (step.command, step.compensation):
                payload = _payload(step, data, defs, ref_template)
                if payload not in payloads:
                    payloads.append(payload)
    return {
        "title": use.name,
        "description": f"The command {use.command!r} to participant {use.participant!r}: "
        f"sent by saga type(s) {', '.join(use.saga_types)}, step(s) {', '.join(use.steps)}.",
        "allOf": [
            command,
            {
                "properties": {
                    "command": {"const": use.command},
                    "action": {"enum": list(use.actions)},
                    "saga_type": {"enum": list(use.saga_types)},
                    "step": {"enum": list(use.steps)},
                    "payload": payloads[0] if len(payloads) == 1 else {"anyOf": payloads},
                }
            },
        ],
    }


def _payload(step: Step, data: dict[str, str] | None, defs: dict[str, Any], ref_template: str) -> dict[str, Any]:
    """What the step's payload holds, as far as its declaration says."""
    if callable(step.payload):
        return {"type": "object", "description": f"Built by a function of the saga data (step {step.name!r})."}
    if data is None:
        return {"type": "object"}
    if step.payload is None:
        # The whole saga data, and whatever earlier replies added to it.
        return data
    # Keys of the declared data keep their schema; others come from earlier replies' data.
    properties = _resolve(data, defs, ref_template).get("properties", {})
    return {
        "type": "object",
        "description": f"Keys {', '.join(step.payload)} of the saga data, those that are present.",
        "properties": {key: properties.get(key, {}) for key in step.payload},
    }


def _resolve(ref: dict[str, str], defs: dict[str, Any], ref_template: str) -> dict[str, Any]:
    prefix = ref_template.split("{name}")[0]
    found: dict[str, Any] = defs.get(ref["$ref"].removeprefix(prefix), {})
    return found


def _unique(items: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(items))

"""The AsyncAPI 3.0 document of the wire protocol, built from the names, the messages and the loaded sagas.

One document describes one application. By default that is the
orchestrator (it receives starts and replies, sends commands and events);
with `participant=NAME` it is that participant (it receives its commands,
sends replies and dead letters), which is what a team writing a
participant in another language generates code from. Channels carry the
AMQP 0-9-1 bindings (bindingVersion 0.3.0); what the binding cannot say,
the queue arguments and which exchange a queue is bound to, travels in
`x-` extensions. The payload schemas are `statemachines.schema`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

from statemachines.dsl import Saga
from statemachines.messages import PROTOCOL_VERSION, EventStatus
from statemachines.names import Names
from statemachines.schema import command_uses, definitions, newest

ASYNCAPI_VERSION = "3.0.0"
BINDING = "0.3.0"
CONTENT_TYPE = "application/json"
DEAD_LETTER_HEADERS = {
    "x-saga-reason": {"type": "string", "description": "Why the message was refused, in words (at most 1000)."},
    "x-saga-queue": {"type": "string", "description": "The queue the message was refused on."},
    "x-saga-deliveries": {"type": "integer", "description": "How often it had been delivered, this time included."},
    "x-saga-id": {"type": "string", "description": "The saga it belongs to, where that is known."},
}
DEAD_LETTER_REQUIRED = ["x-saga-reason"]
# W3C Trace Context, while tracing is on; never needed to process a message.
TRACE_HEADERS = {
    "type": "object",
    "properties": {
        "traceparent": {"type": "string", "description": "W3C Trace Context: the sender's span."},
        "tracestate": {"type": "string", "description": "W3C Trace Context: vendor state."},
    },
}


@dataclass(frozen=True)
class Server:
    """Where the broker is, as a document names it (no credentials)."""

    host: str = "127.0.0.1:5672"
    vhost: str = "/"
    secure: bool = False


@dataclass
class _Builder:
    names: Names
    sagas: Sequence[Saga]
    server: Server
    channels: dict[str, Any] = field(default_factory=dict)
    messages: dict[str, Any] = field(default_factory=dict)
    operations: dict[str, Any] = field(default_factory=dict)

    def message(self, name: str, kind: str, summary: str, **extra: Any) -> dict[str, str]:
        """Add a message whose payload is schema `name`, sent with AMQP type `kind`."""
        self.messages[name] = {
            "name": name,
            "title": name,
            "summary": summary,
            "contentType": CONTENT_TYPE,
            "headers": TRACE_HEADERS,
            "payload": {"$ref": f"#/components/schemas/{name}"},
            "bindings": {"amqp": {"messageType": kind, "bindingVersion": BINDING}},
            **extra,
        }
        return {"$ref": f"#/components/messages/{name}"}

    def queue(self, key: str, name: str, description: str, messages: dict[str, Any], **extensions: Any) -> None:
        self.channels[key] = {
            "address": name,
            "title": name,
            "description": description,
            "messages": messages,
            "bindings": {
                "amqp": {
                    "is": "queue",
                    "queue": {
                        "name": name,
                        "durable": True,
                        "exclusive": False,
                        "autoDelete": False,
                        "vhost": self.vhost,
                    },
                    **extensions,
                    "bindingVersion": BINDING,
                }
            },
        }

    def exchange(
        self, key: str, exchange: str, kind: str, address: str, description: str, messages: dict[str, Any], **more: Any
    ) -> None:
        self.channels[key] = {
            "address": address,
            "title": f"{exchange} ({kind} exchange)",
            "description": description,
            "messages": messages,
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {
                        "name": exchange,
                        "type": kind,
                        "durable": True,
                        "autoDelete": False,
                        "vhost": self.vhost,
                    },
                    "bindingVersion": BINDING,
                }
            },
            **more,
        }

    @property
    def vhost(self) -> str:
        return self.server.vhost

    def operation(
        self, key: str, action: str, channel: str, summary: str, *, ack: bool = False, reply: Any = None
    ) -> None:
        binding: dict[str, Any] = {"ack": True} if action == "receive" and ack else {}
        if action == "send":
            binding["deliveryMode"] = 2
        operation: dict[str, Any] = {
            "action": action,
            "channel": {"$ref": f"#/channels/{channel}"},
            "summary": summary,
            "messages": [
                {"$ref": f"#/channels/{channel}/messages/{name}"} for name in self.channels[channel]["messages"]
            ],
            "bindings": {"amqp": {**binding, "bindingVersion": BINDING}},
        }
        if reply is not None:
            operation["reply"] = reply
        self.operations[key] = operation


def document(
    names: Names, sagas: Sequence[Saga], *, participant: str | None = None, server: Server | None = None
) -> dict[str, Any]:
    """The AsyncAPI document of the orchestrator, or of `participant` if given."""
    build = _Builder(names, sagas, server or Server())
    uses = command_uses(sagas)
    participants = sorted({use.participant for use in uses})
    if participant is not None and participant not in participants:
        known = ", ".join(participants) or "none"
        raise ValueError(f"no loaded saga sends commands to participant {participant!r}; known: {known}")
    queue_arguments = {"x-queue-arguments": names.queue_arguments()}

    starts = {
        f"StartSaga.{saga.name}": build.message(
            f"StartSaga.{saga.name}",
            "StartSaga",
            f"Start a saga of type {saga.name!r}.",
            correlationId={"location": "$message.payload#/saga_id", "description": "The saga's id, if given."},
        )
        for saga in newest(sagas)
    }
    build.queue(
        "start",
        names.start_queue,
        "Sagas to start. Declared by the orchestrator (and by clients). A start whose saga_id exists starts nothing.",
        starts,
        **queue_arguments,
    )
    reply = build.message(
        "Reply",
        "Reply",
        "A participant's answer to one command.",
        correlationId={"location": "$message.payload#/in_reply_to", "description": "The command's message_id."},
    )
    build.queue(
        "replies",
        names.reply_queue,
        "Every participant's replies, shared by all orchestrator processes. Declared by the orchestrator. "
        f"Participants publish to it through the {names.replies_exchange} direct exchange, routing key the "
        "command's reply_to (a user allowed to write only there reaches no other queue), or the default exchange.",
        {"Reply": reply},
        **queue_arguments,
        **{"x-bound-to": {"exchange": names.replies_exchange, "routingKey": names.reply_queue}},
    )
    commands = {
        use.name: build.message(
            use.name,
            "Command",
            f"{use.command!r} for participant {use.participant!r}.",
            correlationId={"location": "$message.payload#/message_id", "description": "Echoed as in_reply_to."},
        )
        for use in uses
    }
    build.exchange(
        "commands",
        names.commands_exchange,
        "direct",
        "{participant}",
        "Commands, routed by the participant's name to its queue.",
        commands,
        parameters={"participant": {"description": "The participant's name.", "enum": participants}},
    )
    for name in participants:
        build.queue(
            f"participant.{name}",
            names.participant_queue(name),
            f"Participant {name!r}'s commands. Declared and bound by the orchestrator for every participant of its "
            "sagas; the participant may declare it too, with the same arguments.",
            {key: ref for key, ref in commands.items() if key.startswith(f"Command.{name}.")},
            **queue_arguments,
            **{"x-bound-to": {"exchange": names.commands_exchange, "routingKey": name}},
        )
    event = build.message("SagaEvent", "SagaEvent", "A saga's lifecycle event.")
    build.exchange(
        "events",
        names.events_exchange,
        "topic",
        "{saga_type}.{saga_id}.{status}",
        "Lifecycle events of every saga; bind a queue of your own, e.g. `order.*.completed` or `*.o-1.*`.",
        {"SagaEvent": event},
        parameters={
            "saga_type": {"description": "The saga's type."},
            "saga_id": {"description": "The saga's id."},
            "status": {"description": "The event's status.", "enum": _statuses()},
        },
    )
    breaker = build.message("BreakerEvent", "BreakerEvent", "A circuit breaker opened or closed.")
    build.exchange(
        "breakers",
        names.events_exchange,
        "topic",
        "breaker.{breaker}.{state}",
        "Circuit breakers that opened or closed, on the events exchange beside the sagas' events; bind "
        "`breaker.#` (a breaker key may hold a `.`, `step:<saga_type>.<step>`).",
        {"BreakerEvent": breaker},
        parameters={
            "breaker": {"description": "The breaker's key: `step:<saga_type>.<step>` or `participant:<name>`."},
            "state": {"description": "What it became.", "enum": ["open", "closed"]},
        },
    )
    signal = build.message(
        "SignalSaga",
        "SignalSaga",
        "An outside event for a waiting saga.",
        correlationId={"location": "$message.payload#/signal_id", "description": "Echoed in the SignalResult."},
    )
    build.queue(
        "signals",
        names.signals_queue,
        "Signals for sagas that wait for an outside event (`Await`), from any service. Declared by the "
        "orchestrator (and by senders).",
        {"SignalSaga": signal},
        **queue_arguments,
    )
    build.channels["signal-result"] = {
        "address": None,
        "title": "A signal's reply_to",
        "description": "The queue a SignalSaga named in reply_to: it gets the SignalResult, accepted or refused.",
        "messages": {"SignalResult": build.message("SignalResult", "SignalResult", "A signal accepted or refused.")},
    }
    build.channels["final"] = {
        "address": None,
        "title": "A start's reply_to",
        "description": "The queue a StartSaga named in reply_to: it gets the saga's final SagaEvent, or the "
        "start's refusal (status rejected).",
        "messages": {"SagaEvent": event},
    }
    build.messages["DeadLetter"] = {
        "name": "DeadLetter",
        "title": "DeadLetter",
        "summary": "A message that could not be processed, unchanged, with why in its headers.",
        "headers": {"type": "object", "properties": DEAD_LETTER_HEADERS, "required": DEAD_LETTER_REQUIRED},
        "payload": {"description": "The refused message's body, as it was (it may not be JSON at all)."},
        "bindings": {"amqp": {"bindingVersion": BINDING}},
    }
    dead = {"DeadLetter": {"$ref": "#/components/messages/DeadLetter"}}
    build.exchange(
        "dead",
        names.dead_exchange,
        "topic",
        "{queue}",
        "Dead letters, routed by the name of the queue they were refused on.",
        dead,
        parameters={"queue": {"description": "The queue the message was refused on."}},
    )
    build.queue(
        "dead-letters",
        names.dead_queue,
        "Every dead letter of the namespace (bound to the dead exchange with `#`), kept for operators.",
        dead,
        **{"x-bound-to": {"exchange": names.dead_exchange, "routingKey": "#"}},
    )
    command_reply = {
        "address": {"location": "$message.payload#/reply_to", "description": "The command's reply_to."},
        "channel": {"$ref": "#/channels/replies"},
        "messages": [{"$ref": "#/channels/replies/messages/Reply"}],
    }
    if participant is None:
        _orchestrator(build, command_reply)
    else:
        _participant(build, participant, command_reply)
    title = "Saga Orchestrator" if participant is None else f"Saga participant {participant!r}"
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": f"urn:saga-orchestrator:{names.namespace}" + (f":participant:{participant}" if participant else ""),
        "info": {
            "title": f"{title}, namespace {names.namespace!r}",
            "version": PROTOCOL_VERSION,
            "description": "The wire protocol of Saga Orchestrator over RabbitMQ: JSON messages, persistent, "
            "published with confirms and consumed with manual acks. docs/protocol.md is the normative text; "
            "this document is generated from the code (`saga asyncapi`).",
        },
        "defaultContentType": CONTENT_TYPE,
        "servers": {
            "broker": {
                "host": build.server.host,
                "protocol": "amqps" if build.server.secure else "amqp",
                "protocolVersion": "0.9.1",
                "description": f"RabbitMQ, virtual host {build.server.vhost!r}.",
            }
        },
        "channels": build.channels,
        "operations": build.operations,
        "components": {
            "schemas": definitions(sagas, ref_template="#/components/schemas/{name}"),
            "messages": build.messages,
        },
    }


def _orchestrator(build: _Builder, command_reply: dict[str, Any]) -> None:
    build.operation("receiveStart", "receive", "start", "Start sagas.", ack=True)
    build.operation(
        "sendCommand", "send", "commands", "Send each step's command to its participant.", reply=command_reply
    )
    build.operation("receiveReply", "receive", "replies", "Apply the participants' replies.", ack=True)
    build.operation("publishEvent", "send", "events", "Publish every saga's lifecycle events.")
    build.operation("sendFinalEvent", "send", "final", "Send a saga's final event to its start's reply_to.")
    build.operation("publishBreakerEvent", "send", "breakers", "Publish circuit breakers that opened or closed.")
    build.operation(
        "receiveSignal",
        "receive",
        "signals",
        "Apply signals to waiting sagas; answer each to its reply_to.",
        ack=True,
        reply={
            "address": {"location": "$message.payload#/reply_to", "description": "The signal's reply_to."},
            "channel": {"$ref": "#/channels/signal-result"},
            "messages": [{"$ref": "#/channels/signal-result/messages/SignalResult"}],
        },
    )
    build.operation("deadLetter", "send", "dead", "Dead-letter what cannot be processed, with the reason.")


def _participant(build: _Builder, participant: str, command_reply: dict[str, Any]) -> None:
    queue = f"participant.{participant}"
    build.operation(
        "receiveCommand", "receive", queue, "Perform or compensate a step, then reply.", ack=True, reply=command_reply
    )
    build.operation("sendReply", "send", "replies", "Answer a command, to its reply_to.")
    build.operation("deadLetter", "send", "dead", "Dead-letter a command that cannot be processed, with the reason.")
    used = {queue, "replies", "dead", "dead-letters"}
    for key in [key for key in build.channels if key not in used]:
        del build.channels[key]
    kept = {
        ref["$ref"].rsplit("/", 1)[1] for channel in build.channels.values() for ref in channel["messages"].values()
    }
    for name in [name for name in build.messages if name not in kept]:
        del build.messages[name]


def _statuses() -> list[str]:
    # A saga is `new` only inside a transition; its first event says `running`.
    return [status for literal in get_args(EventStatus) for status in get_args(literal) if status != "new"]

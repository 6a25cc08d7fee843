"""Least-privilege RabbitMQ users for one namespace, and who may send a reply (`saga access`).

Each participant logs in as its own user, `Names.participant_user` (for
`payment` in namespace `saga`: `saga.participant.payment`), and every
publish carries that login as its AMQP user-id, which RabbitMQ refuses to
let a connection set to anything but its own user. With
`--authenticate-replies` the orchestrator takes a reply only if its
user-id is the user of the participant it names, and decide() takes it
only if that participant is the step's: one participant cannot answer for
another.

What a participant's user may do, and nothing else:
- read its own queue (consume), and declare it (configure), with its
  dead-letter exchange (write on `<ns>.dead`, which dead-lettering needs);
- write to `<ns>.reply-exchange`, which routes only to `<ns>.replies`;
  never to the default exchange, which RabbitMQ grants as a whole
  (`amq.default`) and which reaches every queue, other participants' too;
- write to `<ns>.dead`, to dead-letter what it cannot take.
It binds nothing: the orchestrator (or the definitions file) binds its
queue, so it cannot bind its queue to another participant's commands.

The orchestrator's user may do anything within the namespace, and publish
outcomes to the default exchange; it also serves the `saga` commands and
`SagaClient`, whose exclusive reply queues are named `amq_<hex>` (by aio-pika)
or `amq.gen-...` (by the broker).

Pure: no I/O, so the same registry always gives the same text.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.registry import Registry
from participants.edge.clip import clip
from statemachines.names import Names


@dataclass(frozen=True)
class Grant:
    """One user's permissions on the virtual host: three anchored regular expressions, as RabbitMQ takes them."""

    user: str
    configure: str
    write: str
    read: str
    role: str


def _lit(name: str) -> str:
    # Names hold only letters, digits, "_", "-" and the "." that joins them: "." is the one metacharacter.
    return name.replace(".", r"\.")


def _any(*patterns: str) -> str:
    return f"^({'|'.join(patterns)})$" if len(patterns) > 1 else f"^{patterns[0]}$"


def grants(names: Names, participants: Iterable[str]) -> list[Grant]:
    """The orchestrator's user, then one user per participant, in name order."""
    ns = _lit(names.namespace)
    everything = rf"{ns}\..*"
    # Exclusive reply queues: aio-pika names them amq_<hex>, the broker amq.gen-<...>.
    server_named = r"amq_[0-9a-f]+|amq\.gen-.*"
    out = [
        Grant(
            names.orchestrator_user,
            configure=_any(everything, server_named),
            write=_any(everything, server_named, r"amq\.default"),
            read=_any(everything, server_named),
            role="the orchestrator, and the saga commands and SagaClient",
        )
    ]
    for participant in sorted(set(participants)):
        queue = _lit(names.participant_queue(participant))
        out.append(
            Grant(
                names.participant_user(participant),
                configure=_any(queue),
                write=_any(_lit(names.replies_exchange), _lit(names.dead_exchange)),
                read=_any(queue),
                role=f"participant {participant}",
            )
        )
    return out


def sender_problem(names: Names, participant: str, user_id: str | None) -> str | None:
    """Why a reply naming `participant` and sent as RabbitMQ user `user_id` is not its participant's (None: it is)."""
    expected = names.participant_user(participant)
    if user_id == expected:
        return None
    if not user_id:
        return f"it carries no AMQP user-id; --authenticate-replies takes only one sent as {expected!r}"
    return f"it was sent as RabbitMQ user {clip(user_id, 100)!r}, not as {expected!r} (--authenticate-replies)"


def participants_of(registry: Registry) -> list[str]:
    return sorted(registry.participants)


def rabbitmqctl(grants: Iterable[Grant], vhost: str, passwords: Mapping[str, str] | None = None) -> str:
    """Shell commands that create the users and set their permissions.

    Without `passwords`, `add_user` is given none: rabbitmqctl then reads it
    from standard input, so no password is written here or in a shell's history.
    """
    q = shlex.quote
    lines = [
        "# Least-privilege RabbitMQ users for the saga orchestrator (`saga access`).",
        "# Without a password on the line, rabbitmqctl add_user reads it from standard input.",
    ]
    for grant in grants:
        lines.append(f"# {grant.role}")
        password = (passwords or {}).get(grant.user)
        add = f"rabbitmqctl add_user {q(grant.user)}"
        lines.append(f"{add} {q(password)}" if password is not None else add)
        lines.append(
            f"rabbitmqctl set_permissions -p {q(vhost)} {q(grant.user)} "
            f"{q(grant.configure)} {q(grant.write)} {q(grant.read)}"
        )
    return "\n".join(lines) + "\n"


def definitions(names: Names, participants: Iterable[str], vhost: str) -> dict[str, Any]:
    """A RabbitMQ definitions file: the users (no password: set each with `rabbitmqctl change_password`),
    their permissions, and the namespace's topology, so that a participant may start before the orchestrator."""
    members = sorted(set(participants))
    every = grants(names, members)
    users = [
        {"name": g.user, "password_hash": "", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []}
        for g in every
    ]
    permissions = [
        {"user": g.user, "vhost": vhost, "configure": g.configure, "write": g.write, "read": g.read} for g in every
    ]
    exchanges = [
        {
            "name": name,
            "vhost": vhost,
            "type": kind,
            "durable": True,
            "auto_delete": False,
            "internal": False,
            "arguments": {},
        }
        for name, kind in (
            (names.replies_exchange, "direct"),
            (names.commands_exchange, "direct"),
            (names.events_exchange, "topic"),
            (names.dead_exchange, "topic"),
        )
    ]
    work = [names.start_queue, names.reply_queue, names.signals_queue, *map(names.participant_queue, members)]
    queues = [
        {"name": q, "vhost": vhost, "durable": True, "auto_delete": False, "arguments": names.queue_arguments()}
        for q in work
    ]
    queues.append(
        {
            "name": names.dead_queue,
            "vhost": vhost,
            "durable": True,
            "auto_delete": False,
            "arguments": names.dead_queue_arguments(),
        }
    )

    def binding(source: str, queue: str, key: str) -> dict[str, Any]:
        return {
            "source": source,
            "vhost": vhost,
            "destination": queue,
            "destination_type": "queue",
            "routing_key": key,
            "arguments": {},
        }

    bindings = [
        binding(names.dead_exchange, names.dead_queue, "#"),
        binding(names.replies_exchange, names.reply_queue, names.reply_queue),
        *(binding(names.commands_exchange, names.participant_queue(p), p) for p in members),
    ]
    return {
        "users": users,
        "vhosts": [{"name": vhost}],
        "permissions": permissions,
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
    }


def definitions_json(names: Names, participants: Iterable[str], vhost: str) -> str:
    return json.dumps(definitions(names, participants, vhost), indent=2) + "\n"

"""Which type an existing queue is, when RabbitMQ refuses our declaration of it.

A refused declare names only the first argument that differs, in the
existing queue's order (the dead-letter exchange comes before the type), and
passive declares tell nothing of arguments. So the declaration is tried again
with each differing argument made as the queue has it, until the refusal
names the type, or an argument only one type has, or the declaration passes
(then the queue is of our type, with other arguments).
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from aio_pika.abc import AbstractRobustConnection
from aiormq.exceptions import ChannelAccessRefused, ChannelPreconditionFailed

from participants.edge.settings import BadSetting

# "inequivalent arg 'K' for queue 'q' in vhost '/': received ... but current is none"
# or "... but current is 'quorum'" (the type) or "... current is the value '2' of type 'byte'".
_REFUSAL = re.compile(
    r"inequivalent arg '([^']+)'.*but current is (none|'([^']*)'|the value '([^']*)' of type '(\w+)')"
)
# Arguments that only one type takes, hence checks.
_ONLY = {"x-queue-version": "classic", "x-queue-mode": "classic", "x-max-priority": "classic"} | dict.fromkeys(
    ("x-delivery-limit", "x-quorum-initial-group-size", "x-max-in-memory-length", "x-dead-letter-strategy"), "quorum"
)
_TRIES = 8


class QueueTypeMismatch(BadSetting):
    """A queue exists with another type than SAGA_QUEUE_TYPE asks for: the namespace's processes disagree."""

    def __init__(self, queue: str, current: str, wanted: str) -> None:
        super().__init__(
            f"queue {queue!r} exists as {current}, SAGA_QUEUE_TYPE says {wanted}: every process of a namespace "
            f"must use the same queue type (set SAGA_QUEUE_TYPE={current}, or drain and delete the queues first)"
        )


def _value(text: str, kind: str) -> Any:
    if kind == "longstr":
        return text
    if kind == "bool":
        return text == "true"
    return int(text)  # byte, short, signedint, long...: every number we could have sent


async def existing_type(connection: AbstractRobustConnection, queue: str, arguments: dict[str, Any]) -> str | None:
    """The type of existing `queue`, which refused `arguments`; None if that cannot be told."""
    probe = dict(arguments)
    for _ in range(_TRIES):
        channel = await connection.channel(publisher_confirms=False)
        try:
            await channel.declare_queue(queue, durable=True, arguments=probe)
            return str(probe.get("x-queue-type", "classic"))
        except ChannelAccessRefused:
            return None
        except ChannelPreconditionFailed as exc:
            found = _REFUSAL.search(str(exc.args[0] if exc.args else exc))
            if found is None:
                return None
            key, none, named, value, kind = found.groups()
            if key == "x-queue-type":
                return "classic" if none == "none" else named or value
            if key in _ONLY:
                return _ONLY[key]
            if none == "none":
                probe.pop(key, None)
            elif value is not None:
                try:
                    probe[key] = _value(value, kind)
                except ValueError:
                    return None
            else:
                probe[key] = named
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
    return None

"""Reading, replaying and purging `<ns>.dead-letters` without losing what nobody chose to remove.

The dead letters are read with basic.get and held unacknowledged while the
caller looks at them; whatever it does not replay or purge goes back to
the queue, in its place, when the hold ends (a crash too: the broker
requeues what an ended connection held). Others reading the queue at the
same time never see a held letter vanish: they miss it until it is back.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from pamqp.commands import Basic

from participants.edge.amqp import REASON, SAGA_ID
from participants.edge.connections import connect_amqp
from participants.edge.settings import Settings
from statemachines.names import Names, id_problem

# Headers of ours or the broker's, about the dead-lettering: a replayed message starts afresh without them.
_ABOUT_DEATH = ("x-death", "x-first-death-queue", "x-first-death-reason", "x-first-death-exchange", "x-delivery-count")


@dataclass
class DeadLetter:
    """One dead letter, as operators read it."""

    message: AbstractIncomingMessage
    message_id: str
    queue: str
    reason: str
    deliveries: int
    saga_id: str | None
    kind: str

    @property
    def body(self) -> bytes:
        return self.message.body

    def doc(self) -> dict[str, Any]:
        """As JSON: the body as JSON where it is JSON, else as text."""
        try:
            body: Any = json.loads(self.body)
            key = "body"
        except (UnicodeDecodeError, ValueError):
            body, key = self.body.decode(errors="replace"), "body_text"
        fields = ("message_id", "queue", "reason", "deliveries", "saga_id", "kind")
        return {**{name: getattr(self, name) for name in fields}, key: body}


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def read(message: AbstractIncomingMessage) -> DeadLetter:
    """What a dead letter says of itself: our headers, else the broker's own dead-lettering (`x-death`)."""
    headers = message.headers or {}
    deaths = headers.get("x-death")
    death: dict[str, Any] = deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}
    queue = headers.get("x-saga-queue") or death.get("queue") or headers.get("x-first-death-queue") or ""
    reason = headers.get(REASON) or death.get("reason") or headers.get("x-first-death-reason") or "unknown"
    deliveries = headers.get("x-saga-deliveries") or death.get("count") or 0
    saga_id = headers.get(SAGA_ID) or message.correlation_id
    saga_id = _text(saga_id) if saga_id and id_problem(_text(saga_id)) is None else None
    return DeadLetter(
        message=message,
        message_id=message.message_id or "",
        queue=_text(queue),
        reason=_text(reason),
        deliveries=int(deliveries) if isinstance(deliveries, int) else 0,
        saga_id=saga_id,
        kind=message.type or "",
    )


class Held:
    """Dead letters taken off the queue for a while: `letters`, and how many the queue held in all."""

    def __init__(self, names: Names, channel: aio_pika.abc.AbstractChannel, queue: AbstractQueue) -> None:
        self.names = names
        self.channel = channel
        self.queue = queue
        self.letters: list[DeadLetter] = []
        self.total = 0

    async def take(self, limit: int) -> None:
        while len(self.letters) < limit:
            message = await self.queue.get(no_ack=False, fail=False)
            if message is None:
                break
            self.letters.append(read(message))
        # Ready when we came; another reader's held letters are not counted.
        self.total = max(len(self.letters), self.queue.declaration_result.message_count or 0)

    def matching(self, message_ids: list[str]) -> list[DeadLetter]:
        return [letter for letter in self.letters if not message_ids or letter.message_id in message_ids]

    async def replay(self, letter: DeadLetter) -> str | None:
        """Put `letter` back on the queue it came from; None when done, else why not."""
        namespace = self.names.namespace + "."
        if not letter.queue.startswith(namespace):
            return f"its queue {letter.queue!r} is not one of namespace {self.names.namespace!r}"
        message = letter.message
        headers = {k: v for k, v in (message.headers or {}).items() if not k.startswith("x-saga-")}
        for key in _ABOUT_DEATH:
            headers.pop(key, None)
        again = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=message.message_id,
            correlation_id=message.correlation_id,
            reply_to=message.reply_to,
            type=message.type,
        )
        confirmed = await self.channel.default_exchange.publish(again, letter.queue, mandatory=True)
        if not isinstance(confirmed, Basic.Ack):
            return f"its queue {letter.queue!r} does not exist (any more)"
        await message.ack()
        return None

    async def purge(self, letter: DeadLetter) -> None:
        await letter.message.ack()


@contextlib.asynccontextmanager
async def held(settings: Settings, limit: int) -> AsyncIterator[Held]:
    """Up to `limit` dead letters, held; those neither replayed nor purged go back to the queue after."""
    names = settings.names
    connection = await connect_amqp(settings.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        # As the broker declares it, so that it need not exist yet; one declared
        # otherwise by an older version (classic) is used as it is.
        try:
            queue = await channel.declare_queue(names.dead_queue, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            channel = await connection.channel(publisher_confirms=True)
            queue = await channel.declare_queue(names.dead_queue, durable=True, arguments=names.dead_queue_arguments())
        holding = Held(names, channel, queue)
        try:
            await holding.take(limit)
            yield holding
        finally:
            for letter in holding.letters:
                if not letter.message.processed:
                    with contextlib.suppress(Exception):
                        await letter.message.nack(requeue=True)
    finally:
        await connection.close()

"""The broker: the namespaced topology, confirmed persistent publishes, manual-ack consumers, dead letters.

Declares the namespaced topology, publishes persistent messages with
publisher confirms, consumes with manual ack, and dead-letters with a
reason. Participants, the orchestrator and the client all speak to
RabbitMQ through it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar, cast

import aiormq
import msgspec
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    ExchangeType,
)
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import (
    AMQPError,
    ChannelAccessRefused,
    ChannelInvalidStateError,
    ChannelLockedResource,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
)
from pamqp.commands import Basic
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from participants.edge import observe, timing
from participants.edge.acks import Acks
from participants.edge.clip import clip
from participants.edge.connections import connect_amqp
from participants.edge.queue_type import QueueTypeMismatch, existing_type
from participants.edge.redeliveries import Redeliveries, counted
from participants.edge.settings import MiB
from statemachines.messages import MalformedMessage
from statemachines.names import DELIVERY_LIMIT, UNSETTLED_LIMIT, Names, id_problem

Handler = Callable[[AbstractIncomingMessage], Awaitable[None]]
REASON = "x-saga-reason"
SAGA_ID = "x-saga-id"
log = logging.getLogger("saga.amqp")
T = TypeVar("T")
# A service being away says nothing about the message: such errors are waited
# out in place rather than spending the message's delivery budget.
OUTAGES = (
    RedisConnectionError,
    RedisTimeoutError,
    AMQPError,
    ChannelInvalidStateError,  # a RuntimeError, not an AMQPError: the channel died under us
    ConnectionError,
    asyncio.TimeoutError,
)


class Rejected(Exception):
    """A message that can never be processed: it is dead-lettered with this reason (and its saga, where known)."""

    def __init__(self, reason: str, saga_id: str | None = None) -> None:
        super().__init__(reason)
        self.saga_id = saga_id


class Envelope(msgspec.Struct, array_like=True):
    """A message to publish, as it is kept in the outbox until confirmed."""

    exchange: str  # "" is the default exchange: routing_key names a queue
    routing_key: str
    body: bytes
    message_id: str
    correlation_id: str
    kind: str
    reply_to: str | None = None
    # AMQP headers: the W3C traceparent when tracing is on.
    headers: dict[str, str] | None = None


_envelopes = msgspec.msgpack.Decoder(list[Envelope])
_msgpack = msgspec.msgpack.Encoder()


def pack(envelopes: Sequence[Envelope]) -> bytes:
    return _msgpack.encode(list(envelopes))


def unpack(raw: bytes) -> list[Envelope]:
    return _envelopes.decode(raw)


def unpublishable(exc: BaseException) -> str | None:
    """Why a publish that raised `exc` can never succeed, or None if trying again may.

    The client refuses a message before sending it (ValueError: a routing
    key over AMQP's 255 bytes, a header it cannot encode), or the broker
    refuses it for what it is (PRECONDITION_FAILED: larger than its
    max_message_size); an outbox that could not even be read is the same.
    A nack, a closed channel or a lost connection may pass.
    """
    if isinstance(exc, ValueError | TypeError | OverflowError | msgspec.DecodeError | ChannelPreconditionFailed):
        return clip(f"{type(exc).__name__}: {exc}")
    return None


async def _exchange(channel: AbstractChannel, name: str, kind: ExchangeType) -> None:
    await channel.declare_exchange(name, kind, durable=True)


async def _bind(channel: AbstractChannel, queue: str, exchange: str, key: str) -> None:
    declared = await channel.declare_queue(queue, passive=True)
    await declared.bind(exchange, key)


def login_user(connection: object) -> str | None:
    """The user a connection logs in as (aiormq's PLAIN login: the URL's, or guest), None if not known here.

    A participant sets it as the AMQP user-id of its publishes, which RabbitMQ
    checks against the login: a reply cannot claim another user's, so the
    orchestrator can tell who sent it (`--authenticate-replies`).
    """
    url = getattr(connection, "url", None)
    if url is None or str(url.query.get("auth", "plain")).lower() != "plain":
        return None  # EXTERNAL (a certificate): the broker knows the user, we do not
    return str(url.user or "guest")


async def _queue(channel: AbstractChannel, name: str, arguments: dict[str, Any]) -> None:
    await channel.declare_queue(name, durable=True, arguments=arguments)


class Broker:
    def __init__(
        self,
        connection: AbstractRobustConnection,
        names: Names,
        max_message_bytes: int = MiB,
        redis: Redis | None = None,
    ) -> None:
        self.connection = connection
        self.names = names
        self.max_message_bytes = max_message_bytes
        # Where consumers count redeliveries the broker does not count (classic queues).
        self.redeliveries = Redeliveries(redis, names) if redis is not None else None
        # Dead letters by queue, for logs and metrics; the broker keeps the messages.
        self.dead_letters: Counter[str] = Counter()
        # Called after each dead letter, e.g. to count it where other processes see it.
        self.on_dead_letter: Callable[[str, str], Awaitable[None]] | None = None
        self._publisher: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._consumers: list[tuple[AbstractChannel, AbstractQueue, str]] = []
        self._stopping = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._acks = Acks()
        # Set on every publish: a participant's own login (`login_user`), so that its replies say who sent them.
        # None elsewhere: nobody reads the orchestrator's, and on its hot path the property is not free.
        self.user_id: str | None = None

    @classmethod
    async def open(cls, url: str, names: Names, max_message_bytes: int = MiB, redis: Redis | None = None) -> Broker:
        """Connect and declare the exchanges; `redis` is needed to consume classic queues (it counts redeliveries)."""
        broker = cls(await connect_amqp(url), names, max_message_bytes, redis)
        try:
            await broker._declare_exchanges()
        except BaseException:
            # A robust connection left open would go on reconnecting behind the caller's back.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(broker.connection.close(), 5.0)
            raise
        return broker

    async def _declare_exchanges(self) -> None:
        names = self.names
        self._publisher = channel = await self.connection.channel(publisher_confirms=True)
        self._exchanges[""] = channel.default_exchange
        for name, kind in (
            (names.replies_exchange, ExchangeType.DIRECT),
            (names.commands_exchange, ExchangeType.DIRECT),
            (names.events_exchange, ExchangeType.TOPIC),
            (names.dead_exchange, ExchangeType.TOPIC),
        ):
            passive = not await self._declarable(functools.partial(_exchange, name=name, kind=kind))
            self._exchanges[name] = await channel.declare_exchange(name, kind, durable=True, passive=passive)
        # One of another type is used as it is: nothing consumes it with a delivery count.
        dead = await self._declare(channel, names.dead_queue, names.dead_queue_arguments(), same_type=False)
        await self.bind(dead, names.dead_exchange, "#")

    async def _declarable(
        self,
        declare: Callable[[AbstractChannel], Awaitable[Any]],
        same_type: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """Whether `declare` succeeds, tried on a channel of its own.

        Whoever declares a queue or an exchange first wins: one that exists
        with other arguments (a participant declared it its own way) is
        used as it is, with a warning, instead of stopping this process.
        A user that may not declare it (a participant's least-privilege
        user, see `saga access`) uses it as the orchestrator declared it.
        But `same_type` is awaited first, to raise `QueueTypeMismatch` for a
        queue of another type: the processes would replicate differently.
        The broker closes the channel of a refused declare, hence the
        channel of its own.
        """
        channel = await self.connection.channel(publisher_confirms=False)
        try:
            await declare(channel)
        except ChannelPreconditionFailed as exc:
            if same_type is not None:
                await same_type()
            log.warning("%s; using it as it is", exc.args[0] if exc.args else exc)
            return False
        except ChannelAccessRefused as exc:
            log.info("%s; using it as it is", exc.args[0] if exc.args else exc)
            return False
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        return True

    async def _declare(
        self, channel: AbstractChannel, name: str, arguments: dict[str, Any], same_type: bool = True
    ) -> AbstractQueue:
        """Declare durable queue `name` on `channel` with `arguments`, or as it is if it exists with others.

        `same_type`: one of another queue type raises `QueueTypeMismatch`.
        """
        declare = functools.partial(_queue, name=name, arguments=arguments)
        check = functools.partial(self._same_type, name, arguments) if same_type else None
        if await self._declarable(declare, check):
            return await channel.declare_queue(name, durable=True, arguments=arguments)
        return await channel.declare_queue(name, passive=True)

    async def _same_type(self, name: str, arguments: dict[str, Any]) -> None:
        """Raise `QueueTypeMismatch` if existing queue `name`, which refused `arguments`, is of another type."""
        wanted = self.names.queue_type
        current = await existing_type(self.connection, name, arguments)
        if current is not None and current != wanted:
            raise QueueTypeMismatch(name, current, wanted)

    @property
    def channel(self) -> AbstractChannel:
        assert self._publisher is not None
        return self._publisher

    async def declare_queue(self, name: str, bind_to: tuple[str, str] | None = None) -> AbstractQueue:
        """A durable work queue of the namespace's type, dead-lettered, optionally bound to an exchange."""
        queue = await self._declare(self.channel, name, self.names.queue_arguments())
        if bind_to is not None:
            await self.bind(queue, *bind_to)
        return queue

    async def bind(self, queue: AbstractQueue, exchange: str, key: str) -> None:
        """Bind `queue`, unless this user may not: then the orchestrator's binding (or a definitions file's) serves."""
        if await self._declarable(functools.partial(_bind, queue=queue.name, exchange=exchange, key=key)):
            await queue.bind(exchange, key)

    async def declare_participant(self, participant: str) -> AbstractQueue:
        return await self.declare_queue(
            self.names.participant_queue(participant), (self.names.commands_exchange, participant)
        )

    async def consume(self, queue: str, handle: Handler, prefetch: int) -> None:
        """Consume `queue` with manual ack, `prefetch` messages in flight at once.

        `handle` returning means ack. It raising `Rejected` or
        `MalformedMessage`, or the body being over the size limit, means
        dead-letter with the reason. An outage is retried in place. Any other
        exception means redeliver, until the delivery limit dead-letters it.
        """
        if self.names.queue_type == "classic" and self.redeliveries is None:
            raise ValueError("consuming classic queues needs Broker.open(redis=...): it counts their redeliveries")
        channel = await self.connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=prefetch)
        # Declared (not merely looked up) on this channel, so that a robust
        # reconnect restores the queue and its consumer.
        declared = await self._declare(channel, queue, self.names.queue_arguments())
        tag = await declared.consume(self._guard(queue, handle), no_ack=False)
        self._consumers.append((channel, declared, tag))

    def _guard(self, queue: str, handle: Handler) -> Handler:
        async def guarded(message: AbstractIncomingMessage) -> None:
            timing.note(message.correlation_id or message.message_id, "taken")
            self._in_flight += 1
            self._idle.clear()
            self._acks.started(message)
            traced = observe.consuming(message.headers)
            try:
                await self._process(queue, handle, message)
            finally:
                observe.consumed(traced)
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle.set()

        return guarded

    async def _deliveries(self, queue: str, message: AbstractIncomingMessage) -> int:
        """How often `message` was delivered before (counted before it is handled: a crash still counts)."""
        if self.redeliveries is None:
            return counted(message) or int(bool(message.redelivered))
        return await self._patiently(lambda: self.redeliveries.count(queue, message))  # type: ignore[union-attr]

    async def _process(self, queue: str, handle: Handler, message: AbstractIncomingMessage) -> None:
        saga_id = None
        kind = "rejected"
        deliveries = 0
        try:
            deliveries = await self._deliveries(queue, message)
            if deliveries >= UNSETTLED_LIMIT:
                # Never failed, never acked: what handles it dies on it (or cannot finish it).
                kind = "failed"
                raise Rejected(f"delivered {deliveries + 1} times and never settled: its consumer may crash on it")
            if len(message.body) > self.max_message_bytes:
                kind = "too_large"
                raise Rejected(f"message of {len(message.body)} bytes exceeds the limit of {self.max_message_bytes}")
            await self._patiently(lambda: handle(message))
            self._acks.finished(message)
            return
        except (Rejected, MalformedMessage) as exc:
            reason = str(exc)
            saga_id = getattr(exc, "saga_id", None)
            # A refusal that answers a message which did not decode is still a malformed one.
            malformed = isinstance(exc, MalformedMessage) or isinstance(exc.__context__, MalformedMessage)
            kind = "malformed" if malformed else kind
        except Exception as exc:
            if deliveries + 1 < DELIVERY_LIMIT:
                log.warning("%s: processing failed, the message will be redelivered: %s", queue, clip(exc))
                with contextlib.suppress(Exception):
                    await message.nack(requeue=True)
                self._acks.abandoned(message)
                return
            reason = f"processing failed {DELIVERY_LIMIT} times, the last time with {exc!r}"
            kind = "failed"
        log.warning("%s: dead-lettering message %s: %s", queue, clip(message.message_id), clip(reason))
        self.dead_letters[queue] += 1
        observe.dead_lettered(queue, kind)
        with contextlib.suppress(Exception):
            await self.dead_letter(message, queue, reason, saga_id, deliveries)
            if self.on_dead_letter is not None:
                await self.on_dead_letter(queue, reason)

    async def _patiently(self, work: Callable[[], Awaitable[T]]) -> T:
        delay = 0.1
        while True:
            try:
                return await work()
            except OUTAGES as exc:
                if self._stopping:
                    raise
                log.warning("a service is away (%r); trying again in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def stop_consuming(self, drain_timeout: float = 30.0) -> None:
        """Stop new deliveries, finish those in flight, then close the consumer channels.

        Whatever is still unacked when the channels close goes back to its queue.
        """
        self._stopping = True
        consumers, self._consumers = self._consumers, []
        for _, queue, tag in consumers:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._idle.wait(), drain_timeout)
        await self._acks.flush()
        for channel, _, _ in consumers:
            with contextlib.suppress(Exception):
                await channel.close()

    async def publish(self, envelopes: Sequence[Envelope]) -> None:
        """Publish persistently and wait for every broker confirmation."""
        if envelopes:
            timing.note(envelopes[0].correlation_id, "published")
        if len(envelopes) == 1:
            await self._publish(envelopes[0])
        elif envelopes:
            await asyncio.gather(*(self._publish(e) for e in envelopes))

    async def notify(self, envelope: Envelope) -> bool:
        """Publish a best-effort notice (mandatory); False if no queue was bound for it, or it could not go.

        Confirmed like the rest (the channel confirms every publish), but
        nothing is kept to send it again: a failure is only logged.
        """
        try:
            return await self._publish(envelope, mandatory=True)
        except Exception as exc:
            log.debug("notice %s was not published: %r", envelope.routing_key, exc)
            return False

    async def _publish(
        self, envelope: Envelope, headers: dict[str, Any] | None = None, mandatory: bool = False
    ) -> bool:
        # Straight to aiormq: an aio_pika.Message per publish costs more than
        # the rest of the publish; the robust channel still reconnects.
        # aiormq's abstract channel does not declare wait=; its channel does.
        channel = cast(aiormq.Channel, await self.channel.get_underlay_channel())
        extra: dict[str, Any] | None = headers or envelope.headers
        properties = Basic.Properties(
            content_type="application/json",
            delivery_mode=2,  # persistent
            message_id=envelope.message_id,
            correlation_id=envelope.correlation_id,
            reply_to=envelope.reply_to,
            message_type=envelope.kind,
            headers=extra,
            user_id=self.user_id,
        )
        # A nack from the broker raises aiormq's DeliveryError. wait=False:
        # the confirm, awaited here, comes after the write anyway; waiting for
        # the write as well holds the channel's lock until the frame is
        # drained, which makes every publish on the channel a send of its own.
        # A mandatory publish that no queue takes comes back (basic.return)
        # before its confirm: aiormq then answers with the returned message.
        confirmed = await channel.basic_publish(
            envelope.body,
            exchange=envelope.exchange,
            routing_key=envelope.routing_key,
            properties=properties,
            mandatory=mandatory,
            wait=False,
        )
        return not isinstance(confirmed, DeliveredMessage)

    async def dead_letter(
        self,
        message: AbstractIncomingMessage,
        queue: str,
        reason: str,
        saga_id: str | None = None,
        deliveries: int | None = None,
    ) -> None:
        """Move `message` to the dead-letter queue with `reason` and its saga (where known), then ack it.

        `deliveries`: how often it was delivered before, where the consumer counted it.
        """
        envelope = Envelope(
            exchange=self.names.dead_exchange,
            routing_key=queue,
            body=message.body,
            message_id=message.message_id or "",
            correlation_id=message.correlation_id or "",
            kind=message.type or "",
        )
        headers: dict[str, Any] = {
            REASON: reason[:1000],
            "x-saga-queue": queue,
            "x-saga-deliveries": ((counted(message) or 0) if deliveries is None else deliveries) + 1,
        }
        # Our messages carry their saga id as the correlation id.
        saga_id = saga_id or message.correlation_id
        if saga_id and id_problem(saga_id) is None:
            headers[SAGA_ID] = saga_id
        await self._publish(envelope, headers)
        self._acks.finished(message)

    async def exclusive_elsewhere(self, queue: str) -> bool:
        """Whether `queue` exists as an exclusive queue of another connection (the broker refuses us access)."""
        return await self.queue_state(queue) == "exclusive"

    async def queue_state(self, queue: str) -> Literal["exclusive", "missing", "shared"]:
        """`exclusive`: another connection's exclusive queue; `missing`: no such queue; `shared`: any other."""
        channel = await self.connection.channel(publisher_confirms=False)
        try:
            await channel.declare_queue(queue, passive=True)
        except ChannelLockedResource:
            return "exclusive"
        except ChannelNotFoundEntity:
            return "missing"
        finally:
            with contextlib.suppress(Exception):
                await channel.close()
        return "shared"

    async def close(self) -> None:
        await self.stop_consuming(drain_timeout=0)
        await self.connection.close()

"""The orchestrator process: consumers, the deadline loop, the outbox sweep.

It consumes `<ns>.start`, `<ns>.signals` and the shared `<ns>.replies` with manual ack, so
any number of orchestrator processes can run side by side. On SIGTERM or
SIGINT it stops taking deliveries, finishes those in flight, and closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from aio_pika.abc import AbstractIncomingMessage
from redis.asyncio import Redis

from orchestrator.access import sender_problem
from orchestrator.admission import DEFAULT_MAX_IN_FLIGHT, Admission
from orchestrator.engine import Engine
from orchestrator.leases import Leases
from orchestrator.presence import Presence
from orchestrator.refusals import About, Refusals, about
from orchestrator.registry import Registry, UnknownSaga
from orchestrator.signals import Signals
from orchestrator.starts import Starts
from orchestrator.store import RedisStore
from participants.edge import observe, timing
from participants.edge.amqp import Broker, Rejected
from participants.edge.connections import connect_redis
from participants.edge.process import serve
from participants.edge.settings import Settings
from statemachines.messages import MalformedMessage, Reply, decode

log = logging.getLogger("saga.orchestrator")


# How long a confirmed outbox waits to be cleared: most are replaced by their saga's next commit meanwhile.
CLEAR_AFTER = 0.5


@dataclass
class Tuning:
    prefetch: int = 256
    # How often the deadline index is polled, and for how long a claim holds.
    tick: float = 0.05
    lease: float = 30.0
    claim_limit: int = 512
    # An outbox unconfirmed for this long is re-published by the sweep.
    sweep_every: float = 5.0
    sweep_grace: float = 5.0
    drain_timeout: float = 30.0
    # How long a bucket's lease lasts: a dead orchestrator's buckets are swept by another after this.
    bucket_lease: float = 10.0
    # Sagas in flight in the namespace beyond which starts wait in the start queue.
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    # A reply due from a participant with no consumer is waited for this long before it times out (0: off).
    hold_seconds: float = 0.0
    # A reply is taken only if its AMQP user-id (checked by the broker) is its participant's user.
    authenticate_replies: bool = False


class Orchestrator:
    def __init__(self, settings: Settings, registry: Registry, tuning: Tuning | None = None) -> None:
        self.settings = settings
        self.registry = registry
        self.tuning = tuning or Tuning()
        self.names = settings.names
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.engine: Engine | None = None
        self.broker: Broker | None = None
        self.refusals: Refusals | None = None
        self.starts: Starts | None = None
        self.leases: Leases | None = None
        self.signals: Signals | None = None
        self.admission: Admission | None = None
        self._redis: Redis | None = None

    async def start(self) -> None:
        names = self.names
        self._redis = redis = await connect_redis(self.settings.redis_url)
        settings = self.settings
        store = RedisStore(redis, names, settings.retention_seconds, settings.redis_replicas, settings.redis_wait_ms)
        await store.connect()
        await store.check_layout()
        self.broker = broker = await Broker.open(settings.amqp_url, names, settings.max_message_bytes, redis)
        queues = [names.start_queue, names.reply_queue, names.signals_queue]
        for queue in queues:
            # Participants reply through the replies exchange (see `Names.replies_exchange`).
            bound = (names.replies_exchange, queue) if queue == names.reply_queue else None
            await broker.declare_queue(queue, bound)
        for participant in sorted(self.registry.participants):
            queues.append((await broker.declare_participant(participant)).name)
        await redis.sadd(names.queues_key, *queues)
        self.engine = Engine(store, broker, self.registry, names)
        # Well within the sweep's grace, so that the sweep never re-publishes what waits to be cleared.
        self.engine.clear_after = min(CLEAR_AFTER, self.tuning.sweep_grace / 4)
        self.refusals = Refusals(self.engine)
        if self.tuning.hold_seconds > 0:
            self.engine.presence = Presence(broker)
            self.engine.hold_seconds = self.tuning.hold_seconds
        self.admission = Admission(redis, names, self.tuning.max_in_flight)
        self.starts = Starts(self.engine, self.registry, self.refusals, self.admission)
        self.signals = Signals(self.engine, self.refusals)
        self.leases = Leases(store, self.tuning.bucket_lease)
        await self.leases.heartbeat()
        self._tasks = [
            asyncio.create_task(self._heartbeats(), name="leases"),
            asyncio.create_task(self.engine.clear_confirmed(), name="clear-outboxes"),
            asyncio.create_task(self._deadlines(), name="deadlines"),
            asyncio.create_task(self._sweeps(), name="sweeps"),
            asyncio.create_task(observe.poll(redis, names), name="metrics"),
        ]
        observe.serving(redis, names)
        timing.begin(redis, names, timing.ORCHESTRATOR)
        broker.on_dead_letter = lambda queue, _: store.count(f"dead_letters:{queue}")
        # No more starts held waiting for room than the limit: the rest stay ready in the queue.
        await broker.consume(names.start_queue, self._on_start, min(self.tuning.prefetch, self.tuning.max_in_flight))
        await broker.consume(names.reply_queue, self._on_reply, self.tuning.prefetch)
        await broker.consume(names.signals_queue, self._on_signal, self.tuning.prefetch)
        log.info(
            "orchestrator up: namespace %r, sagas %s", names.namespace, sorted({s.name for s in self.registry.sagas})
        )
        if self.tuning.authenticate_replies:
            log.info("replies are taken only from their participant's RabbitMQ user (--authenticate-replies)")

    async def run(self) -> None:
        """Start, serve until SIGTERM/SIGINT or `stop()`, then drain and close."""
        settings = self.settings
        await serve(
            self.start,
            self.close,
            self._stopping,
            abandon=self._abandon,
            startup_wait=settings.startup_wait_seconds,
            amqp_url=settings.amqp_url,
        )

    async def _abandon(self) -> None:
        """Close what a start that failed half-way opened, so that the next try starts clean."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        broker, redis = self.broker, self._redis
        self.broker = self._redis = self.engine = None
        self.admission = self.starts = self.signals = self.leases = self.refusals = None
        if broker is not None:
            with contextlib.suppress(Exception):
                await broker.connection.close()
        if redis is not None:
            with contextlib.suppress(Exception):
                await redis.aclose()

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        """Stop taking deliveries, finish those in flight, then close connections."""
        self._stopping.set()
        if self.admission is not None:
            self.admission.stop()
        if self.broker is not None:
            await self.broker.stop_consuming(self.tuning.drain_timeout)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.leases is not None:
            with contextlib.suppress(Exception):  # Redis away: the leases run out on their own
                await self.leases.release()
        await timing.end()
        if self.engine is not None:
            await self.engine.close()
        if self.broker is not None:
            await self.broker.close()
        log.info("orchestrator stopped")

    async def _on_start(self, message: AbstractIncomingMessage) -> None:
        assert self.starts is not None
        await self.starts.take(message)

    async def _on_signal(self, message: AbstractIncomingMessage) -> None:
        assert self.signals is not None
        await self.signals.take(message)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        assert self.engine is not None and self.refusals is not None
        try:
            reply = decode(Reply, message.body)
        except MalformedMessage as exc:
            raise await self.refusals.reply(about(message.body), str(exc)) from None
        if self.tuning.authenticate_replies:
            problem = sender_problem(self.names, reply.participant, message.user_id)
            if problem is not None:
                sender = About(saga_id=reply.saga_id, participant=reply.participant, in_reply_to=reply.in_reply_to)
                await self.refusals.reply(sender, problem)
                # Dead-lettered with the words its saga's history has, as a reply decide() refuses is.
                raise Rejected(f"reply from {reply.participant} refused: {problem}", reply.saga_id)
        try:
            decision = await self.engine.apply(reply.saga_id, reply)
        except UnknownSaga as exc:
            raise Rejected(str(exc), reply.saga_id) from None
        if decision.instance is None:
            raise Rejected(f"reply {reply.message_id} is for an unknown saga {reply.saga_id!r}", reply.saga_id)
        if decision.reply_refusal is not None:
            # Its saga's history says why; the dead letter tells the participant's author.
            await self.engine.store.count("refused_replies")
            raise Rejected(decision.reply_refusal, reply.saga_id)

    async def _heartbeats(self) -> None:
        assert self.leases is not None
        while not self._stopping.is_set():
            await asyncio.sleep(self.leases.every)
            try:
                await self.leases.heartbeat()
            except Exception as exc:
                # The claims check the lease themselves: one that ran out meanwhile claims nothing.
                log.warning("bucket leases: %r", exc)

    async def _deadlines(self) -> None:
        assert self.engine is not None and self.leases is not None
        tuning = self.tuning
        leases = self.leases
        while not self._stopping.is_set():
            try:
                claimed = await self.engine.fire_due(tuning.lease, tuning.claim_limit, leases.held, leases.me)
            except Exception as exc:
                log.warning("deadline loop: %r", exc)
                await asyncio.sleep(1.0)  # Redis is away: do not spin
                continue
            if claimed < tuning.claim_limit:
                await asyncio.sleep(tuning.tick)

    async def _sweeps(self) -> None:
        assert self.engine is not None and self.leases is not None
        leases = self.leases
        while not self._stopping.is_set():
            try:
                await self.engine.sweep(self.tuning.sweep_grace, leases.held, leases.me)
            except Exception as exc:
                log.warning("outbox sweep: %r", exc)
            await asyncio.sleep(self.tuning.sweep_every)

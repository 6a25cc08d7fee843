"""The participant worker: async handlers by command name, run as a process.

    worker = Worker("inventory")

    @worker.handler("reserve_stock")
    async def reserve(ctx: Context) -> dict:
        ...
        raise Failure("out_of_stock", "sku-1 has 0 left")   # a failure reply

What the worker guarantees, so that handlers stay simple:
- A repeated command (same message_id) gets the original reply again; the
  handler is not called.
- Per saga step, a succeeded action is never run twice: a retry after a
  timeout gets the first success back.
- A compensation that arrives before its action (or after it failed)
  succeeds without calling the handler, and the late action is refused.
- An action whose command arrives past its `deadline` is not started: the
  reply is a failure `deadline_exceeded`, which the orchestrator retries
  like a timeout. A compensation runs whatever its deadline.
- `Failure` becomes a failure reply with its code. Any other exception is
  retried with backoff; if it persists the reply is a failure
  `outcome_unknown`, which the orchestrator treats as a timeout: it retries,
  and compensates the step should the saga compensate. So a compensation
  handler must also undo an action that crashed half-way (or never ran).
- What cannot be decoded is dead-lettered with the reason.

A crash in the middle of a handler can run it again on redelivery, so a
handler makes its own writes idempotent by `ctx.key` (see the examples).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from aio_pika.abc import AbstractIncomingMessage
from redis.asyncio import Redis
from redis.exceptions import TimeoutError as RedisTimeoutError

from participants.edge import observe, timing
from participants.edge.amqp import Broker, Envelope, login_user
from participants.edge.batching import batcher
from participants.edge.clip import clip
from participants.edge.connections import connect_redis
from participants.edge.process import serve
from participants.edge.scripts import Scripts
from participants.edge.settings import Settings
from statemachines.messages import (
    COMPENSATED,
    DEADLINE_EXCEEDED,
    OUTCOME_UNKNOWN,
    UNKNOWN_COMMAND,
    Command,
    ErrorInfo,
    Reply,
    decode,
    encode,
)
from statemachines.names import Names

log = logging.getLogger("saga.participant")
# How much of a handler's exception the reply (and so `saga show`) carries.
ERROR_LIMIT = 1000
_json = msgspec.json.Encoder()
_data = msgspec.json.Decoder(dict[str, Any])


class Failure(Exception):
    """Raise in a handler to refuse a command; the saga receives `code` and `message`."""

    def __init__(self, code: str, message: str = "") -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.message = message


@dataclass
class Context:
    """What a handler gets: the command, and the worker's Redis for its own state."""

    command: Command
    redis: Redis
    names: Names
    participant: str

    @property
    def payload(self) -> dict[str, Any]:
        return self.command.payload

    @property
    def saga_id(self) -> str:
        return self.command.saga_id

    @property
    def key(self) -> str:
        """An idempotency key for this saga step: the same for every attempt."""
        return f"{self.command.saga_id}:{self.command.step}"

    def state_key(self, *parts: str) -> str:
        """A namespaced Redis key for the participant's own state."""
        return self.names.participant_key(self.participant, *parts)


Handler = Callable[[Context], Awaitable[Mapping[str, Any] | None]]


class Worker:
    def __init__(
        self,
        name: str,
        *,
        prefetch: int = 64,
        transient_attempts: int = 3,
        transient_backoff: float = 0.1,
        lock_seconds: float = 15.0,
        retention_seconds: int = 7 * 24 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.prefetch = prefetch
        self.transient_attempts = transient_attempts
        self.transient_backoff = transient_backoff
        self.lock_seconds = lock_seconds
        self.retention_seconds = retention_seconds
        # Deadlines are the orchestrator's epoch seconds: clocks are assumed in sync (NTP).
        self.clock = clock
        self.handlers: dict[str, Handler] = {}
        self.redis: Redis | None = None
        self.broker: Broker | None = None
        self.names = Names()
        self.replicas, self.wait_ms = 0, 1000
        self._scripts = Scripts(Path(__file__).parent / "lua")
        self._stopping = asyncio.Event()
        # Called once connected, before consuming: seed state, open pools.
        self.on_start: Callable[[Worker], Awaitable[None]] | None = None

    def handler(self, command: str) -> Callable[[Handler], Handler]:
        """Register the decorated coroutine for `command` (an action or a compensation)."""

        def register(fn: Handler) -> Handler:
            if command in self.handlers:
                raise ValueError(f"participant {self.name!r} already handles {command!r}")
            self.handlers[command] = fn
            return fn

        return register

    async def start(self, settings: Settings) -> None:
        self.names = names = settings.names
        self.replicas, self.wait_ms = settings.redis_replicas, settings.redis_wait_ms
        self.redis = await connect_redis(settings.redis_url)
        await self._scripts.load(self.redis)
        self.broker = await Broker.open(settings.amqp_url, names, settings.max_message_bytes, self.redis)
        # Its replies carry its login as their user-id (the broker checks it): --authenticate-replies reads it.
        self.broker.user_id = login_user(self.broker.connection)
        self.broker.on_dead_letter = self._dead_lettered
        queue = await self.broker.declare_participant(self.name)
        await self.redis.sadd(names.queues_key, queue.name)
        if self.on_start is not None:
            await self.on_start(self)
        timing.begin(self.redis, names, self.name)
        await self.broker.consume(queue.name, self.handle, self.prefetch)
        log.info("participant %r up: queue %s, commands %s", self.name, queue.name, sorted(self.handlers))

    async def run(self, settings: Settings) -> None:
        """Serve until SIGTERM/SIGINT or `stop()`, then drain and close."""
        await serve(
            lambda: self.start(settings),
            self.close,
            self._stopping,
            abandon=self._abandon,
            startup_wait=settings.startup_wait_seconds,
            amqp_url=settings.amqp_url,
        )

    async def _abandon(self) -> None:
        """Close what a start that failed half-way opened, so that the next try starts clean."""
        broker, redis = self.broker, self.redis
        self.broker = self.redis = None
        if broker is not None:
            with contextlib.suppress(Exception):
                await broker.connection.close()
        if redis is not None:
            with contextlib.suppress(Exception):
                await redis.aclose()

    def stop(self) -> None:
        self._stopping.set()

    async def close(self) -> None:
        await timing.end()
        if self.broker is not None:
            await self.broker.stop_consuming()
            await self.broker.close()
            self.broker = None
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None

    async def _dead_lettered(self, queue: str, reason: str) -> None:
        """Count it where the orchestrator counts its own: `<ns>:counters`, `dead_letters:<queue>`."""
        assert self.redis is not None
        await self.redis.hincrby(self.names.counters_key, f"dead_letters:{queue}", 1)

    async def handle(self, message: AbstractIncomingMessage) -> None:
        """Answer one command; returning means the message may be acked."""
        assert self.redis is not None and self.broker is not None
        command = decode(Command, message.body)
        observe.about(command.saga_id, command.saga_type, command.step, command.attempt)
        tag = f"{{{command.saga_id}}}"
        keys = (
            self.names.participant_key(self.name, "reply", tag, command.message_id),
            self.names.participant_key(self.name, "lock", tag, command.step),
            self.names.participant_key(self.name, "step", tag, command.step),
        )
        # Stable while this delivery is retried in place, so it finds its own lock.
        token = f"{command.message_id}:{message.delivery_tag or uuid.uuid4().hex}"
        deadline = asyncio.get_running_loop().time() + self.lock_seconds + 1
        while True:
            begun = await self._scripts.call(
                self.redis, "begin", keys, [token, int(self.lock_seconds * 1000), command.action]
            )
            if begun[0] == b"cached":
                observe.duplicate(self.name, command, command.command in self.handlers)
                await self._send(command, begun[1])
                return
            if begun[0] == b"run":
                break
            # Another delivery of this step is running, or one died holding the lock.
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"step {command.step} of saga {command.saga_id} stayed locked")
            await asyncio.sleep(0.05)
        record = {bytes(k).decode(): bytes(v).decode() for k, v in zip(begun[1::2], begun[2::2], strict=True)}
        try:
            with observe.handling(self.name, command, command.command in self.handlers) as handling:
                reply, fields = await self._answer(command, record)
                handling.answered(reply)
            body = encode(reply)
        except BaseException:
            # Redelivered, this command must not wait out a lock nobody holds any more.
            with contextlib.suppress(Exception):
                await self._scripts.call(self.redis, "release", keys[1:2], [token])
            raise
        args: list[Any] = [token, self.retention_seconds, body]
        for field, value in fields.items():
            args += [field, value]
        await self._scripts.call(self.redis, "finish", keys, args)
        await self._send(command, body)

    async def _answer(self, command: Command, record: dict[str, str]) -> tuple[Reply, dict[str, str]]:
        """The reply to `command`, and what to record of the step."""
        if command.action == "do":
            if record.get("compensated"):
                return self._reply(command, ErrorInfo(COMPENSATED, "the step was compensated already")), {}
            if record.get("do") == "success":
                return self._reply(command, _data.decode(record.get("data", "{}"))), {}
            late = self.clock() - command.deadline if command.deadline is not None else 0.0
            if late > 0:
                # The orchestrator has stopped waiting: not starting is the one answer that leaves no doubt.
                why = f"arrived {late:.3f}s past its deadline; not started"
                # `begin` marked the step started: put back what was known before, or that nothing happened.
                return self._reply(command, ErrorInfo(DEADLINE_EXCEEDED, why)), {"do": record.get("do") or "failure"}
            outcome = await self._call(command)
            if isinstance(outcome, ErrorInfo):
                # A Failure means nothing happened; a crashing handler may have done part of its work.
                # A run before this one was cut short (`started`) or crashed: it may have done part of its work.
                unknown = outcome.code == OUTCOME_UNKNOWN or record.get("do") in ("unknown", "started")
                return self._reply(command, outcome), {"do": "unknown" if unknown else "failure"}
            return self._reply(command, outcome), {"do": "success", "data": _json.encode(outcome).decode()}
        if record.get("compensated"):
            return self._reply(command, {}), {}
        if record.get("do") not in ("success", "unknown", "started"):
            # Nothing happened to undo; recording it refuses the action should it arrive late.
            return self._reply(command, {}), {"compensated": "1"}
        outcome = await self._call(command)
        if isinstance(outcome, ErrorInfo):
            return self._reply(command, outcome), {}
        return self._reply(command, outcome), {"compensated": "1"}

    async def _call(self, command: Command) -> dict[str, Any] | ErrorInfo:
        handler = self.handlers.get(command.command)
        if handler is None:
            return ErrorInfo(UNKNOWN_COMMAND, f"participant {self.name!r} has no handler for {command.command!r}")
        assert self.redis is not None
        ctx = Context(command, self.redis, self.names, self.name)
        delay = self.transient_backoff
        for attempt in range(1, self.transient_attempts + 1):
            try:
                return dict(await handler(ctx) or {})
            except Failure as failure:
                return ErrorInfo(failure.code, failure.message)
            except Exception as exc:
                what = clip(f"{type(exc).__name__}: {exc}", ERROR_LIMIT)
                where = f"{self.name} {command.command} (saga {command.saga_id}, step {command.step})"
                if attempt == self.transient_attempts:
                    # One traceback per failure, not one per attempt: the bug, once, where it happened.
                    log.error("%s raised %d times, replying %s", where, attempt, OUTCOME_UNKNOWN, exc_info=exc)
                    return ErrorInfo(OUTCOME_UNKNOWN, what)
                log.warning("%s attempt %d raised %s; trying again in %.1fs", where, attempt, clip(what), delay)
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    def _reply(self, command: Command, outcome: dict[str, Any] | ErrorInfo) -> Reply:
        failed = isinstance(outcome, ErrorInfo)
        return Reply(
            message_id=f"{command.message_id}/{self.name}",
            in_reply_to=command.message_id,
            saga_id=command.saga_id,
            step=command.step,
            action=command.action,
            outcome="failure" if failed else "success",
            data={} if isinstance(outcome, ErrorInfo) else outcome,
            error=outcome if isinstance(outcome, ErrorInfo) else None,
            participant=self.name,
        )

    async def _send(self, command: Command, body: bytes) -> None:
        assert self.broker is not None and self.redis is not None
        if self.replicas:
            # SAGA_REDIS_REPLICAS: what the step did (its record, and the books its handler kept through
            # this client's scripts) is on the replicas before the reply says it was done.
            acked = await batcher(self.redis).wait_replicas(self.replicas, self.wait_ms)
            if acked < self.replicas:  # an outage to the consumer: this delivery is retried in place
                raise RedisTimeoutError(f"{acked} of {self.replicas} replicas acknowledged within {self.wait_ms} ms")
        message_id = f"{command.message_id}/{self.name}"
        headers = observe.reply_headers()
        # Through the replies exchange, which a least-privilege user may write to (not the default one).
        exchange = self.names.replies_exchange if command.reply_to == self.names.reply_queue else ""
        await self.broker.publish(
            [Envelope(exchange, command.reply_to, body, message_id, command.saga_id, "Reply", None, headers)]
        )

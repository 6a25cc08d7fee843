"""Start sagas from Python, and wait for their outcome if asked; signal sagas that wait for an outside event.

async with await SagaClient.connect(Settings.from_env()) as client:
    saga_id = await client.start("order", data)
    outcome = await client.start("order", data, wait=True)   # a SagaEvent
    result = await client.signal(saga_id, "bank_confirmed", {"ref": "b-1"}, wait=True)   # a SignalResult
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Collection, Mapping
from types import TracebackType
from typing import Any, Literal, overload

import msgspec
from aio_pika.abc import AbstractIncomingMessage, ExchangeType

from orchestrator.store import RedisStore
from participants.edge import observe
from participants.edge.amqp import Broker, Envelope
from participants.edge.connections import connect_redis
from participants.edge.settings import Settings
from statemachines.instance import SagaInstance, outcome_of
from statemachines.messages import (
    REJECTED,
    TERMINAL,
    ErrorInfo,
    MalformedMessage,
    SagaEvent,
    SignalResult,
    SignalSaga,
    StartSaga,
    decode,
    encode,
    start_digest,
)
from statemachines.names import id_problem, name_problem

# Every event a saga sends: the first one says an orchestrator took the start.
LIFECYCLE = ("running", "compensating", "completed", "compensated", "stuck", REJECTED)
OUTCOMES = (*sorted(TERMINAL), REJECTED)
_start = msgspec.json.Decoder(StartSaga)


class SagaRejected(Exception):
    """The start was refused, by this client or by the orchestrator; `reason` says why, `event` is the refusal."""

    def __init__(self, event: SagaEvent) -> None:
        self.event = event
        self.code = event.error.code if event.error else "rejected"
        self.reason = event.error.message if event.error else "rejected"
        super().__init__(self.reason)


class SagaConflict(SagaRejected):
    """The saga id exists already, started with other data (or as another type): an idempotency key reused."""


class SignalRefused(Exception):
    """A signal was refused, by this client or by the orchestrator; `code` and `reason` say why."""

    def __init__(self, result: SignalResult) -> None:
        self.result = result
        self.code = result.error.code if result.error else "refused"
        self.reason = result.error.message if result.error else "refused"
        super().__init__(f"{self.code}: {self.reason}")


def refused(event: SagaEvent) -> SagaRejected:
    return SagaConflict(event) if event.error is not None and event.error.code == "conflict" else SagaRejected(event)


class SagaClient:
    def __init__(self, broker: Broker, store: RedisStore) -> None:
        self.broker = broker
        self.store = store
        self.names = store.names

    @classmethod
    async def connect(cls, settings: Settings) -> SagaClient:
        redis = await connect_redis(settings.redis_url)
        try:
            broker = await Broker.open(settings.amqp_url, settings.names)
            await broker.declare_queue(settings.names.start_queue)
            # A signal sent before any orchestrator ran waits in its queue rather than vanishing.
            await broker.declare_queue(settings.names.signals_queue)
        except BaseException:
            await redis.aclose()
            raise
        return cls(broker, RedisStore(redis, settings.names))

    async def close(self) -> None:
        await self.broker.close()
        await self.store.redis.aclose()

    async def __aenter__(self) -> SagaClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @overload
    async def start(
        self,
        saga_type: str,
        data: Mapping[str, Any] | None,
        saga_id: str | None = None,
        wait: Literal[False] = False,
        timeout: float = 60.0,
    ) -> str: ...

    @overload
    async def start(
        self,
        saga_type: str,
        data: Mapping[str, Any] | None,
        saga_id: str | None = None,
        *,
        wait: Literal[True],
        timeout: float = 60.0,
    ) -> SagaEvent: ...

    async def start(
        self,
        saga_type: str,
        data: Mapping[str, Any] | None,
        saga_id: str | None = None,
        wait: bool = False,
        timeout: float = 60.0,
    ) -> str | SagaEvent:
        """Start a saga and return its id; with `wait`, return its final event instead.

        The saga id is an idempotency key: the same start again is the same
        saga. A start that is refused raises SagaRejected with the reason: at
        once if this client can tell (a type or id out of bounds, data that
        is not JSON), else as soon as the orchestrator answers (an unknown
        type, data that does not fit), with `wait`; an id taken by other data
        raises SagaConflict. A wait that outlasts `timeout` seconds raises
        TimeoutError.
        """
        saga_id = saga_id or str(uuid.uuid4())
        envelope, digest = self._start(saga_type, data, saga_id)
        if not wait:
            await self.broker.publish([envelope])
            return saga_id
        try:
            async with asyncio.timeout(timeout):
                return await self._start_and_wait(saga_type, saga_id, envelope, digest, OUTCOMES)
        except TimeoutError:
            raise TimeoutError(f"saga {saga_id!r} did not end within {timeout:g}s") from None

    async def submit(
        self, saga_type: str, data: Mapping[str, Any] | None, saga_id: str | None = None, timeout: float = 5.0
    ) -> tuple[str, SagaEvent | None]:
        """Start a saga and wait until an orchestrator has taken it: (saga id, its first event).

        The event is None when no orchestrator took the start within
        `timeout` seconds (it waits in the start queue); a refusal raises
        SagaRejected, as `start` does.
        """
        saga_id = saga_id or str(uuid.uuid4())
        envelope, digest = self._start(saga_type, data, saga_id)
        try:
            async with asyncio.timeout(timeout):
                return saga_id, await self._start_and_wait(saga_type, saga_id, envelope, digest, LIFECYCLE)
        except TimeoutError:
            return saga_id, None

    def _start(self, saga_type: str, data: Mapping[str, Any] | None, saga_id: str) -> tuple[Envelope, str]:
        """The start's envelope and digest; what this client can tell is wrong is refused before anything is sent."""
        problem = name_problem(saga_type) or id_problem(saga_id)
        body = b""
        if problem is None:
            try:
                start = StartSaga(saga_type=saga_type, data=None if data is None else dict(data), saga_id=saga_id)
                body = encode(start)
            except (TypeError, ValueError, msgspec.EncodeError) as exc:
                problem = f"the saga data is not JSON: {exc}"
        if problem is not None:
            error = ErrorInfo("invalid_start", problem)
            raise SagaRejected(
                SagaEvent(
                    saga_id=saga_id, saga_type=saga_type, status=REJECTED, state="new", at=time.time(), error=error
                )
            )
        # Of what the orchestrator will read, so that both sides digest the same JSON.
        digest = start_digest(saga_type, _start.decode(body).data)
        headers = observe.start_headers(saga_type, saga_id)
        return Envelope("", self.names.start_queue, body, saga_id, saga_id, "StartSaga", None, headers), digest

    async def _start_and_wait(
        self, saga_type: str, saga_id: str, envelope: Envelope, digest: str, until: Collection[str]
    ) -> SagaEvent:
        outcome: asyncio.Future[SagaEvent] = asyncio.get_running_loop().create_future()

        async def on_event(message: AbstractIncomingMessage) -> None:
            event = decode(SagaEvent, message.body)
            # The bindings are exact, and the event must say it is this saga's too.
            if event.saga_id == saga_id and event.status in until and not outcome.done():
                outcome.set_result(event)

        # Bound before the start is published, so no event can slip past.
        channel = await self.broker.connection.channel()
        try:
            exchange = await channel.declare_exchange(self.names.events_exchange, ExchangeType.TOPIC, durable=True)
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            for status in until:
                await queue.bind(exchange, self.names.event_key(saga_type, saga_id, status))
            await queue.consume(on_event, no_ack=True)
            await self.broker.publish([envelope])
            known = await self.store.load(saga_id)
            # The same start again: a saga that ended sends nothing more, and one that runs was taken.
            same = known is not None and known.start_digest in ("", digest)
            if same and known is not None and not outcome.done() and (known.status in TERMINAL or "running" in until):
                return outcome_of(known)
            taken = None
            if "running" in until:
                # `running` is a best-effort event (none goes out while no queue takes them): Redis says it too.
                taken = asyncio.create_task(self._taken(saga_id, digest, outcome))
            try:
                event = await outcome
            finally:
                if taken is not None:
                    taken.cancel()
        finally:
            await channel.close()
        if event.status == REJECTED:
            raise refused(event)
        return event

    async def _taken(self, saga_id: str, digest: str, outcome: asyncio.Future[SagaEvent]) -> None:
        """Answer `outcome` once the saga of this start is in Redis: an orchestrator took it."""
        delay = 0.01
        while not outcome.done():
            await asyncio.sleep(delay)  # the orchestrator's commit, looked for ever more slowly up to 4 times a second
            delay = min(delay * 2, 0.25)
            known = await self.store.load(saga_id)
            if known is not None and known.start_digest in ("", digest) and not outcome.done():
                outcome.set_result(outcome_of(known))

    @overload
    async def signal(
        self,
        saga_id: str,
        name: str,
        data: Mapping[str, Any] | None = None,
        signal_id: str | None = None,
        wait: Literal[False] = False,
        timeout: float = 30.0,
    ) -> str: ...

    @overload
    async def signal(
        self,
        saga_id: str,
        name: str,
        data: Mapping[str, Any] | None = None,
        signal_id: str | None = None,
        *,
        wait: Literal[True],
        timeout: float = 30.0,
    ) -> SignalResult: ...

    async def signal(
        self,
        saga_id: str,
        name: str,
        data: Mapping[str, Any] | None = None,
        signal_id: str | None = None,
        wait: bool = False,
        timeout: float = 30.0,
    ) -> str | SignalResult:
        """Send signal `name` to a saga that waits for it; returns the signal id, or with `wait` the result.

        The signal id is an idempotency key: the same signal again is applied
        once (the result says `duplicate`). A refusal raises SignalRefused
        with the reason: at once if this client can tell (an id or name out
        of bounds, data that is not JSON), else with `wait` as soon as the
        orchestrator answers (an unknown saga, one that does not wait for it).
        A wait that outlasts `timeout` seconds raises TimeoutError.
        """
        signal_id = signal_id or str(uuid.uuid4())
        problem = id_problem(saga_id) or name_problem(name, "a signal name") or id_problem(signal_id, "a signal id")
        signal = SignalSaga(saga_id=saga_id, name=name, signal_id=signal_id, data=dict(data or {}))
        body = b""
        if problem is None:
            try:
                body = encode(signal)
            except (TypeError, ValueError, msgspec.EncodeError) as exc:
                problem = f"the signal data is not JSON: {exc}"
        if problem is not None:
            error = ErrorInfo("invalid_signal", problem)
            raise SignalRefused(
                SignalResult(
                    saga_id=saga_id, name=name, signal_id=signal_id, outcome="refused", error=error, at=time.time()
                )
            )
        queue_name = self.names.signals_queue
        if not wait:
            await self.broker.publish([Envelope("", queue_name, body, signal_id, saga_id, "SignalSaga")])
            return signal_id
        answer: asyncio.Future[SignalResult] = asyncio.get_running_loop().create_future()

        async def on_result(message: AbstractIncomingMessage) -> None:
            with contextlib.suppress(MalformedMessage):
                result = decode(SignalResult, message.body)
                if result.signal_id == signal_id and result.saga_id == saga_id and not answer.done():
                    answer.set_result(result)

        channel = await self.broker.connection.channel()
        try:
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.consume(on_result, no_ack=True)
            signal.reply_to = queue.name
            envelope = Envelope("", queue_name, encode(signal), signal_id, saga_id, "SignalSaga", queue.name)
            await self.broker.publish([envelope])
            try:
                async with asyncio.timeout(timeout):
                    result = await answer
            except TimeoutError:
                raise TimeoutError(f"no answer to signal {signal_id!r} within {timeout:g}s") from None
        finally:
            await channel.close()
        if result.outcome == "refused":
            raise SignalRefused(result)
        return result

    async def status(self, saga_id: str) -> SagaInstance | None:
        """The saga as stored now, or None if there is no such saga (or it expired)."""
        return await self.store.load(saga_id)

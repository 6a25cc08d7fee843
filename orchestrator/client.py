"""Start sagas from Python, and wait for their outcome if asked.

async with await SagaClient.connect(Settings.from_env()) as client:
    saga_id = await client.start("order", data)
    outcome = await client.start("order", data, wait=True)   # a SagaEvent
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Literal, overload

from aio_pika.abc import AbstractIncomingMessage, ExchangeType

from orchestrator.store import RedisStore
from participants.edge.amqp import Broker, Envelope
from participants.edge.connections import connect_redis
from participants.edge.settings import Settings
from statemachines.instance import SagaInstance
from statemachines.messages import TERMINAL, SagaEvent, StartSaga, decode, encode


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
        data: Mapping[str, Any],
        saga_id: str | None = None,
        wait: Literal[False] = False,
        timeout: float = 60.0,
    ) -> str: ...

    @overload
    async def start(
        self,
        saga_type: str,
        data: Mapping[str, Any],
        saga_id: str | None = None,
        *,
        wait: Literal[True],
        timeout: float = 60.0,
    ) -> SagaEvent: ...

    async def start(
        self,
        saga_type: str,
        data: Mapping[str, Any],
        saga_id: str | None = None,
        wait: bool = False,
        timeout: float = 60.0,
    ) -> str | SagaEvent:
        """Start a saga and return its id; with `wait`, return its final event instead.

        Starting again with the same `saga_id` does not start a second saga. A
        wait that outlasts `timeout` seconds raises TimeoutError.
        """
        saga_id = saga_id or str(uuid.uuid4())
        body = encode(StartSaga(saga_type=saga_type, data=dict(data), saga_id=saga_id))
        envelope = Envelope("", self.names.start_queue, body, saga_id, saga_id, "StartSaga")
        if not wait:
            await self.broker.publish([envelope])
            return saga_id
        async with asyncio.timeout(timeout):
            return await self._start_and_wait(saga_type, saga_id, envelope)

    async def _start_and_wait(self, saga_type: str, saga_id: str, envelope: Envelope) -> SagaEvent:
        outcome: asyncio.Future[SagaEvent] = asyncio.get_running_loop().create_future()

        async def on_event(message: AbstractIncomingMessage) -> None:
            event = decode(SagaEvent, message.body)
            if event.status in TERMINAL and not outcome.done():
                outcome.set_result(event)

        # Bound before the start is published, so no event can slip past.
        channel = await self.broker.connection.channel()
        try:
            exchange = await channel.declare_exchange(self.names.events_exchange, ExchangeType.TOPIC, durable=True)
            queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await queue.bind(exchange, self.names.event_key(saga_type, saga_id, "*"))
            await queue.consume(on_event, no_ack=True)
            await self.broker.publish([envelope])
            # A saga that existed and ended before will send no more events.
            known = await self.store.load(saga_id)
            if known is not None and known.status in TERMINAL and not outcome.done():
                return _event_of(known)
            return await outcome
        finally:
            await channel.close()

    async def status(self, saga_id: str) -> SagaInstance | None:
        """The saga as stored now, or None if there is no such saga (or it expired)."""
        return await self.store.load(saga_id)


def _event_of(inst: SagaInstance) -> SagaEvent:
    return SagaEvent(
        saga_id=inst.saga_id,
        saga_type=inst.saga_type,
        status=inst.status,
        state=inst.state,
        at=inst.updated_at,
        data=inst.data,
        step=inst.step,
        error=inst.error,
    )

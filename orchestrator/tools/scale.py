"""`saga bench --waiting N`: many sagas waiting at once.

1. N `parked` sagas start and wait on a participant nobody serves; the
   orchestrator serving them polls for due timeouts only once a day, so
   they keep waiting after their one-second timeout has passed.
2. Redis memory per waiting saga.
3. Order sagas run through the same orchestrator meanwhile: throughput
   while they wait.
4. That orchestrator stops (handing back its buckets' leases) and a second
   starts with the usual timer: the time until all N timeouts have fired
   and every parked saga has ended. While the sleepy one lives it keeps its
   buckets, and their deadlines with them: a lease is only taken over from
   an orchestrator that has gone.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, ExchangeType

from orchestrator.namespace import drop
from orchestrator.tools.bench import PARTICIPANTS, Progress, drive_sagas
from orchestrator.tools.cpu import redis_memory
from orchestrator.tools.fleet import Fleet
from participants.edge.connections import connect_amqp, connect_redis
from participants.edge.settings import Settings
from statemachines.messages import SagaEvent, StartSaga, decode, encode


async def run_scale(
    base: Settings, waiting: int, sagas: int, in_flight: int, progress: Progress, say: Callable[..., None]
) -> dict[str, Any]:
    settings = replace(base, namespace=f"{base.namespace}-scale-{uuid.uuid4().hex[:6]}")
    names = settings.names
    fleet = Fleet(settings)
    redis = await connect_redis(settings.redis_url)
    connection = await connect_amqp(settings.amqp_url)
    try:
        say(f"starting the orchestrator and {', '.join(PARTICIPANTS)}; nobody serves `parking` ...")
        sleepy = fleet.orchestrator("orchestrator", "--sagas", "orchestrator.tools.bench_sagas", "--tick", "86400")
        for participant in PARTICIPANTS:
            fleet.participant(participant)
        await fleet.ready([names.start_queue, names.reply_queue, *(names.participant_queue(p) for p in PARTICIPANTS)])
        events = _Events(connection, names.events_exchange)
        await events.listen(("parked.*.running", "parked.*.compensated", "parked.*.stuck"))
        before = await redis_memory(redis)

        began = time.perf_counter()
        await _start_parked(connection, names.start_queue, waiting, progress.begin("parking", waiting))
        await events.wait("running", waiting)
        started_in = time.perf_counter() - began
        memory = (await redis_memory(redis) - before) / waiting

        run = await drive_sagas(settings, sagas, in_flight, 0.1, 1, progress.begin("meanwhile", sagas))

        sleepy.terminate()
        await asyncio.to_thread(sleepy.wait, 30)
        began = time.perf_counter()
        fleet.orchestrator("timers", "--sagas", "orchestrator.tools.bench_sagas")
        await events.wait("compensated", waiting, progress.begin("timeouts", waiting))
        fired_in = time.perf_counter() - began
        return {
            "waiting": waiting,
            "starts_per_s": round(waiting / started_in, 1),
            "redis_bytes_per_waiting_saga": round(memory),
            "sagas_per_s_while_waiting": round(run.per_second, 1),
            "seconds_to_fire_all_timeouts": round(fired_in, 1),
            "timeouts_per_s": round(waiting / fired_in, 1),
        }
    finally:
        fleet.stop()
        await connection.close()
        await redis.aclose()
        await drop(settings, (*PARTICIPANTS, "parking"))


class _Events:
    """Counts lifecycle events by status on a queue of its own."""

    def __init__(self, connection: Any, exchange: str) -> None:
        self.connection = connection
        self.exchange = exchange
        self.counts: dict[str, int] = {}
        self.changed = asyncio.Event()
        self.report: Callable[[int], None] | None = None
        self.watched = ""

    async def listen(self, keys: tuple[str, ...]) -> None:
        channel = await self.connection.channel()
        await channel.set_qos(prefetch_count=1000)
        exchange = await channel.declare_exchange(self.exchange, ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        for key in keys:
            await queue.bind(exchange, key)
        await queue.consume(self._on_event, no_ack=True)

    async def _on_event(self, message: AbstractIncomingMessage) -> None:
        status = decode(SagaEvent, message.body).status
        self.counts[status] = self.counts.get(status, 0) + 1
        if self.report is not None and status == self.watched:
            self.report(self.counts[status])
        self.changed.set()

    async def wait(self, status: str, count: int, report: Callable[[int], None] | None = None) -> None:
        self.report, self.watched = report, status
        while self.counts.get(status, 0) < count:
            self.changed.clear()
            await self.changed.wait()


async def _start_parked(connection: Any, queue: str, count: int, progress: Callable[[int], None]) -> None:
    channel = await connection.channel(publisher_confirms=True)
    gate = asyncio.Semaphore(512)
    sent = 0

    async def one() -> None:
        nonlocal sent
        saga_id = uuid.uuid4().hex
        body = encode(StartSaga(saga_type="parked", saga_id=saga_id, data={"n": sent}))
        message = aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=saga_id)
        async with gate:
            await channel.default_exchange.publish(message, queue)
        sent += 1
        progress(sent)

    for start in range(0, count, 10_000):
        await asyncio.gather(*(one() for _ in range(min(10_000, count - start))))
    await channel.close()


def human(report: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"{report['waiting']} sagas waiting on their first step (its participant paused):",
            f"  started at {report['starts_per_s']} sagas/s",
            f"  Redis memory per waiting saga: {report['redis_bytes_per_waiting_saga']} bytes",
            f"  order sagas/s while they wait: {report['sagas_per_s_while_waiting']}",
            f"  time to fire all {report['waiting']} timeouts: {report['seconds_to_fire_all_timeouts']} s "
            f"({report['timeouts_per_s']} per second, including a new orchestrator's start)",
        ]
    )

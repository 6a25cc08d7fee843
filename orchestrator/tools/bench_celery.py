"""`saga bench --against celery`: the Celery side, its worker and its driver.

The worker is `celery worker` over orchestrator.tools.celery_chain, a
child process of the bench in the bench's namespace; the driver starts
the same orders as our run, K in flight, and a saga ends when its
(id, status) arrives on the Redis list the chain's last task or its
errback pushes to.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from orchestrator.tools.fleet import Fleet
from participants.edge.connections import connect_amqp, connect_redis
from participants.edge.settings import Settings

WORKER = "celery"


def missing() -> str | None:
    """Why --against celery cannot run here, in one sentence, or None."""
    if importlib.util.find_spec("celery") is None:
        return "--against celery needs Celery: pip install 'saga-orchestrator[bench]'"
    return None


def queue(settings: Settings) -> str:
    return f"{settings.namespace}.celery"


def start_worker(fleet: Fleet) -> subprocess.Popen[bytes]:
    """A prefork worker of 2, as the issue's Celery side ran, stopped with the fleet."""
    process = subprocess.Popen(
        [
            sys.executable, "-m", "celery", "-A", "orchestrator.tools.celery_chain", "worker",
            "--pool", "prefork", "--concurrency", "2", "--loglevel", "WARNING",
            "--without-gossip", "--without-mingle", "--without-heartbeat",
        ],
        env=fleet.env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    fleet.processes[WORKER] = process
    return process


async def drive(
    settings: Settings, orders: list[dict[str, Any]], in_flight: int, progress: Callable[[int], None]
) -> tuple[float, list[float], dict[str, int]]:
    """Run `orders` as Celery chains, `in_flight` at a time: seconds, latencies and outcomes."""
    from orchestrator.tools import celery_chain

    celery_chain.configure(settings)
    redis = await connect_redis(settings.redis_url)
    key = celery_chain.done_key(settings.namespace)
    waiting: dict[str, asyncio.Future[str]] = {}
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    gate = asyncio.Semaphore(in_flight)
    loop = asyncio.get_running_loop()

    finished = False

    async def listen() -> None:
        # Not cancelled: a BLPOP cut off mid-reply would leave the client's connection unusable.
        while not finished:
            popped = await redis.blpop([key], timeout=0.5)
            if popped is None:
                continue
            saga_id, status = json.loads(popped[1])
            future = waiting.pop(saga_id, None)
            if future is not None and not future.done():
                future.set_result(status)

    async def one(order: dict[str, Any]) -> None:
        saga_id = uuid.uuid4().hex
        async with gate:
            began = time.perf_counter()
            done = waiting[saga_id] = loop.create_future()
            # Celery's publish is synchronous: it holds this loop as it would a team's web handler.
            celery_chain.start({**order, "saga_id": saga_id})
            status = await done
            latencies.append(time.perf_counter() - began)
        statuses[status] = statuses.get(status, 0) + 1
        progress(len(latencies))

    listener = asyncio.create_task(listen())
    try:
        began = time.perf_counter()
        await asyncio.gather(*(one(order) for order in orders))
        return time.perf_counter() - began, latencies, statuses
    finally:
        finished = True
        await asyncio.gather(listener, return_exceptions=True)
        await redis.aclose()


async def remove_exchange(settings: Settings) -> None:
    """The exchange Celery declared for its queue (the bench drops the queue with the others)."""
    connection = await connect_amqp(settings.amqp_url)
    try:
        channel = await connection.channel()
        with contextlib.suppress(Exception):
            await channel.exchange_delete(queue(settings))
    finally:
        await connection.close()

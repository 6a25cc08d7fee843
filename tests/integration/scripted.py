"""Participants whose replies a test scripts, and small helpers shared by the fault tests.

`Scripted` is a real `participants.worker.Worker`: it consumes its queue,
deduplicates, runs its handlers and records the step, exactly as in
production. Only what happens to each finished reply is up to the test: sent
(the default), lost, or held back and delivered late. That is what a slow or
silent participant looks like from the orchestrator's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from redis.asyncio import Redis

from orchestrator.store import RedisStore
from participants.edge.settings import Settings
from participants.worker import Context, Failure, Worker
from statemachines.dsl import Saga
from statemachines.instance import HistoryEntry, SagaInstance
from statemachines.messages import Command, MalformedMessage, decode
from statemachines.names import Names
from tests.integration.conftest import eventually, saga_command, saga_env

ROOT = Path(__file__).resolve().parents[2]

# What a script does with one reply: await worker.send(...), worker.hold(...), or nothing (the reply is lost).
Script = Callable[["Scripted", Command, bytes], Awaitable[None]]


async def send_all(worker: Scripted, command: Command, body: bytes) -> None:
    await worker.send(command, body)


async def lose_actions(worker: Scripted, command: Command, body: bytes) -> None:
    """The participant acts but its answers to actions never arrive; compensations are answered."""
    if command.action == "compensate":
        await worker.send(command, body)


class Scripted(Worker):
    def __init__(self, name: str, script: Script = send_all, **options: Any) -> None:
        options.setdefault("transient_backoff", 0.01)
        super().__init__(name, **options)
        self.script = script
        # Every command delivered, redeliveries and duplicates included, in order.
        self.received: list[Command] = []
        # Handler calls: command name -> the ctx.key of each call.
        self.calls: dict[str, list[str]] = defaultdict(list)
        self.held: list[tuple[Command, bytes]] = []

    def act(
        self,
        command: str,
        result: Mapping[str, Any] | None = None,
        failure: Callable[[Context], Failure | None] | None = None,
    ) -> None:
        """Handle `command`: record the call, then raise `failure(ctx)` if it gives one, else return `result`."""

        async def handle(ctx: Context) -> Mapping[str, Any] | None:
            self.calls[command].append(ctx.key)
            refusal = failure(ctx) if failure is not None else None
            if refusal is not None:
                raise refusal
            return result

        self.handler(command)(handle)

    async def handle(self, message: AbstractIncomingMessage) -> None:
        with contextlib.suppress(MalformedMessage):  # the worker itself dead-letters it
            self.received.append(decode(Command, message.body))
        await super().handle(message)

    async def _send(self, command: Command, body: bytes) -> None:
        await self.script(self, command, body)

    async def send(self, command: Command, body: bytes) -> None:
        await super()._send(command, body)

    def hold(self, command: Command, body: bytes) -> None:
        self.held.append((command, body))

    async def release(self) -> list[Command]:
        """Send every reply held back so far, late."""
        held, self.held = self.held, []
        for command, body in held:
            await self.send(command, body)
        return [command for command, _ in held]

    def attempts(self, saga_id: str) -> list[tuple[str, str, int]]:
        """(action, command, attempt) of each distinct command received for a saga, in order."""
        seen: set[str] = set()
        out: list[tuple[str, str, int]] = []
        for command in self.received:
            if command.saga_id == saga_id and command.message_id not in seen:
                seen.add(command.message_id)
                out.append((command.action, command.command, command.attempt))
        return out


def participants_of(sagas: Sequence[Saga]) -> set[str]:
    """Every participant the sagas name, for the `cleanup` fixture: their queues go with the test."""
    return {step.participant for saga in sagas for step in saga.steps}


async def now(value: Any) -> Any:
    """`value`, as a coroutine: for `eventually` on something this process already knows."""
    return value


async def open_store(settings: Settings) -> RedisStore:
    store = RedisStore(Redis.from_url(settings.redis_url), settings.names)
    await store.connect()
    return store


def transitions(entries: list[HistoryEntry]) -> list[HistoryEntry]:
    """The entries that moved the saga (not the replies recorded and ignored)."""
    return [h for h in entries if h.event != "ignored_reply"]


async def loaded(store: RedisStore, saga_id: str, check: Callable[[SagaInstance], bool]) -> SagaInstance | None:
    inst = await store.load(saga_id)
    return inst if inst is not None and check(inst) else None


async def publish_raw(settings: Settings, queue: str, body: bytes, **properties: Any) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(aio_pika.Message(body, **properties), queue)
    finally:
        await connection.close()


async def take_dead_letters(settings: Settings, count: int, timeout: float = 20.0) -> list[AbstractIncomingMessage]:
    """Wait until `count` messages are in the namespace's dead-letter queue, and take them."""
    names: Names = settings.names
    connection = await aio_pika.connect(settings.amqp_url)
    got: list[AbstractIncomingMessage] = []
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(names.dead_queue, durable=True, arguments=names.dead_queue_arguments())

        async def take() -> bool:
            while (message := await queue.get(fail=False, no_ack=True)) is not None:
                got.append(message)
            return len(got) >= count

        await eventually(take, timeout=timeout)
    finally:
        await connection.close()
    return got


async def cli(settings: Settings, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run the real `saga` command in this test's namespace, from the repository root."""

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            saga_command(*args),
            env=saga_env(settings),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    return await asyncio.to_thread(run)

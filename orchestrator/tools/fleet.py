"""The orchestrator and participants as child processes, as they run in production.

`saga demo`, `saga bench` and the fault tests start their processes through
here: each is a real `saga ...` process in the configured namespace, ready
once its queue has a consumer, stopped with SIGTERM (or killed with SIGKILL).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import aio_pika

from participants.edge.connections import connect_amqp
from participants.edge.settings import Settings

EXAMPLES = ("inventory", "payment", "backup_payment", "fraud", "shipping", "flight", "hotel", "car")


class Fleet:
    def __init__(self, settings: Settings, logs: Path | None = None, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.logs = logs
        self.extra_env = env or {}
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._args: dict[str, tuple[str, ...]] = {}

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "SAGA_AMQP_URL": self.settings.amqp_url,
            "SAGA_REDIS_URL": self.settings.redis_url,
            "SAGA_NAMESPACE": self.settings.namespace,
            "SAGA_REDIS_REPLICAS": str(self.settings.redis_replicas),
            "SAGA_REDIS_WAIT_MS": str(self.settings.redis_wait_ms),
            "SAGA_QUEUE_TYPE": self.settings.queue_type,
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start `saga <args>` as the process called `name` (replacing a dead one of that name)."""
        out: IO[bytes] | int = subprocess.DEVNULL
        if self.logs is not None:
            self.logs.mkdir(parents=True, exist_ok=True)
            out = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", *args], env=self.env(), stdout=out, stderr=subprocess.STDOUT
        )
        if not isinstance(out, int):
            out.close()
        self.processes[name] = process
        self._args[name] = args
        return process

    def orchestrator(self, name: str = "orchestrator", *extra: str) -> subprocess.Popen[bytes]:
        return self.spawn(name, "orchestrator", *extra)

    def participant(self, participant: str, target: str | None = None) -> subprocess.Popen[bytes]:
        return self.spawn(participant, "participant", target or f"participants.examples.{participant}:worker")

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        return self.spawn(name, *self._args[name])

    def kill(self, name: str) -> None:
        """SIGKILL: no drain, no goodbye, as when a machine dies."""
        process = self.processes[name]
        process.send_signal(signal.SIGKILL)
        process.wait()

    async def ready(self, queues: Sequence[str], timeout: float = 30.0) -> None:
        """Wait until each queue has a consumer, or fail naming the processes that died."""
        connection = await connect_amqp(self.settings.amqp_url)
        try:
            deadline = asyncio.get_running_loop().time() + timeout
            waiting = list(queues)
            while waiting:
                channel = await connection.channel()
                still = []
                for queue in waiting:
                    try:
                        declared = await channel.declare_queue(queue, passive=True)
                        if not declared.declaration_result.consumer_count:
                            still.append(queue)
                    except aio_pika.exceptions.ChannelClosed:
                        channel = await connection.channel()
                        still.append(queue)
                await channel.close()
                waiting = still
                dead = [name for name, p in self.processes.items() if p.poll() is not None]
                if dead:
                    raise RuntimeError(f"{', '.join(dead)} exited early; see its output")
                if waiting and asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"no consumer on {', '.join(waiting)} after {timeout:g}s")
                if waiting:
                    await asyncio.sleep(0.1)
        finally:
            await connection.close()

    def examples_queues(self) -> list[str]:
        names = self.settings.names
        return [names.start_queue, names.reply_queue, *(names.participant_queue(p) for p in EXAMPLES)]

    async def start_examples(self) -> None:
        """The orchestrator and all example participants, ready to serve."""
        self.orchestrator()
        for participant in EXAMPLES:
            self.participant(participant)
        await self.ready(self.examples_queues())

    def stop(self, timeout: float = 20.0) -> dict[str, int]:
        """SIGTERM everything, wait for the drain; exit codes by name."""
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        codes = {}
        for name, process in self.processes.items():
            try:
                codes[name] = process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = process.wait()
        return codes

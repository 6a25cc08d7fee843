"""SAGA_TIMING=1: each process notes when a saga's messages pass through it, for `saga bench`'s latency budget.

A note is (saga id, who, point, wall clock in ns): the orchestrator and the
participants note when they take a message (`taken`), when the orchestrator
has committed a transition (`committed`) and when either publishes
(`published`). The notes are kept in memory and pushed to the Redis list
`<ns>:timing` every `FLUSH` seconds on a connection of their own, so the
hot path gains a list append and nothing else; `saga bench` reads the list
and lays the notes of one saga end to end (orchestrator.tools.budget). Wall clocks
(time.time_ns) are comparable between processes of one machine, which is
where the bench runs them.

Off (the default), every hook returns after testing one module global.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from statemachines.names import Names

ON = os.environ.get("SAGA_TIMING", "") not in ("", "0")
FLUSH = 0.1
ORCHESTRATOR = "orchestrator"
CLIENT = "client"

_who = "?"
_notes: list[str] = []
_task: asyncio.Task[None] | None = None


def key(names: Names) -> str:
    return f"{names.namespace}:timing"


def note(saga_id: str | None, point: str) -> None:
    """Note that `point` happened to `saga_id` now (nothing unless SAGA_TIMING is on)."""
    if ON and saga_id:
        _notes.append(stamp(saga_id, _who, point))


def stamp(saga_id: str, who: str, point: str) -> str:
    return f"{saga_id} {who} {point} {time.time_ns()}"


def begin(redis: Redis, names: Names, who: str) -> None:
    """This process is `who`: push its notes to Redis from now on."""
    global _who, _task
    if not ON:
        return
    _who = who
    if _task is None:
        _task = asyncio.get_running_loop().create_task(_flush(redis, key(names)))


async def end() -> None:
    """Push what is left and stop pushing."""
    global _task
    if _task is not None:
        _task.cancel()
        with contextlib.suppress(BaseException):
            await _task
        _task = None


async def _flush(redis: Redis, where: str) -> None:
    try:
        while True:
            await asyncio.sleep(FLUSH)
            await _push(redis, where)
    finally:
        with contextlib.suppress(Exception):
            await _push(redis, where)


async def _push(redis: Redis, where: str) -> None:
    if _notes:
        batch = _notes[:]
        _notes.clear()
        await redis.rpush(where, *batch)

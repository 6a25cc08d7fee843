"""The runtime's one call per happening into metrics, traces and log context.

The engine, the service, the broker and the worker call these and nothing
else of observability; each forwards to `metrics` and `tracing`, which
return at once while they are off.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from participants.edge import logs, metrics, tracing

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from statemachines.decide import Decision, Event
    from statemachines.instance import SagaInstance
    from statemachines.messages import Command, Reply
    from statemachines.names import Names

log = logging.getLogger("saga.observe")

# Re-exported for the call sites: one import each.
about = logs.about
command_headers = tracing.command_headers
start_headers = tracing.start_headers
reply_headers = tracing.headers
consuming = tracing.consuming
consumed = tracing.consumed
dead_lettered = metrics.dead_lettered
unchanged = metrics.unchanged
parked = metrics.parked
duplicate = metrics.duplicate
poll = metrics.poll
breaker = metrics.breaker

# Where an orchestrator keeps its index of stuck sagas (None: not an orchestrator).
_stuck: tuple[Redis, Names] | None = None
_writes: set[asyncio.Task[Any]] = set()


def serving(redis: Redis, names: Names) -> None:
    """An orchestrator starts: its dead letters count as refusals, and it keeps the index of stuck sagas."""
    global _stuck
    _stuck = (redis, names)
    metrics.orchestrator_queues(names)


def committed(old: SagaInstance | None, event: Event, decision: Decision) -> None:
    """A transition was committed (not yet published)."""
    new = decision.instance
    if logs.structured and new is not None:
        logs.about(new.saga_id, new.saga_type, new.step, new.attempt)
    metrics.committed(old, event, decision)
    tracing.committed(old, event, decision)
    if (
        _stuck is not None
        and new is not None
        and (new.status == "stuck") != (old is not None and old.status == "stuck")
    ):
        _index_stuck(_stuck, new)


def _index_stuck(where: tuple[Redis, Names], inst: SagaInstance) -> None:
    """Rare (a saga got stuck or left it), so written beside the commit; the metrics' poll drops stale entries."""
    redis, names = where
    if inst.status == "stuck":
        write = redis.zadd(names.stuck_index, {inst.saga_id: int(inst.updated_at * 1000)})
    else:
        write = redis.zrem(names.stuck_index, inst.saga_id)
    task = asyncio.ensure_future(write)
    _writes.add(task)
    task.add_done_callback(_writes.discard)


class Handling:
    """A participant answering one command: times it for the metrics, spans it for the trace."""

    __slots__ = ("_began", "_command", "_known", "_participant", "_reply", "_span")

    def __init__(self, participant: str, command: Command, known: bool) -> None:
        self._participant = participant
        self._command = command
        self._known = known
        self._reply: Reply | None = None
        self._span = tracing.handler(participant, command)

    def __enter__(self) -> Handling:
        if self._span is not None:
            self._span.__enter__()
        self._began = time.perf_counter()
        return self

    def answered(self, reply: Reply) -> None:
        self._reply = reply
        if self._span is not None:
            self._span.answered(reply)

    def __exit__(self, *exc: Any) -> None:
        if self._reply is not None:
            metrics.handled(
                self._participant, self._command, self._known, self._reply, time.perf_counter() - self._began
            )
        if self._span is not None:
            self._span.__exit__(*exc)


def handling(participant: str, command: Command, known: bool) -> Handling:
    return Handling(participant, command, known)

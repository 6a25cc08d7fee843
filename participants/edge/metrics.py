"""Every Prometheus metric of the orchestrator and the workers, and the HTTP endpoint that serves them.

Off until `serve(port)` is called (`--metrics-port`); until then every hook
returns at its first line, so a process without metrics pays nothing it could
measure. prometheus_client is the `metrics` extra, imported only by `serve`.

The hooks read what the engine and the worker already produce (a committed
decision, a reply, a dead letter); label values come from saga definitions,
the worker's own handlers or the queues a process consumes, never from a
message's free text, so they stay bounded. No saga id is ever a label.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from statemachines.messages import TERMINAL, Reply
from statemachines.names import BUCKETS, Names

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from statemachines.decide import Decision, Event
    from statemachines.instance import SagaInstance
    from statemachines.lanes import Lane
    from statemachines.messages import Command

log = logging.getLogger("saga.metrics")

# Seconds. Whole sagas take from milliseconds to hours (a step may wait out a long timeout).
SAGA_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LATE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# How often the orchestrator reads the backlogs and counts sagas by status in Redis.
POLL_SECONDS = 15.0


class MetricsMissing(RuntimeError):
    """prometheus_client is not installed."""

    def __init__(self) -> None:
        super().__init__(
            "--metrics-port needs prometheus_client: install the `metrics` extra "
            "(pip install 'saga-orchestrator[metrics]')"
        )


class _Family:
    """One metric and its children by label values, cached: `.labels()` costs more than the increment."""

    __slots__ = ("_children", "metric")

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def __call__(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


class Metrics:
    """The metrics of one process, in a registry of its own (tests run several in one interpreter)."""

    def __init__(self) -> None:
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            gc_collector,
            platform_collector,
            process_collector,
        )

        self.registry = registry = CollectorRegistry(auto_describe=True)
        process_collector.ProcessCollector(registry=registry)
        platform_collector.PlatformCollector(registry=registry)
        gc_collector.GCCollector(registry=registry)

        def counter(name: str, doc: str, *labels: str) -> _Family:
            return _Family(Counter(name, doc, labels, registry=registry))

        def histogram(name: str, doc: str, buckets: tuple[float, ...], *labels: str) -> _Family:
            return _Family(Histogram(name, doc, labels, registry=registry, buckets=buckets))

        def gauge(name: str, doc: str, *labels: str) -> Any:
            return Gauge(name, doc, labels, registry=registry)

        # The orchestrator
        self.started = counter("saga_started", "Sagas started.", "saga_type")
        self.finished = counter(
            "saga_finished", "Sagas that reached an outcome (completed, compensated, stuck).", "saga_type", "outcome"
        )
        self.compensations = counter("saga_compensations", "Sagas that began to compensate.", "saga_type")
        self.duration = histogram(
            "saga_duration_seconds", "Time from a saga's start to its outcome.", SAGA_BUCKETS, "saga_type", "outcome"
        )
        self.step = histogram(
            "saga_step_duration_seconds",
            "Time from a step's command sent to its reply applied, per attempt.",
            STEP_BUCKETS,
            "saga_type",
            "step",
            "action",
        )
        self.retries = counter(
            "saga_step_retries", "Commands sent again (attempt 2 and later).", "saga_type", "step", "action"
        )
        self.timeouts = counter(
            "saga_step_timeouts", "Attempts whose reply did not come in time.", "saga_type", "step", "action"
        )
        self.ignored = counter(
            "saga_replies_ignored", "Replies that changed nothing: duplicate, stale or late.", "saga_type"
        )
        self.refused = counter(
            "saga_refused",
            "Starts, replies and signals refused (dead-lettered) by the orchestrator.",
            "message",
            "reason",
        )
        self.late = histogram(
            "saga_deadline_lateness_seconds",
            "How long after its due time a timeout, backoff or saga deadline was fired.",
            LATE_BUCKETS,
            "saga_type",
        )
        self.parked = counter(
            "saga_parked_outboxes",
            "Outboxes dropped because they can never be published (their saga is stuck with the reason).",
            "saga_type",
        )
        self.outbox_backlog = gauge(
            "saga_outbox_backlog", "Sagas whose latest messages the broker has not confirmed within 2 s."
        )
        self.deadline_lag = gauge(
            "saga_deadline_lag_seconds", "Age of the oldest deadline that is due and not yet fired (0: none)."
        )
        self.in_flight = gauge("saga_in_flight_sagas", "Sagas waiting for a reply, a backoff or a deadline.")
        self.stuck = gauge("saga_stuck_sagas", "Sagas stuck, waiting for an operator.", "saga_type")
        self.stuck_types: set[str] = set()
        # Stuck sagas never expire (they wait for an operator): this is what tells one was forgotten.
        self.oldest_stuck = gauge(
            "saga_oldest_stuck_seconds", "How long the saga stuck longest has been stuck (0: none)."
        )
        self.breakers = counter(
            "saga_breaker_transitions",
            "Circuit breakers that this process saw open, turn half-open (a trial let through) or close.",
            "breaker",
            "state",
        )
        # Every process
        self.dead_letters = counter(
            "saga_dead_letters", "Messages dead-lettered, by the queue they came from.", "queue", "reason"
        )
        # The workers
        self.commands = counter(
            "saga_commands_handled",
            "Commands a participant answered, by outcome (duplicate: the recorded reply sent again).",
            "participant",
            "command",
            "outcome",
        )
        self.handler = histogram(
            "saga_handler_duration_seconds",
            "Time a participant's handler took, retries of a crashing handler included.",
            STEP_BUCKETS,
            "participant",
            "command",
        )
        self.queues: dict[str, str] = {}

    def expose(self) -> bytes:
        from prometheus_client import generate_latest

        return bytes(generate_latest(self.registry))


# The process's metrics; None while metrics are off.
current: Metrics | None = None
_server: Any = None


def serve(port: int, host: str = "127.0.0.1") -> int:
    """Turn metrics on and serve them at http://host:port/metrics; returns the port (0 picks a free one)."""
    global current, _server
    try:
        from prometheus_client import start_http_server
    except ImportError:
        raise MetricsMissing() from None
    if current is None:
        current = Metrics()
    if _server is None:
        _server, _ = start_http_server(port, addr=host, registry=current.registry)
        log.info("metrics at http://%s:%d/metrics", host, _server.server_port)
    return int(_server.server_port)


def enable() -> Metrics:
    """Turn metrics on without serving them (tests read `current.expose()`)."""
    global current
    if current is None:
        current = Metrics()
    return current


def disable() -> None:
    global current, _server
    if _server is not None:
        _server.shutdown()
        _server.server_close()
        _server = None
    current = None


def orchestrator_queues(names: Names) -> None:
    """Tell the metrics which queues are the orchestrator's, so their dead letters count as refusals."""
    if current is not None:
        current.queues.update({names.start_queue: "start", names.reply_queue: "reply", names.signals_queue: "signal"})


# Hooks, called by the runtime.


def committed(old: SagaInstance | None, event: Event, decision: Decision) -> None:
    """A transition was committed: count what it started, sent, retried, timed out and finished."""
    m = current
    if m is None:
        return
    new = decision.instance
    if new is None or not decision.history:
        return
    saga_type = new.saga_type
    entry = decision.history[0]
    trigger = entry.event
    lane = _lane_awaiting(old, event)
    if lane is not None:
        if trigger in ("succeeded", "failed") and lane.sent_at is not None and lane.step is not None:
            m.step(saga_type, lane.step, lane.action).observe(max(0.0, entry.at - lane.sent_at))
    elif old is not None and old.step is not None:
        if trigger in ("succeeded", "failed") and old.waiting == "reply":
            m.step(saga_type, old.step, old.action).observe(max(0.0, entry.at - old.updated_at))
        elif trigger == "timed_out":
            m.timeouts(saga_type, old.step, old.action).inc()
    if old is not None and trigger in ("timed_out", "resend", "expired"):
        due = old.wake_at
        if due is not None:
            m.late(saga_type).observe(max(0.0, entry.at - due))
    for command in decision.commands:
        if command.attempt > 1:
            m.retries(saga_type, command.step, command.action).inc()
    for lifecycle in decision.events:
        status = lifecycle.status
        if status == "running" and (old is None or old.status == "new"):
            m.started(saga_type).inc()
        elif status == "compensating":
            m.compensations(saga_type).inc()
        elif status in TERMINAL:
            m.finished(saga_type, status).inc()
            m.duration(saga_type, status).observe(max(0.0, new.updated_at - new.created_at))


def _lane_awaiting(old: SagaInstance | None, event: Event) -> Lane | None:
    """The branch or item of a group that `event` (a reply) answers, if the saga is in a group."""
    if old is None or not isinstance(event, Reply) or not old.groups:
        return None
    return next((lane for lane in old.groups.get(old.step or "", ()) if lane.awaiting == event.in_reply_to), None)


def breaker(key: str, state: str) -> None:
    """A circuit breaker moved: `key` is declared by a saga (bounded), `state` open, half_open or closed."""
    m = current
    if m is not None:
        m.breakers(key, state).inc()


def parked(saga_type: str) -> None:
    """An outbox that can never be published was dropped, its saga told why."""
    m = current
    if m is not None:
        m.parked(saga_type).inc()


def unchanged(event: Event, decision: Decision) -> None:
    """An event changed nothing: a reply that was not awaited (a duplicate, a stale or late one)."""
    m = current
    if m is None or decision.instance is None or not decision.history:
        return
    if decision.history[0].event == "ignored_reply":
        m.ignored(decision.instance.saga_type).inc()


def dead_lettered(queue: str, reason: str) -> None:
    """A message went to the dead letters; `reason` is a kind (malformed, rejected, too_large, failed)."""
    m = current
    if m is None:
        return
    m.dead_letters(queue, reason).inc()
    message = m.queues.get(queue)
    if message is not None:
        m.refused(message, reason).inc()


def handled(participant: str, command: Command, known: bool, reply: Reply, seconds: float | None) -> None:
    """A worker answered `command`: `seconds` is the handler's time, None if no handler ran."""
    m = current
    if m is None:
        return
    name = command.command if known else "other"
    error = reply.error
    outcome = "success" if error is None else ("outcome_unknown" if error.code == "outcome_unknown" else "failure")
    m.commands(participant, name, outcome).inc()
    if seconds is not None:
        m.handler(participant, name).observe(seconds)


def duplicate(participant: str, command: Command, known: bool) -> None:
    """A worker sent a recorded reply again without calling its handler."""
    m = current
    if m is not None:
        m.commands(participant, command.command if known else "other", "duplicate").inc()


# The orchestrator's poll of what only Redis knows.


async def poll(redis: Redis, names: Names, every: float = POLL_SECONDS) -> None:
    """Read the outbox backlog, the deadline lag and the sagas by status, every `every` seconds."""
    if current is None:
        return
    while True:
        try:
            await read_backlogs(redis, names)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis away: the gauges keep their last values
            log.warning("reading the backlogs for metrics failed: %r", exc)
        await asyncio.sleep(every)


# An outbox older than this is counted in saga_outbox_backlog: longer than a confirm and the clear after it take.
OUTBOX_LATE = 2.0


async def read_backlogs(redis: Redis, names: Names) -> None:
    """The gauges only Redis knows, from indexes the orchestrator keeps anyway: no scan of every saga."""
    m = current
    if m is None:
        return
    now_ms = time.time() * 1000
    pipe = redis.pipeline(transaction=False)
    pipe.zrange(names.stuck_index, 0, -1, withscores=True)
    for bucket in range(BUCKETS):
        # Confirmed outboxes wait a moment to be forgotten (Engine.clear_after): count only the late ones.
        pipe.zcount(names.outbox_index(bucket), "-inf", now_ms - OUTBOX_LATE * 1000)
        pipe.zcard(names.deadline_key(bucket))
        pipe.zrange(names.deadline_key(bucket), 0, 0, withscores=True)
    stuck, *buckets = await pipe.execute()
    m.outbox_backlog.set(sum(buckets[0::3]))
    m.in_flight.set(sum(buckets[1::3]))
    due = [score for first in buckets[2::3] for _, score in first]
    m.deadline_lag.set(max(0.0, (now_ms - min(due)) / 1000) if due else 0.0)
    by_type: dict[str, int] = {}
    since: list[float] = []
    if stuck:
        pipe = redis.pipeline(transaction=False)
        for saga_id, _ in stuck:
            pipe.hmget(names.saga_key(saga_id.decode()), "type", "status")
        gone = []
        for (saga_id, at), (saga_type, status) in zip(stuck, await pipe.execute(), strict=True):
            if status != b"stuck":  # resumed or compensated since, by a process that keeps no index
                gone.append(saga_id)
            elif saga_type is not None:
                by_type[saga_type.decode()] = by_type.get(saga_type.decode(), 0) + 1
                since.append(at)
        if gone:
            await redis.zrem(names.stuck_index, *gone)
    for saga_type in m.stuck_types | set(by_type):
        m.stuck.labels(saga_type).set(by_type.get(saga_type, 0))
    m.stuck_types |= set(by_type)
    m.oldest_stuck.set(max(0.0, (now_ms - min(since)) / 1000) if since else 0.0)

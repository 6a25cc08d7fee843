"""`saga bench`: order sagas through real processes, against a bare ring in the same run.

The orchestrator and the inventory, payment, backup_payment and shipping participants run
as child processes, as in production. N order sagas run with K in flight,
some failing by design; the same N and K then run through the baseline ring
(orchestrator.tools.baseline). The two alternate `repeat` times and the report
gives medians, so a noisy machine moves both sides alike.

With `--parallel`, the flight, hotel and car participants run instead and
the two sides are trip sagas: the shipped trip, which books all three at
once, and `trip_in_line` (orchestrator.tools.bench_sagas), the same bookings
one after the other. The report gives each one's latency and the ratio of
their p50s.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from aio_pika.abc import AbstractIncomingMessage, ExchangeType

from orchestrator.namespace import drop
from orchestrator.store import RedisStore
from orchestrator.tools import baseline, bench_celery, budget
from orchestrator.tools.cpu import listener_pid, process_cpu, redis_cpu, redis_memory, tree_cpu
from orchestrator.tools.fleet import Fleet
from orchestrator.tools.report import percentile, step_latencies, table
from participants.edge import timing
from participants.edge.connections import connect_amqp, connect_redis
from participants.edge.settings import Settings
from statemachines.messages import SagaEvent, StartSaga, decode, encode

# backup_payment answers charge_payment's fallback: without it a payment timeout under load
# leaves the saga waiting on a queue nobody reads.
PARTICIPANTS = ("inventory", "payment", "backup_payment", "shipping")
ORDER_STEPS = ("reserve_inventory", "charge_payment", "create_shipment")
TRIP_PARTICIPANTS = ("flight", "hotel", "car")
TRIP_STEPS = ("book_flight", "book_hotel", "rent_car")
# Roomy destinations only: the bench must not sell one out.
TRIP_DESTINATIONS = ("paris", "rome", "lisbon", "tokyo")


def order_data(rng: random.Random, n: int, failure_ratio: float) -> dict[str, Any]:
    return {
        "order_id": f"bench-{n}",
        "customer_id": f"customer-{rng.randint(1, 1000)}",
        "items": [{"sku": f"sku-{rng.randint(1, 9)}", "qty": rng.randint(1, 3)} for _ in range(rng.randint(1, 3))],
        "amount": rng.randint(100, 100_000),
        "fail_at": [rng.choice(ORDER_STEPS)] if rng.random() < failure_ratio else [],
    }


def trip_data(rng: random.Random, n: int, failure_ratio: float) -> dict[str, Any]:
    return {
        "trip_id": f"bench-{n}",
        "customer_id": f"customer-{rng.randint(1, 1000)}",
        "destination": rng.choice(TRIP_DESTINATIONS),
        "nights": rng.randint(1, 5),
        "fail_at": [rng.choice(TRIP_STEPS)] if rng.random() < failure_ratio else [],
    }


DataMaker = Callable[[random.Random, int, float], dict[str, Any]]


def orders(count: int, failure_ratio: float, seed: int) -> list[dict[str, Any]]:
    """The orders of one run: the same seed gives both sides the same orders and the same failures."""
    rng = random.Random(seed)
    return [order_data(rng, n, failure_ratio) for n in range(count)]


@dataclass
class Run:
    """One measured run of sagas or baseline units."""

    count: int
    seconds: float
    latencies: list[float]
    cpu: dict[str, float | None] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    saga_ids: list[str] = field(default_factory=list)
    redis_bytes: int = 0
    # Under SAGA_TIMING: when each start was sent and each outcome taken (participants.edge.timing).
    notes: list[str] | None = None

    @property
    def per_second(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0


class Progress:
    """A bar on a terminal, nothing otherwise (and nothing with --json)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.label = ""
        self.total = 1

    def begin(self, label: str, total: int) -> Callable[[int], None]:
        self.label, self.total = label, total
        return self.show

    def show(self, done: int) -> None:
        if not self.enabled or (done % 25 and done != self.total):
            return
        width = 30
        filled = width * done // self.total
        print(
            f"\r{self.label:<10} [{'#' * filled}{'.' * (width - filled)}] {done}/{self.total}", end="", file=sys.stderr
        )
        if done == self.total:
            print(file=sys.stderr)


class Cpu:
    """CPU seconds per process between two readings."""

    def __init__(self, pids: dict[str, int | None], redis: Any, trees: tuple[str, ...] = ()) -> None:
        self.pids = pids
        self.redis = redis
        self.trees = trees  # processes counted with their children (a prefork pool)
        self.start: dict[str, float | None] = {}

    async def read(self) -> dict[str, float | None]:
        now: dict[str, float | None] = {
            name: None if not pid else tree_cpu(pid) if name in self.trees else process_cpu(pid)
            for name, pid in self.pids.items()
        }
        now["redis"] = await redis_cpu(self.redis)
        return now

    async def begin(self) -> None:
        self.start = await self.read()

    async def used(self) -> dict[str, float | None]:
        end = await self.read()
        return {
            name: (end[name] - before) if before is not None and end.get(name) is not None else None  # type: ignore[operator]
            for name, before in self.start.items()
        }


async def drive_sagas(
    settings: Settings,
    count: int,
    in_flight: int,
    failure_ratio: float,
    seed: int,
    progress: Callable[[int], None],
    saga_type: str = "order",
    make_data: DataMaker = order_data,
    timed: bool = False,
) -> Run:
    """Publish `count` starts of `saga_type`, `in_flight` at a time; a saga ends when its final event arrives.

    `timed`: note when each start is sent and each outcome taken, for the latency budget.
    """
    names = settings.names
    rng = random.Random(seed)
    # Made before the first start: the same seed gives --against celery the same orders.
    datas = [make_data(rng, n, failure_ratio) for n in range(count)]
    connection = await connect_amqp(settings.amqp_url)
    try:
        publisher = await connection.channel(publisher_confirms=True)
        listener = await connection.channel()
        exchange = await listener.declare_exchange(names.events_exchange, ExchangeType.TOPIC, durable=True)
        events = await listener.declare_queue(exclusive=True, auto_delete=True)
        for status in ("completed", "compensated", "stuck"):
            await events.bind(exchange, f"{saga_type}.*.{status}")
        waiting: dict[str, asyncio.Future[str]] = {}
        notes: list[str] | None = [] if timed else None

        async def on_event(message: AbstractIncomingMessage) -> None:
            event = decode(SagaEvent, message.body)
            future = waiting.pop(event.saga_id, None)
            if future is not None and not future.done():
                if notes is not None:
                    notes.append(timing.stamp(event.saga_id, timing.CLIENT, "done"))
                future.set_result(event.status)

        await events.consume(on_event, no_ack=True)
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(in_flight)
        run = Run(count, 0.0, [], notes=notes)
        statuses: dict[str, int] = {}

        async def one(n: int) -> None:
            saga_id = uuid.uuid4().hex
            body = encode(StartSaga(saga_type=saga_type, saga_id=saga_id, data=datas[n]))
            async with gate:
                began = time.perf_counter()
                waiting[saga_id] = loop.create_future()
                done = waiting[saga_id]
                if notes is not None:
                    notes.append(timing.stamp(saga_id, timing.CLIENT, "sent"))
                await publisher.default_exchange.publish(_persistent(body, saga_id), names.start_queue)
                status = await done
                run.latencies.append(time.perf_counter() - began)
            statuses[status] = statuses.get(status, 0) + 1
            run.saga_ids.append(saga_id)
            progress(len(run.saga_ids))

        began = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(count)))
        run.seconds = time.perf_counter() - began
        run.statuses = statuses
        return run
    finally:
        await connection.close()


def _persistent(body: bytes, message_id: str) -> Any:
    import aio_pika

    return aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id=message_id)


@dataclass
class Options:
    sagas: int = 3000
    in_flight: int = 64
    failure_ratio: float = 0.1
    repeat: int = 1
    seed: int = 1
    as_json: bool = False
    parallel: bool = False
    against: str | None = None  # "celery": the same orders as a Celery chain, in the same run


async def run_bench(base: Settings, options: Options) -> int:
    settings = replace(base, namespace=f"{base.namespace}-bench-{uuid.uuid4().hex[:6]}")
    if options.parallel:
        return await run_parallel(settings, options)
    names = settings.names
    # One saga at a time: every process notes when messages pass, for the latency budget.
    timed = options.in_flight == 1
    fleet = Fleet(settings, env={"SAGA_TIMING": "1"} if timed else None)
    say = (lambda *a: print(*a, file=sys.stderr)) if options.as_json else print
    progress = Progress(not options.as_json)
    redis = await connect_redis(settings.redis_url)
    try:
        say(f"starting the orchestrator, {', '.join(PARTICIPANTS)} and the baseline responder ...")
        fleet.orchestrator()
        for participant in PARTICIPANTS:
            fleet.participant(participant)
        fleet.spawn("baseline", "bench-responder")
        celery = options.against == "celery"
        if celery:
            bench_celery.start_worker(fleet)
        await fleet.ready(
            [names.start_queue, names.reply_queue, baseline.request_queue(names)]
            + [names.participant_queue(p) for p in PARTICIPANTS]
            + ([bench_celery.queue(settings)] if celery else [])
        )
        pids: dict[str, int | None] = {name: process.pid for name, process in fleet.processes.items()}
        pids["rabbitmq"] = listener_pid(settings.amqp_url)
        pids["bench"] = os.getpid()  # the driver of sagas, the requester of the ring
        # For a profiler: py-spy top --pid <pid>
        say("pids: " + ", ".join(f"{name} {pid}" for name, pid in pids.items()))
        cpu = Cpu(pids, redis, trees=(bench_celery.WORKER,))
        # Warm up both paths: connections, JIT-free Python caches, queue leaders.
        await drive_sagas(settings, 100, options.in_flight, options.failure_ratio, 0, lambda _: None)
        await baseline.ring(settings, 100, options.in_flight)
        if celery:
            await bench_celery.drive(settings, orders(100, options.failure_ratio, 0), options.in_flight, lambda _: None)

        saga_runs: list[Run] = []
        ring_runs: list[Run] = []
        celery_runs: list[Run] = []
        budgets: list[tuple[dict[str, float], float]] = []
        for r in range(options.repeat):
            await cpu.begin()
            ring = await baseline.ring(
                settings, options.sagas, options.in_flight, progress.begin(f"baseline {r + 1}", options.sagas)
            )
            ring_runs.append(Run(ring.units, ring.seconds, ring.latencies, await cpu.used()))
            if timed:
                await redis.delete(timing.key(names))  # the warm-up's notes
            memory_before = await redis_memory(redis)
            await cpu.begin()
            run = await drive_sagas(
                settings, options.sagas, options.in_flight, options.failure_ratio, options.seed + r,
                progress.begin(f"sagas {r + 1}", options.sagas), timed=timed,
            )  # fmt: skip
            run.cpu = await cpu.used()
            run.redis_bytes = await redis_memory(redis) - memory_before
            saga_runs.append(run)
            if run.notes is not None:
                found = budget.spent(await budget.collect(redis, names, run.count) + run.notes, run.saga_ids)
                if found is not None:
                    budgets.append(budget.p50_ms(*found))
            if celery:
                await cpu.begin()
                seconds, latencies, statuses = await bench_celery.drive(
                    settings, orders(options.sagas, options.failure_ratio, options.seed + r), options.in_flight,
                    progress.begin(f"celery {r + 1}", options.sagas),
                )  # fmt: skip
                celery_runs.append(Run(options.sagas, seconds, latencies, await cpu.used(), statuses))
        store = RedisStore(redis, names)
        histories = [await store.history(saga_id) for saga_id in saga_runs[-1].saga_ids[:1000]]
        report = _report(options, saga_runs, ring_runs, step_latencies(histories))
        if budgets:
            report.update(_budget(budgets))
        if celery:
            report.update(_against(report, celery_runs))
        say(_human(report))
        if options.as_json:
            print(json.dumps(report))
        return 0
    finally:
        fleet.stop()
        await redis.aclose()
        extra = [baseline.request_queue(names), baseline.reply_queue(names)]
        if options.against == "celery":
            extra.append(bench_celery.queue(settings))
        await drop(settings, PARTICIPANTS, extra)
        if options.against == "celery":
            await bench_celery.remove_exchange(settings)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def _report(options: Options, sagas: list[Run], rings: list[Run], held: dict[str, list[float]]) -> dict[str, Any]:
    def latency(runs: list[Run], q: float) -> float:
        return _median([percentile(run.latencies, q) * 1000 for run in runs])

    steps_per_saga = 3
    cpu_per_saga = _cpu_per(sagas)
    cpu_per_unit = _cpu_per(rings)
    saga_only = (*PARTICIPANTS, "orchestrator")
    orchestrator_us = cpu_per_saga.get("orchestrator")
    requester_us = cpu_per_unit.get("bench")
    sagas_per_s = _median([run.per_second for run in sagas])
    units_per_s = _median([run.per_second for run in rings])
    return {
        "sagas": options.sagas,
        "in_flight": options.in_flight,
        "failure_ratio": options.failure_ratio,
        "repeat": options.repeat,
        "sagas_per_s": round(sagas_per_s, 1),
        "baseline_units_per_s": round(units_per_s, 1),
        "ratio": round(sagas_per_s / units_per_s, 3) if units_per_s else None,
        "p50_ms": round(latency(sagas, 50), 2),
        "p95_ms": round(latency(sagas, 95), 2),
        "p99_ms": round(latency(sagas, 99), 2),
        "baseline_p50_ms": round(latency(rings, 50), 2),
        "baseline_p99_ms": round(latency(rings, 99), 2),
        "step_p50_ms": {state: round(percentile(v, 50) * 1000, 2) for state, v in sorted(held.items())},
        "cpu_us_per_saga": cpu_per_saga,
        "baseline_cpu_us_per_unit": {k: v for k, v in cpu_per_unit.items() if k not in saga_only},
        "orchestrator_cpu_us_per_step": None if orchestrator_us is None else round(orchestrator_us / steps_per_saga),
        # The same job done bare, as a yardstick that travels between machines.
        "baseline_requester_cpu_us_per_round_trip": (
            None if requester_us is None else round(requester_us / baseline.ROUND_TRIPS)
        ),
        "redis_bytes_per_saga": round(_median([run.redis_bytes / run.count for run in sagas])),
        "statuses": sagas[-1].statuses,
    }


def _budget(runs: list[tuple[dict[str, float], float]]) -> dict[str, Any]:
    """The median over the runs of each hop's p50, and of the p50 of the whole (at most the sagas' p50)."""
    return {
        "budget": {hop: round(_median([hops[hop] for hops, _ in runs]), 2) for hop in budget.ORDER},
        "budget_total_ms": round(_median([total for _, total in runs]), 2),
    }


def _against(ours: dict[str, Any], runs: list[Run]) -> dict[str, Any]:
    """The Celery side's figures, and ours over theirs."""

    def latency(q: float) -> float:
        return round(_median([percentile(run.latencies, q) * 1000 for run in runs]), 2)

    per_second = _median([run.per_second for run in runs])
    cpu = _cpu_per(runs)
    theirs = {k: v for k, v in cpu.items() if k in (bench_celery.WORKER, "rabbitmq", "redis", "bench")}
    our_total = sum(v for v in ours["cpu_us_per_saga"].values() if v is not None)
    their_total = sum(v for v in theirs.values() if v is not None)
    return {
        "against": "celery",
        "celery": {
            "sagas_per_s": round(per_second, 1),
            "p50_ms": latency(50),
            "p99_ms": latency(99),
            "cpu_us_per_saga": theirs,
            "cpu_us_per_saga_total": their_total,
            "statuses": runs[-1].statuses,
        },
        "cpu_us_per_saga_total": our_total,
        # Above 1 we are faster; the CPU ratio is ours over theirs, below 1 we spend less.
        "celery_ratio": round(ours["sagas_per_s"] / per_second, 3) if per_second else None,
        "celery_cpu_ratio": round(our_total / their_total, 3) if their_total else None,
    }


def _cpu_line(cpu: dict[str, int | None]) -> str:
    total = sum(v for v in cpu.values() if v is not None)
    return ", ".join(f"{k} {'n/a' if v is None else v}" for k, v in cpu.items()) + f" (total {total})"


def _cpu_per(runs: list[Run]) -> dict[str, int | None]:
    """Median CPU µs per saga (or unit) of each process, over the runs."""
    per: dict[str, int | None] = {}
    for name in runs[0].cpu:
        known = [used / run.count for run in runs if (used := run.cpu.get(name)) is not None]
        per[name] = round(_median(known) * 1e6) if known else None
    return per


def _human(report: dict[str, Any]) -> str:
    rows = [
        ["", "per second", "p50 ms", "p95 ms", "p99 ms"],
        ["sagas", f"{report['sagas_per_s']}", f"{report['p50_ms']}", f"{report['p95_ms']}", f"{report['p99_ms']}"],
        [
            "baseline",
            f"{report['baseline_units_per_s']}",
            f"{report['baseline_p50_ms']}",
            "",
            f"{report['baseline_p99_ms']}",
        ],
    ]
    if "celery" in report:
        theirs = report["celery"]
        rows.append(["celery chain", f"{theirs['sagas_per_s']}", f"{theirs['p50_ms']}", "", f"{theirs['p99_ms']}"])
    lines = [
        f"{report['sagas']} order sagas, {report['in_flight']} in flight, {report['failure_ratio']:.0%} failing by "
        f"design; medians of {report['repeat']} run(s)",
        "",
        table(rows),
        "",
        f"ratio (sagas/s / baseline units/s): {report['ratio']}",
        "",
        "latency per step, p50 ms: " + ", ".join(f"{k} {v}" for k, v in report["step_p50_ms"].items()),
        "CPU µs per saga: " + _cpu_line(report["cpu_us_per_saga"]),
        "CPU µs per baseline unit: " + _cpu_line(report["baseline_cpu_us_per_unit"]),
        f"orchestrator CPU per step: {report['orchestrator_cpu_us_per_step']} µs "
        f"(the baseline's requester: {report['baseline_requester_cpu_us_per_round_trip']} µs per round trip)",
        f"Redis memory per finished saga: {report['redis_bytes_per_saga']} bytes",
        f"outcomes: {report['statuses']}",
    ]
    if "budget" in report:
        hops = report["budget"]
        lines[7:7] = [
            "latency budget, p50 ms per saga: " + ", ".join(f"{hop} {ms}" for hop, ms in hops.items()),
            f"  sum {round(sum(hops.values()), 2)}; p50 of the whole {report['budget_total_ms']} "
            f"(client: start sent to outcome taken)",
        ]
    if "celery" in report:
        theirs = report["celery"]
        lines[5:5] = [
            f"ratio (sagas/s / celery chain sagas/s): {report['celery_ratio']}",
            f"CPU per saga, all processes: ours {report['cpu_us_per_saga_total']} µs, celery chain "
            f"{theirs['cpu_us_per_saga_total']} µs, ratio {report['celery_cpu_ratio']}",
        ]
        lines.append("CPU µs per celery saga: " + _cpu_line(theirs["cpu_us_per_saga"]))
        lines.append(f"celery outcomes: {theirs['statuses']}")
    return "\n".join(lines)


async def run_parallel(settings: Settings, options: Options) -> int:
    """The shipped trip (bookings at once) beside `trip_in_line` (one after the other), alternating, in one run."""
    names = settings.names
    fleet = Fleet(settings)
    say = (lambda *a: print(*a, file=sys.stderr)) if options.as_json else print
    progress = Progress(not options.as_json)
    try:
        say(f"starting the orchestrator and {', '.join(TRIP_PARTICIPANTS)} ...")
        fleet.orchestrator("orchestrator", "--sagas", "orchestrator.tools.bench_sagas")
        for participant in TRIP_PARTICIPANTS:
            fleet.participant(participant)
        await fleet.ready(
            [names.start_queue, names.reply_queue] + [names.participant_queue(p) for p in TRIP_PARTICIPANTS]
        )
        sides = (("parallel", "trip"), ("sequential", "trip_in_line"))
        for _, saga_type in sides:
            await drive_sagas(settings, 50, options.in_flight, 0.0, 0, lambda _: None, saga_type, trip_data)
        runs: dict[str, list[Run]] = {side: [] for side, _ in sides}
        for r in range(options.repeat):
            for side, saga_type in sides:
                runs[side].append(
                    await drive_sagas(
                        settings,
                        options.sagas,
                        options.in_flight,
                        options.failure_ratio,
                        options.seed + r,
                        progress.begin(f"{side} {r + 1}", options.sagas),
                        saga_type,
                        trip_data,
                    )
                )
        report = _parallel_report(options, runs)
        say(_parallel_human(report))
        if options.as_json:
            print(json.dumps(report))
        return 0
    finally:
        fleet.stop()
        await drop(settings, TRIP_PARTICIPANTS)


def _side(runs: list[Run], saga_type: str) -> dict[str, Any]:
    def latency(q: float) -> float:
        return round(_median([percentile(run.latencies, q) * 1000 for run in runs]), 2)

    return {
        "saga_type": saga_type,
        "sagas_per_s": round(_median([run.per_second for run in runs]), 1),
        "p50_ms": latency(50),
        "p95_ms": latency(95),
        "p99_ms": latency(99),
        "statuses": dict(runs[-1].statuses),
    }


def _parallel_report(options: Options, runs: dict[str, list[Run]]) -> dict[str, Any]:
    parallel = _side(runs["parallel"], "trip")
    sequential = _side(runs["sequential"], "trip_in_line")
    raw = {side: _median([percentile(run.latencies, 50) for run in found]) for side, found in runs.items()}
    return {
        "mode": "parallel",
        "sagas": options.sagas,
        "in_flight": options.in_flight,
        "failure_ratio": options.failure_ratio,
        "repeat": options.repeat,
        "parallel": parallel,
        "sequential": sequential,
        # Below 1: the parallel trip ends sooner than the same bookings in line.
        "p50_ratio": round(raw["parallel"] / raw["sequential"], 3) if raw["sequential"] else None,
    }


def _parallel_human(report: dict[str, Any]) -> str:
    rows = [["", "saga type", "per second", "p50 ms", "p95 ms", "p99 ms"]]
    for side in ("parallel", "sequential"):
        found = report[side]
        rows.append(
            [side, found["saga_type"], f"{found['sagas_per_s']}", f"{found['p50_ms']}", f"{found['p95_ms']}",
             f"{found['p99_ms']}"]
        )  # fmt: skip
    return "\n".join(
        [
            f"{report['sagas']} trip sagas per side, {report['in_flight']} in flight, {report['failure_ratio']:.0%} "
            f"failing by design; medians of {report['repeat']} run(s)",
            "",
            table(rows),
            "",
            f"p50 ratio (parallel / sequential): {report['p50_ratio']}",
            f"outcomes: parallel {report['parallel']['statuses']}, sequential {report['sequential']['statuses']}",
        ]
    )

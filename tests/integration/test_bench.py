"""`saga bench` as a user runs it: real processes, a JSON report, nothing left behind."""

from __future__ import annotations

import json
import subprocess

import pytest
from redis.asyncio import Redis

from participants.edge.settings import Settings
from tests.integration.conftest import saga_command, saga_env


def bench(settings: Settings, *args: str) -> tuple[dict[str, object], str]:
    done = subprocess.run(
        saga_command("bench", *args, "--json"), env=saga_env(settings), capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    return json.loads(last), done.stderr


async def _leftovers(redis: Redis, settings: Settings) -> list[bytes]:
    return [key async for key in redis.scan_iter(match=f"{settings.namespace}-*", count=1000)]


async def test_bench_reports_sagas_against_the_ring_and_cleans_up(settings: Settings, redis: Redis) -> None:
    report, stderr = bench(settings, "--sagas", "40", "--in-flight", "8", "--failure-ratio", "0.5")

    assert report["sagas"] == 40 and report["in_flight"] == 8
    assert isinstance(report["sagas_per_s"], float) and report["sagas_per_s"] > 0
    assert isinstance(report["baseline_units_per_s"], float) and report["baseline_units_per_s"] > 0
    # The report rounds the rates; the ratio is taken before rounding.
    assert report["ratio"] == pytest.approx(report["sagas_per_s"] / report["baseline_units_per_s"], abs=0.01)
    assert 0 < report["p50_ms"] <= report["p95_ms"] <= report["p99_ms"]  # type: ignore[operator]
    statuses = report["statuses"]
    assert isinstance(statuses, dict) and sum(statuses.values()) == 40
    assert statuses.get("completed", 0) > 0 and statuses.get("compensated", 0) > 0
    cpu = report["cpu_us_per_saga"]
    # /proc counts in 10 ms ticks: a short run may see 0 for a light process, never nothing.
    # (RabbitMQ and Redis may run in containers, out of sight.)
    assert isinstance(cpu, dict) and all(cpu[name] is not None for name in ("orchestrator", "inventory", "payment"))
    assert cpu["orchestrator"] > 0
    assert report["orchestrator_cpu_us_per_step"] is not None
    assert report["baseline_requester_cpu_us_per_round_trip"] is not None
    assert "reserve_inventory" in report["step_p50_ms"]  # type: ignore[operator]
    assert "budget" not in report  # only one saga at a time lays its hops end to end
    assert "ratio (sagas/s / baseline units/s)" in stderr  # the human report goes to stderr with --json
    assert await _leftovers(redis, settings) == []


async def test_bench_waiting_fires_every_parked_timeout(settings: Settings, redis: Redis) -> None:
    report, _ = bench(settings, "--waiting", "200", "--sagas", "20", "--in-flight", "4")

    assert report["waiting"] == 200
    assert report["redis_bytes_per_waiting_saga"] > 0  # type: ignore[operator]
    assert report["sagas_per_s_while_waiting"] > 0  # type: ignore[operator]
    assert report["seconds_to_fire_all_timeouts"] > 0  # type: ignore[operator]
    assert await _leftovers(redis, settings) == []


async def test_bench_parallel_puts_the_parallel_trip_beside_the_trip_in_line(settings: Settings, redis: Redis) -> None:
    report, stderr = bench(settings, "--parallel", "--sagas", "30", "--in-flight", "6", "--failure-ratio", "0.3")

    assert report["mode"] == "parallel" and report["sagas"] == 30
    sides = (report["parallel"], report["sequential"])
    assert [side["saga_type"] for side in sides] == ["trip", "trip_in_line"]  # type: ignore[index]
    for side in sides:
        assert isinstance(side, dict) and 0 < side["p50_ms"] <= side["p95_ms"] <= side["p99_ms"]
        assert side["sagas_per_s"] > 0 and sum(side["statuses"].values()) == 30
        # Both sides ran the same seeded workload: some trips fail by design and compensate.
        assert side["statuses"].get("completed", 0) > 0 and side["statuses"].get("compensated", 0) > 0
    parallel, sequential = sides
    assert isinstance(parallel, dict) and isinstance(sequential, dict)
    # The ratio is of the p50s before rounding; no claim on which side is faster.
    assert report["p50_ratio"] == pytest.approx(parallel["p50_ms"] / sequential["p50_ms"], rel=0.02)
    assert "p50 ratio (parallel / sequential)" in stderr
    assert await _leftovers(redis, settings) == []


def test_bench_refuses_two_modes_at_once(settings: Settings) -> None:
    done = subprocess.run(
        saga_command("bench", "--parallel", "--waiting", "10"), env=saga_env(settings), capture_output=True, text=True
    )
    assert done.returncode == 1 and "give one of them" in done.stderr and "Traceback" not in done.stderr


async def test_bench_against_celery_runs_the_same_orders_as_a_chain(settings: Settings, redis: Redis) -> None:
    report, stderr = bench(
        settings, "--sagas", "20", "--in-flight", "4", "--failure-ratio", "0.5", "--against", "celery"
    )

    celery = report["celery"]
    assert report["against"] == "celery" and isinstance(celery, dict)
    # The same seed gives both sides the same orders, hence the same outcomes.
    assert celery["statuses"] == report["statuses"] and sum(celery["statuses"].values()) == 20
    assert celery["sagas_per_s"] > 0 and 0 < celery["p50_ms"] <= celery["p99_ms"]
    assert report["celery_ratio"] == pytest.approx(report["sagas_per_s"] / celery["sagas_per_s"], abs=0.01)
    assert celery["cpu_us_per_saga"]["celery"] > 0  # the worker and its prefork pool
    assert report["celery_cpu_ratio"] == pytest.approx(
        report["cpu_us_per_saga_total"] / celery["cpu_us_per_saga_total"], abs=0.01
    )
    assert "ratio (sagas/s / celery chain sagas/s)" in stderr
    assert await _leftovers(redis, settings) == []


async def test_bench_at_one_in_flight_lays_out_the_latency_budget(settings: Settings, redis: Redis) -> None:
    report, stderr = bench(settings, "--sagas", "20", "--in-flight", "1", "--failure-ratio", "0")

    hops = report["budget"]
    assert isinstance(hops, dict)
    assert list(hops) == [
        "client_to_orchestrator",
        "orchestrator_commit",
        "orchestrator_publish",
        "orchestrator_to_participant",
        "participant_work",
        "participant_to_orchestrator",
        "orchestrator_to_client",
        "other",
    ]
    assert all(isinstance(ms, float) and ms >= 0 for ms in hops.values())
    # Every message of an order saga is one of the named hops.
    assert hops["other"] == 0
    for crossed in ("client_to_orchestrator", "orchestrator_commit", "orchestrator_to_participant"):
        assert hops[crossed] > 0
    total = report["budget_total_ms"]
    assert isinstance(total, float) and 0 < total <= report["p50_ms"]  # type: ignore[operator]
    # Medians of the parts need not add up to the median of the whole, but roughly do.
    assert 0.5 * total <= sum(hops.values()) <= 1.5 * total
    assert "latency budget, p50 ms per saga" in stderr
    assert await _leftovers(redis, settings) == []

"""/metrics after a run of known sagas: the counts match what was sent."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from participants.edge import metrics
from participants.edge.settings import Settings
from participants.worker import Context, Failure, Worker
from statemachines.dsl import Retry, Saga, Step
from statemachines.sagas import SAGAS
from tests.integration.conftest import eventually, example_workers, running, saga_command, saga_env
from tests.integration.scripted import publish_raw
from tests.integration.test_end_to_end import order

# Its participant never answers: every attempt times out.
silent = Saga(
    "mx_silent",
    steps=[Step("ask", participant="mx_void", command="ask", timeout=0.3, retry=Retry(2, backoff=0.05, jitter=0))],
)


@pytest.fixture
async def served() -> AsyncIterator[str]:
    port = metrics.serve(0)
    yield f"http://127.0.0.1:{port}/metrics"
    metrics.disable()


async def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with httpx.AsyncClient() as http:
        text = (await http.get(url)).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_count_what_a_run_of_known_sagas_did(settings: Settings, served: str) -> None:
    async with running(settings, sagas=[*SAGAS, silent], workers=example_workers()) as stack:
        outcomes = await asyncio.gather(
            *(stack.run("order", order()) for _ in range(4)),
            *(stack.run("order", order(fail_at=["charge_payment"])) for _ in range(3)),
            stack.run("mx_silent", {}),
        )
        assert sorted(o.status for o in outcomes) == ["compensated"] * 4 + ["completed"] * 4
        # Dead letters: a reply that is not JSON, a start of a type nobody runs.
        await publish_raw(settings, stack.names.reply_queue, b"not json", message_id="junk")
        await stack.client.start("no_such_saga", {}, saga_id=f"x-{uuid.uuid4().hex[:6]}")
        reply_queue, start_queue = stack.names.reply_queue, stack.names.start_queue

        async def dead_letters_counted() -> Any:
            samples = await scrape(served)
            dead = value(samples, "saga_dead_letters_total", queue=reply_queue, reason="malformed")
            dead += value(samples, "saga_dead_letters_total", queue=start_queue, reason="rejected")
            return samples if dead == 2 else None

        samples = await eventually(dead_letters_counted)

    assert value(samples, "saga_started_total", saga_type="order") == 7
    assert value(samples, "saga_started_total", saga_type="mx_silent") == 1
    assert value(samples, "saga_finished_total", saga_type="order", outcome="completed") == 4
    assert value(samples, "saga_finished_total", saga_type="order", outcome="compensated") == 3
    assert value(samples, "saga_finished_total", saga_type="mx_silent", outcome="compensated") == 1
    # Each failed order releases its stock: one compensation each.
    assert value(samples, "saga_compensations_total", saga_type="order") == 3
    assert value(samples, "saga_duration_seconds_count", saga_type="order", outcome="completed") == 4
    # Two attempts of the silent step, both timed out; the second one was a retry.
    assert value(samples, "saga_step_timeouts_total", saga_type="mx_silent", step="ask", action="do") == 2
    assert value(samples, "saga_step_retries_total", saga_type="mx_silent", step="ask", action="do") == 1
    assert value(samples, "saga_deadline_lateness_seconds_count", saga_type="mx_silent") == 3  # 2 timeouts, 1 resend
    # Every order reached charge_payment once, and each reply's latency was observed.
    steps = "saga_step_duration_seconds_count"
    assert value(samples, steps, saga_type="order", step="charge_payment", action="do") == 7
    assert value(samples, steps, saga_type="order", step="create_shipment", action="do") == 4
    assert value(samples, steps, saga_type="order", step="reserve_inventory", action="compensate") == 3
    assert value(samples, "saga_refused_total", message="reply", reason="malformed") == 1
    assert value(samples, "saga_refused_total", message="start", reason="rejected") == 1
    # The workers ran in this process, so their metrics are here too.
    handled = "saga_commands_handled_total"
    assert value(samples, handled, participant="payment", command="charge", outcome="success") == 4
    assert value(samples, handled, participant="payment", command="charge", outcome="failure") == 3
    assert value(samples, "saga_handler_duration_seconds_count", participant="shipping", command="create_shipment") == 4
    assert not [key for key in samples if any(v in str(key) for v in (o.saga_id for o in outcomes))]


# Its second step, past the pivot, always fails: the saga gets stuck.
sticky = Saga(
    "mx_sticky",
    steps=[
        Step("go", participant="mx_desk", command="go", pivot=True),
        Step("then", participant="mx_desk", command="refuse", retry=Retry(1)),
    ],
)


# Its participant never answers and it waits a minute: in flight for the whole test.
waits = Saga("mx_waits", steps=[Step("ask", participant="mx_void", command="ask", timeout=60)])


def sticky_desk() -> Worker:
    worker = Worker("mx_desk")

    @worker.handler("go")
    async def go(ctx: Context) -> None:
        return None

    @worker.handler("refuse")
    async def refuse(ctx: Context) -> None:
        raise Failure("no", "never")

    return worker


async def test_the_orchestrator_reads_its_backlogs_and_stuck_sagas_from_indexes(
    settings: Settings, served: str
) -> None:
    async with running(settings, sagas=[*SAGAS, sticky, waits], workers=[*example_workers(), sticky_desk()]) as stack:
        await stack.run("order", order())
        waiting = await stack.client.start("mx_waits", {})
        stuck = [await stack.run("mx_sticky", {}) for _ in range(2)]
        assert [s.status for s in stuck] == ["stuck", "stuck"]
        redis = stack.workers[0].redis
        assert redis is not None
        await eventually(lambda: _indexed(redis, stack.names.stuck_index, 2))
        # One of them resumed by a process that keeps no index (the CLI, say): the poll finds it gone.
        await redis.hset(stack.names.saga_key(stuck[0].saga_id), "status", "running")
        # The other, stuck three hours ago: stuck sagas never expire, the gauge tells one was forgotten.
        await redis.zadd(stack.names.stuck_index, {stuck[1].saga_id: int((time.time() - 3 * 3600) * 1000)})
        await eventually(lambda: _running(stack, waiting))
        await metrics.read_backlogs(redis, stack.names)
        samples = await scrape(served)
        assert await redis.zcard(stack.names.stuck_index) == 1
    assert value(samples, "saga_stuck_sagas", saga_type="mx_sticky") == 1
    assert value(samples, "saga_in_flight_sagas") == 1
    assert value(samples, "saga_outbox_backlog") == 0
    assert value(samples, "saga_deadline_lag_seconds") == 0
    assert 3 * 3600 <= value(samples, "saga_oldest_stuck_seconds") < 3 * 3600 + 600


async def _running(stack: Any, saga_id: str) -> bool:
    inst = await stack.client.status(saga_id)
    return inst is not None and inst.status == "running"


async def _indexed(redis: Any, key: str, count: int) -> bool:
    return bool(await redis.zcard(key) == count)


async def test_a_process_serves_metrics_on_the_port_it_is_given(settings: Settings) -> None:
    with _payment_worker(settings) as process:
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 30)
            logged = json.loads(line)
            assert logged["logger"] == "saga.metrics" and logged["level"] == "INFO"
            url = logged["message"].removeprefix("metrics at ")
            assert url.startswith("http://127.0.0.1:")
            samples = await scrape(url)
            assert ("process_cpu_seconds_total", frozenset()) in samples
            assert "saga_commands_handled_total" in (await _text(url))
        finally:
            process.terminate()
            process.wait(20)


def _payment_worker(settings: Settings) -> subprocess.Popen[str]:
    args = ("participants.examples.payment:worker", "--metrics-port", "0", "--log-format", "json")
    command = saga_command("participant", *args)
    out = subprocess.PIPE
    return subprocess.Popen(command, env=saga_env(settings), stdout=out, stderr=subprocess.STDOUT, text=True)


async def _text(url: str) -> str:
    async with httpx.AsyncClient() as http:
        return (await http.get(url)).text


def test_metrics_without_prometheus_client_is_one_sentence(settings: Settings) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _NO_PROMETHEUS],
        env=saga_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "saga: --metrics-port needs prometheus_client: install the `metrics` extra "
        "(pip install 'saga-orchestrator[metrics]')"
    )


# prometheus_client hidden, then `saga orchestrator --metrics-port 0`.
_NO_PROMETHEUS = (
    "import sys; sys.modules['prometheus_client'] = None; "
    "from orchestrator.cli import main; sys.exit(main(['orchestrator', '--metrics-port', '0']))"
)

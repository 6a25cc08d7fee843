"""The real `saga` command, run as subprocesses, against real services."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.store import RedisStore
from participants.edge.connections import connect_redis
from participants.edge.settings import Settings
from tests.integration.conftest import remove_namespace, saga_command, saga_env, spawn
from tests.integration.test_end_to_end import order

PARTICIPANTS = ["inventory", "payment", "shipping", "flight", "hotel", "car"]


def wait_for_line(log: Path, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in {log}:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)


class Processes:
    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str, ready: str) -> subprocess.Popen[bytes]:
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            process = spawn(self.settings, *args, log=out)
        self.running[name] = process
        wait_for_line(log, ready)
        return process

    def orchestrator(self) -> subprocess.Popen[bytes]:
        return self.start("orchestrator", "orchestrator", ready="orchestrator up")

    def participant(self, name: str) -> subprocess.Popen[bytes]:
        return self.start(name, "participant", f"participants.examples.{name}:worker", ready=f"participant {name!r} up")

    def stop_all(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.terminate()
        for process in self.running.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def processes(settings: Settings, tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(settings, tmp_path)
    yield procs
    procs.stop_all()
    asyncio.run(remove_namespace(settings, set(PARTICIPANTS)))


@pytest.fixture
def everything(processes: Processes) -> Processes:
    processes.orchestrator()
    for name in PARTICIPANTS:
        processes.participant(name)
    return processes


def saga(settings: Settings, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        saga_command(*args), env=saga_env(settings), capture_output=True, text=True, timeout=timeout, check=False
    )


def test_start_wait_prints_the_outcome_and_exits_by_it(settings: Settings, everything: Processes) -> None:
    data = json.dumps(order())
    done = saga(settings, "start", "order", "--data", data, "--id", "cli-1", "--wait", "--timeout", "20")
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["status"] == "completed" and outcome["saga_id"] == "cli-1"

    failed = saga(settings, "start", "order", "--data", json.dumps(order(fail_at=["create_shipment"])), "--wait")
    assert failed.returncode == 1
    assert json.loads(failed.stdout.strip().splitlines()[-1])["status"] == "compensated"

    again = saga(settings, "start", "order", "--data", data, "--id", "cli-1", "--wait", "--timeout", "5")
    assert again.returncode == 0, "the same start again reports the ended saga's outcome"
    other = saga(settings, "start", "order", "--data", json.dumps(order()), "--id", "cli-1", "--wait", "--timeout", "5")
    assert other.returncode == 5, "the id with other data is a conflict"
    assert "exists already, started with other data" in other.stderr

    shown = saga(settings, "show", "cli-1")
    assert shown.returncode == 0
    for text in ("status    completed", "reserve_inventory -> check_fraud", "history"):
        assert text in shown.stdout
    doc = json.loads(saga(settings, "show", "cli-1", "--json").stdout)
    assert doc["status"] == "completed" and [h["event"] for h in doc["history"]].count("start") == 1

    table = saga(settings, "list").stdout.splitlines()
    assert table[0].split() == ["ID", "TYPE", "STATUS", "STATE", "CREATED", "UPDATED"]
    [row] = [line for line in table if line.startswith("cli-1 ")]
    assert row.count(" UTC") == 2, "created and updated, with their time zone"
    listed = saga(settings, "list", "--status", "completed", "--json")
    assert [json.loads(line)["saga_id"] for line in listed.stdout.splitlines()] == ["cli-1"]
    assert "1 saga(s)" in saga(settings, "list", "--status", "compensated").stderr


def test_start_without_wait_prints_the_id(settings: Settings, everything: Processes) -> None:
    done = saga(settings, "start", "trip", "--data", '{"trip_id": "t", "customer_id": "c", "destination": "rome"}')
    assert done.returncode == 0
    saga_id = done.stdout.strip()
    assert len(saga_id) == 36

    async def status() -> str | None:
        store = RedisStore(await connect_redis(settings.redis_url), settings.names)
        try:
            for _ in range(200):
                inst = await store.load(saga_id)
                if inst is not None and inst.status == "completed":
                    return inst.status
                await asyncio.sleep(0.05)
            return None
        finally:
            await store.redis.aclose()

    assert asyncio.run(status()) == "completed"


def test_wait_times_out_with_exit_code_2(settings: Settings, processes: Processes) -> None:
    processes.orchestrator()  # no participants: nobody answers
    done = saga(settings, "start", "order", "--data", json.dumps(order()), "--wait", "--timeout", "1")
    assert done.returncode == 2
    assert json.loads(done.stdout)["status"] == "timeout"


def test_graph_export(settings: Settings) -> None:
    mermaid = saga(settings, "graph", "order", "--format", "mermaid")
    assert mermaid.returncode == 0 and mermaid.stdout.startswith("stateDiagram-v2")
    assert "inventory: reserve_stock" in mermaid.stdout
    dot = saga(settings, "graph", "trip", "--format", "dot")
    assert dot.returncode == 0 and dot.stdout.startswith("digraph")


def test_unreachable_services_get_one_sentence_without_the_password(settings: Settings) -> None:
    data = json.dumps(order())
    rabbit = saga(settings, "start", "order", "--data", data, "--amqp-url", "amqp://guest:s3cret@127.0.0.1:1/")
    assert rabbit.returncode == 3
    assert rabbit.stderr.startswith("saga: Cannot reach RabbitMQ at amqp://guest:***@127.0.0.1:1/")
    redis = saga(settings, "list", "--redis-url", "redis://:s3cret@127.0.0.1:1/0")
    assert redis.returncode == 3
    assert redis.stderr.startswith("saga: Cannot reach Redis at redis://:***@127.0.0.1:1/0")
    for result in (rabbit, redis):
        assert "s3cret" not in result.stderr + result.stdout
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def test_a_wrong_password_is_its_own_sentence_and_exit_code(settings: Settings) -> None:
    for args in (["start", "order", "--data", json.dumps(order())], ["orchestrator"]):
        result = saga(settings, *args, "--amqp-url", "amqp://guest:s3cret-wrong@127.0.0.1:5672/")
        assert result.returncode == 7, result.stderr
        said = result.stderr.strip().splitlines()[-1]
        assert said.startswith("saga: RabbitMQ at amqp://guest:***@127.0.0.1:5672/ refused the login"), said
        assert "s3cret" not in result.stderr and "Traceback" not in result.stderr


def test_bad_input_gets_a_sentence_not_a_traceback(settings: Settings) -> None:
    for args in (
        ["start", "order", "--data", "{nope"],
        ["graph", "nothing"],
        ["participant", "no.such.module:worker"],
        ["show", "no-such-saga"],
        ["orchestrator", "--amqp-url", "amqp://guest:s3cret@127.0.0.1:abc/"],
        ["orchestrator", "--max-in-flight", "0"],
        ["orchestrator", "--hold-seconds", "-1"],
        ["participant", "participants.examples.payment:worker", "--redis-url", "redis://127.0.0.1:port/0"],
    ):
        result = saga(settings, *args)
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.startswith("saga: ") and "Traceback" not in result.stderr
        assert "s3cret" not in result.stderr
    unknown_flag = saga(settings, "start", "order", "--colour", "red")
    assert unknown_flag.returncode == 2 and "Traceback" not in unknown_flag.stderr
    # The flag is named, by the subcommand, with its usage.
    assert unknown_flag.stderr.startswith("usage: saga start ")
    assert "saga start: error: unrecognized arguments: --colour red" in unknown_flag.stderr
    nested = saga(settings, "dead-letters", "list", "--bogus")
    assert nested.returncode == 2 and "saga dead-letters list: error: unrecognized arguments: --bogus" in nested.stderr


def test_version_and_help(settings: Settings) -> None:
    version = saga(settings, "--version")
    assert version.returncode == 0 and version.stdout.startswith("saga ") and version.stdout.strip() != "saga"
    helped = saga(settings, "--help")
    assert helped.returncode == 0 and "==SUPPRESS==" not in helped.stdout
    assert "dead-letters" in helped.stdout and "bench-responder" not in helped.stdout
    start = saga(settings, "start", "--help")
    assert "4 the start was refused" in " ".join(start.stdout.split())


def test_sigterm_drains_and_a_restart_finishes_everything(settings: Settings, everything: Processes) -> None:
    async def scenario() -> list[str]:
        from orchestrator.client import SagaClient

        async with await SagaClient.connect(settings) as client:
            ids = [await client.start("order", order()) for _ in range(300)]
            await asyncio.sleep(0.3)
            orchestrator = everything.running["orchestrator"]
            orchestrator.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(orchestrator.wait, 20) == 0
            assert "orchestrator stopped" in (everything.logs / "orchestrator.log").read_text()
            everything.orchestrator()
            statuses: list[str] = []
            for _ in range(400):
                statuses = [inst.status if (inst := await client.status(i)) else "missing" for i in ids]
                if all(s == "completed" for s in statuses):
                    break
                await asyncio.sleep(0.05)
            return statuses

    statuses = asyncio.run(scenario())
    assert statuses.count("completed") == 300, {s: statuses.count(s) for s in set(statuses)}

"""Real RabbitMQ and Redis for integration tests; never mocks.

Where the services come from, first match wins:
1. SAGA_TEST_AMQP_URL / SAGA_TEST_REDIS_URL,
2. the local services on 127.0.0.1:5672 and 127.0.0.1:6379,
3. containers started with testcontainers, where a Docker engine runs.
Otherwise the run fails with a sentence saying what to start.

Every test gets a namespace of its own and deletes its queues, exchanges and
keys afterwards; the services themselves are left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from redis.asyncio import Redis

from orchestrator.client import SagaClient
from orchestrator.namespace import drop
from orchestrator.registry import Registry
from orchestrator.service import Orchestrator, Tuning
from participants.edge.settings import Settings
from participants.worker import Worker
from statemachines.dsl import Saga
from statemachines.names import Names
from statemachines.sagas import SAGAS

LOCAL_AMQP = "amqp://guest:guest@127.0.0.1:5672/"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


def _answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


@pytest.fixture(scope="session")
def services() -> Iterator[tuple[str, str]]:
    amqp = os.environ.get("SAGA_TEST_AMQP_URL")
    redis = os.environ.get("SAGA_TEST_REDIS_URL")
    containers: list[Any] = []
    if amqp is None and _answers("127.0.0.1", 5672):
        amqp = LOCAL_AMQP
    if redis is None and _answers("127.0.0.1", 6379):
        redis = LOCAL_REDIS
    if amqp is None or redis is None:
        try:
            amqp, redis = _containers(amqp, redis, containers)
        except Exception as exc:
            pytest.fail(
                "Integration tests need RabbitMQ and Redis: start them (`docker compose up -d rabbitmq redis`, "
                "or `rabbitmq-server -detached` and `redis-server --daemonize yes`), or set SAGA_TEST_AMQP_URL "
                f"and SAGA_TEST_REDIS_URL; no Docker engine to start containers either ({exc}).",
                pytrace=False,
            )
    yield amqp, redis
    for container in containers:
        container.stop()


def _containers(amqp: str | None, redis: str | None, started: list[Any]) -> tuple[str, str]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    if amqp is None:
        rabbit = DockerContainer("rabbitmq:3.13-alpine").with_exposed_ports(5672)
        rabbit.start()
        started.append(rabbit)
        wait_for_logs(rabbit, "Server startup complete", timeout=120)
        amqp = f"amqp://guest:guest@{rabbit.get_container_host_ip()}:{rabbit.get_exposed_port(5672)}/"
    if redis is None:
        container = DockerContainer("redis:7-alpine").with_exposed_ports(6379)
        container.start()
        started.append(container)
        wait_for_logs(container, "Ready to accept connections", timeout=60)
        redis = f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"
    return amqp, redis


@pytest.fixture(scope="session", autouse=True)
def shared_services_stay_up(services: tuple[str, str]) -> Iterator[None]:
    """`make test` never stops, restarts or kills the RabbitMQ and Redis it shares with others (see shared.py)."""
    from tests.integration.shared import Watch

    watch = Watch(*services)
    watch.start()
    yield
    problems = watch.stop()
    if problems:
        pytest.fail("the shared services did not run throughout: " + "; ".join(problems), pytrace=False)


@pytest.fixture
def settings(services: tuple[str, str], request: pytest.FixtureRequest) -> Settings:
    amqp, redis = services
    # SAGA_QUEUE_TYPE=classic runs a test over classic queues, its `saga` subprocesses too;
    # a module runs over both with `pytestmark = BOTH_QUEUE_TYPES`.
    queue_type = getattr(request, "param", None) or os.environ.get("SAGA_QUEUE_TYPE") or "quorum"
    return Settings(amqp_url=amqp, redis_url=redis, namespace=f"t{uuid.uuid4().hex[:10]}", queue_type=queue_type)


BOTH_QUEUE_TYPES = pytest.mark.parametrize("settings", ["quorum", "classic"], indirect=True)


@pytest.fixture
def names(settings: Settings) -> Names:
    return settings.names


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def cleanup(settings: Settings) -> AsyncIterator[set[str]]:
    """Deletes the namespace's queues, exchanges and keys after the test; add participant names to it."""
    participants: set[str] = set()
    yield participants
    await remove_namespace(settings, participants)


async def remove_namespace(settings: Settings, participants: set[str]) -> None:
    await drop(settings, participants | {participant for saga in SAGAS for participant in saga.participants})


def example_workers() -> list[Worker]:
    from participants.examples import backup_payment, car, flight, fraud, hotel, inventory, payment, shipping

    return [m.worker for m in (inventory, payment, backup_payment, fraud, shipping, flight, hotel, car)]


# Quick timers, so tests about timeouts and sweeps do not wait long.
FAST = Tuning(prefetch=64, tick=0.02, lease=2.0, sweep_every=0.3, sweep_grace=0.5, drain_timeout=10.0, bucket_lease=2.0)


@dataclass
class Stack:
    """An orchestrator and workers running in this test's event loop."""

    settings: Settings
    client: SagaClient
    orchestrators: list[Orchestrator]
    workers: list[Worker]
    sagas: Sequence[Saga]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> Names:
        return self.settings.names

    async def add_orchestrator(self, tuning: Tuning = FAST) -> Orchestrator:
        orchestrator = Orchestrator(self.settings, Registry(list(self.sagas)), tuning)
        await orchestrator.start()
        self.orchestrators.append(orchestrator)
        return orchestrator

    async def run(self, saga_type: str, data: dict[str, Any], timeout: float = 20.0, **kw: Any) -> Any:
        return await self.client.start(saga_type, data, wait=True, timeout=timeout, **kw)


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    sagas: Sequence[Saga] = SAGAS,
    workers: Sequence[Worker] | None = None,
    orchestrators: int = 1,
    tuning: Tuning = FAST,
) -> AsyncIterator[Stack]:
    workers = list(example_workers() if workers is None else workers)
    stack = Stack(settings, await SagaClient.connect(settings), [], [], sagas)
    try:
        for _ in range(orchestrators):
            await stack.add_orchestrator(tuning)
        for worker in workers:
            await worker.start(settings)
            stack.workers.append(worker)
        yield stack
    finally:
        for worker in stack.workers:
            await worker.close()
        for orchestrator in stack.orchestrators:
            await orchestrator.close()
        await stack.client.close()
        await remove_namespace(settings, {w.name for w in workers})


@pytest.fixture
async def stack(settings: Settings) -> AsyncIterator[Stack]:
    async with running(settings) as stack:
        yield stack


def saga_env(settings: Settings) -> dict[str, str]:
    """The environment for a `saga` subprocess in this test's namespace."""
    return {
        **os.environ,
        "SAGA_AMQP_URL": settings.amqp_url,
        "SAGA_REDIS_URL": settings.redis_url,
        "SAGA_NAMESPACE": settings.namespace,
        "SAGA_QUEUE_TYPE": settings.queue_type,
        "PYTHONUNBUFFERED": "1",
    }


def saga_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "orchestrator.cli", *args]


def spawn(settings: Settings, *args: str, log: Any = None) -> subprocess.Popen[bytes]:
    """Start a real `saga` process (orchestrator, participant...) in this test's namespace."""
    return subprocess.Popen(
        saga_command(*args), env=saga_env(settings), stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT
    )


async def eventually(check: Any, timeout: float = 10.0, every: float = 0.05) -> Any:
    """Await `check()` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"still {result!r} after {timeout}s")
        await asyncio.sleep(every)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)

"""Do RabbitMQ and Redis answer? If not, start them with Docker where it runs."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

from participants.edge.connections import Unreachable, connect_amqp, connect_redis
from participants.edge.settings import Settings

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


async def _problems(settings: Settings) -> list[Unreachable]:
    problems = []
    try:
        connection = await connect_amqp(settings.amqp_url, connect_timeout=3)
        await connection.close()
    except Unreachable as exc:
        problems.append(exc)
    try:
        redis = await connect_redis(settings.redis_url, connect_timeout=3)
        await redis.aclose()
    except Unreachable as exc:
        problems.append(exc)
    return problems


def docker_runs() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


async def check(settings: Settings, start: bool = False, wait: float = 90.0) -> None:
    """Return when both services answer; raise Unreachable with what to do otherwise."""
    problems = await _problems(settings)
    if not problems:
        return
    if not start or not COMPOSE_FILE.exists() or not await asyncio.to_thread(docker_runs):
        raise problems[0]
    print("RabbitMQ or Redis does not answer; starting them with `docker compose up -d rabbitmq redis` ...")
    command = ["docker", "compose", "-f", str(COMPOSE_FILE), "up", "-d", "rabbitmq", "redis"]
    await asyncio.to_thread(subprocess.run, command, check=True)
    deadline = asyncio.get_running_loop().time() + wait
    while problems := await _problems(settings):
        if asyncio.get_running_loop().time() > deadline:
            raise problems[0]
        await asyncio.sleep(1)

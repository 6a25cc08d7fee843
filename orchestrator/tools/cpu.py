"""CPU seconds used by processes, read where the operating system tells it.

Child processes and a local RabbitMQ are read from /proc (Linux); Redis
reports its own through INFO, so it is measured wherever it runs. Anything
that cannot be read is None, and reports print "n/a" rather than guess.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

from redis.asyncio import Redis

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu(pid: int) -> float | None:
    """User plus system CPU seconds of `pid` so far, or None if it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces; the fields we want follow its ')'.
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def tree_cpu(pid: int) -> float | None:
    """CPU seconds of `pid` and every process below it (a prefork worker's pool), or None."""
    own = process_cpu(pid)
    if own is None:
        return None
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children += [int(child) for child in task.read_text().split()]
        except OSError:
            continue
    return own + sum(used for child in children if (used := tree_cpu(child)) is not None)


def listener_pid(url: str) -> int | None:
    """The pid of the local process listening on the URL's port (RabbitMQ's Erlang VM), if any."""
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
    try:
        found = subprocess.run(["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, check=False)
    except OSError:
        return None
    match = re.search(r"pid=(\d+)", found.stdout)
    return int(match.group(1)) if match else None


async def redis_cpu(redis: Redis) -> float | None:
    info = await redis.info("cpu")
    try:
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    except (KeyError, ValueError):
        return None


async def redis_memory(redis: Redis) -> int:
    info = await redis.info("memory")
    return int(info["used_memory"])

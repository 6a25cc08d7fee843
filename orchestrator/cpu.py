"""CPU seconds used by processes, read where the operating system tells it.

Child processes and a local RabbitMQ are read from /proc (Linux); Redis
reports its own through INFO, so it is measured wherever it runs. Anything
that cannot be read is None, and reports print "n/a" rather than guess.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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


def rabbitmq_pid() -> int | None:
    """The local RabbitMQ node's OS pid (its Erlang VM), if there is one on this machine."""
    try:
        found = subprocess.run(["pgrep", "-f", "beam.smp.*rabbit"], capture_output=True, text=True, check=False)
    except OSError:
        return None
    pids = [int(p) for p in found.stdout.split()]
    return pids[0] if pids else None


async def redis_cpu(redis: Redis) -> float | None:
    info = await redis.info("cpu")
    try:
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    except (KeyError, ValueError):
        return None


async def redis_memory(redis: Redis) -> int:
    info = await redis.info("memory")
    return int(info["used_memory"])

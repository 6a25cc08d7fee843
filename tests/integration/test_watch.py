"""`saga watch` and `saga start --wait` as a user runs them: the steps as they happen, then the outcome."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import subprocess
import uuid

from participants.edge.settings import Settings
from statemachines.sagas import SAGAS
from tests.integration.conftest import example_workers, running, saga_command, saga_env
from tests.integration.scripted import cli
from tests.integration.test_end_to_end import order
from tests.integration.test_web import STEPS, desk, slow


async def test_watch_prints_each_step_as_it_happens_and_exits_with_the_outcome(settings: Settings) -> None:
    async with running(settings, sagas=[*SAGAS, slow], workers=[*example_workers(), desk(0.2)]) as stack:
        saga_id = await stack.client.start("web_slow", {})
        watched = await cli(settings, "watch", saga_id)
        failed = await stack.run("order", order(fail_at=["create_shipment"]))
        watched_failed = await cli(settings, "watch", failed.saga_id)
        missing = await cli(settings, "watch", "no-such-saga")
    assert watched.returncode == 0, watched.stderr
    lines = watched.stdout.splitlines()
    entered = [line.split(" -> ")[1].split()[0] for line in lines[:-1] if " -> " in line]
    assert entered == [f"s{n}" for n in range(STEPS)] + ["completed"]
    assert lines[-1] == "completed in completed"
    assert watched_failed.returncode == 1 and watched_failed.stdout.splitlines()[-1] == "compensated in compensated"
    assert missing.returncode == 1 and "no saga 'no-such-saga'" in missing.stderr


def _start_on_a_terminal(settings: Settings, saga_id: str) -> tuple[int, str]:
    """`saga start --wait` with its stderr on a pseudo-terminal: (exit code, what the terminal showed)."""
    leader, follower = pty.openpty()
    args = ("start", "order", "--wait", "--id", saga_id, "--data", json.dumps(order()))
    process = subprocess.Popen(saga_command(*args), env=saga_env(settings), stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal's other end closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    process.communicate(timeout=60)
    return process.wait(), shown.decode()


async def test_start_wait_shows_the_steps_on_a_terminal_only(settings: Settings) -> None:
    async with running(settings, workers=example_workers()):
        saga_id = f"o-{uuid.uuid4().hex[:6]}"
        code, shown = await asyncio.to_thread(_start_on_a_terminal, settings, saga_id)
        piped = await cli(settings, "start", "order", "--wait", "--data", json.dumps(order()))
    assert code == 0
    assert saga_id in shown
    for step in ("reserve_inventory", "charge_payment", "create_shipment"):
        assert f"-> {step}" in shown, shown
    assert "-> completed" in shown
    assert piped.returncode == 0 and len(piped.stderr.splitlines()) == 1, piped.stderr

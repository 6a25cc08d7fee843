"""Every example in the README runs as written: the shell commands, the participant module, the client script."""

from __future__ import annotations

import asyncio
import re
import shlex
import subprocess
import sys
from pathlib import Path

from participants.edge.settings import Settings
from participants.examples import payment, shipping
from tests.integration.conftest import Stack, running, saga_command, saga_env
from tests.integration.scripted import ROOT, cli
from tests.integration.test_end_to_end import order

README = ROOT / "README.md"
# Long-running processes (the stack runs them) and the make targets are not run here.
LONG_RUNNING = ("saga orchestrator", "saga participant", "make ")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def commands(block: str) -> list[tuple[list[str], int]]:
    """Each command of a shell block (a quoted argument may span lines) and the exit code its comment names."""
    found: list[tuple[list[str], int]] = []
    pending = ""
    for line in block.splitlines():
        pending += line + "\n"
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        expected = re.search(r"#\s*exit (\d)", pending)
        if words:
            found.append((words, int(expected.group(1)) if expected else 0))
        pending = ""
    return found


async def test_the_readme_shell_commands_run_as_written(stack: Stack) -> None:
    ran = 0
    for block in blocks("sh"):
        for words, expected in commands(block):
            line = " ".join(words)
            if words[0] != "saga" or line.startswith(LONG_RUNNING):
                continue
            done = await cli(stack.settings, *words[1:])
            assert done.returncode == expected, f"{line}\n{done.stdout}\n{done.stderr}"
            ran += 1
    assert ran >= 8, "the quick start's saga start and the commands of 'When something goes wrong'"


def test_the_readme_participant_is_a_module_one_can_run(settings: Settings, tmp_path: Path) -> None:
    [module] = [block for block in blocks("python") if '"""my_inventory.py' in block]
    (tmp_path / "my_inventory.py").write_text(module)

    async def scenario() -> None:
        with (tmp_path / "participant.log").open("wb") as log:
            async with running(settings, workers=[payment.worker, shipping.worker]) as stack:
                # As the README says: from the module's folder, `saga participant my_inventory:worker`.
                process = await asyncio.create_subprocess_exec(
                    *saga_command("participant", "my_inventory:worker"), cwd=tmp_path, env=saga_env(settings),
                    stdout=log, stderr=subprocess.STDOUT,
                )  # fmt: skip
                try:
                    assert (await stack.run("order", order(), timeout=30)).status == "completed"
                    short = await stack.run("order", order(items=[{"sku": "sku-2", "qty": 101}]), timeout=30)
                    assert short.status == "compensated" and short.error is not None
                    assert short.error.code == "out_of_stock"
                finally:
                    process.terminate()
                    await asyncio.wait_for(process.wait(), 15)

    asyncio.run(scenario())
    assert "participant 'inventory' up" in (tmp_path / "participant.log").read_text()


async def test_the_readme_client_script_runs(stack: Stack, tmp_path: Path) -> None:
    [script] = [block for block in blocks("python") if '"""start_orders.py' in block]
    (tmp_path / "start_orders.py").write_text(script)

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "start_orders.py"], cwd=tmp_path, env=saga_env(stack.settings),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    done = await asyncio.to_thread(run)
    assert done.returncode == 0, done.stderr
    started, *rest = done.stdout.splitlines()
    assert re.fullmatch(r"started [0-9a-f-]{36}", started), started
    assert rest == [
        "o-1 completed",
        "refused: data does not fit saga 'order': Expected `int` >= 1 - at `$.amount`",
        "conflict: saga 'o-1' exists already, started with other data: start a different saga under a new id",
    ]

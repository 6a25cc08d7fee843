"""A process whose first broker connection is cut at any step of its start-up still comes up serving.

A proxy of the test's own (tests/integration/cutting.py) sits in front of the
shared broker and cuts the first AMQP connection of `saga orchestrator` or of
a participant after each frame the server sends during start-up in turn;
later connections go through. Every time the process must come up (its
queues get consumers), and SIGTERM must end it promptly with exit code 0.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import uuid
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aio_pika

from participants.edge.settings import Settings
from tests.integration.conftest import remove_namespace, saga_command, saga_env
from tests.integration.cutting import CuttingProxy

WORKER = ("participant", "participants.examples.payment:worker")
# Start-ups at once: the machine is shared, and each is a Python process coming up.
AT_ONCE = 6


def _via(url: str, port: int) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{host[0]}{host[1]}127.0.0.1:{port}"))


def _upstream(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 5672


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def _queues(settings: Settings, args: Sequence[str]) -> list[str]:
    names = settings.names
    if args[0] == "orchestrator":
        return [names.start_queue, names.reply_queue, names.signals_queue]
    return [names.participant_queue("payment")]


async def _consumed(settings: Settings, queues: list[str]) -> bool:
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        for queue in queues:
            channel = await connection.channel()
            try:
                declared = await channel.declare_queue(queue, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                return False
            if not declared.declaration_result.consumer_count:
                return False
            await channel.close()
        return True
    finally:
        await connection.close()


async def _start_up(settings: Settings, args: Sequence[str], cut_after: int | None, log: Path) -> int:
    """Start the process through a proxy cutting after `cut_after` frames; the frames of its start-up."""
    settings = replace(settings, namespace=f"t{uuid.uuid4().hex[:10]}")
    try:
        async with CuttingProxy(_upstream(settings.amqp_url), cut_after) as proxy:
            env = {**saga_env(settings), "SAGA_AMQP_URL": _via(settings.amqp_url, proxy.port)}
            with log.open("wb") as out:
                process = await asyncio.create_subprocess_exec(
                    *saga_command(*args), env=env, stdout=out, stderr=asyncio.subprocess.STDOUT
                )
            try:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 60
                while not await _consumed(settings, _queues(settings, args)):
                    assert process.returncode is None, f"cut after {cut_after}: exited\n{_tail(log)}"
                    assert loop.time() < deadline, f"cut after {cut_after}: never served\n{_tail(log)}"
                    await asyncio.sleep(0.2)
                if cut_after is not None:
                    assert proxy.cut, f"the proxy never cut after {cut_after} frames"
                frames = proxy.frames
                process.send_signal(signal.SIGTERM)
                rc = await asyncio.wait_for(process.wait(), 15)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        text = await asyncio.to_thread(log.read_text, errors="replace")
        assert rc == 0, f"cut after {cut_after}: exit {rc}\n{text[-3000:]}"
        assert "Traceback" not in text, f"cut after {cut_after}:\n{text[-3000:]}"
        return frames
    finally:
        await remove_namespace(settings, {"payment"})


async def _every_cut(settings: Settings, args: Sequence[str], tmp_path: Path) -> None:
    # Uncut, the first connection carries the whole start-up: every frame of it is a cut point.
    frames = await _start_up(settings, args, None, tmp_path / "uncut.log")
    assert frames > 5
    gate = asyncio.Semaphore(AT_ONCE)

    async def one(n: int) -> None:
        async with gate:
            await _start_up(settings, args, n, tmp_path / f"cut-{n}.log")

    await asyncio.gather(*(one(n) for n in range(0, frames)))


async def test_the_orchestrator_comes_up_whatever_start_up_step_the_connection_is_cut_at(
    settings: Settings, tmp_path: Path
) -> None:
    await _every_cut(settings, ["orchestrator"], tmp_path)


async def test_a_participant_comes_up_whatever_start_up_step_the_connection_is_cut_at(
    settings: Settings, tmp_path: Path
) -> None:
    await _every_cut(settings, list(WORKER), tmp_path)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_broker_away_for_the_whole_wait_gives_the_sentence_and_exit_code_3(settings: Settings) -> None:
    # The setting, and the flag that wins over it.
    for args, wait in ((["orchestrator"], "2"), ([*WORKER, "--startup-wait", "2"], "600")):
        env = {
            **saga_env(settings),
            "SAGA_AMQP_URL": _via(settings.amqp_url, _closed_port()),
            "SAGA_STARTUP_WAIT_SECONDS": wait,
        }
        process = await asyncio.create_subprocess_exec(
            *saga_command(*args), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await asyncio.wait_for(process.communicate(), 30)
        text = out.decode()
        assert process.returncode == 3, text
        assert "Cannot reach RabbitMQ" in text and "Traceback" not in text, text


async def test_sigterm_ends_a_process_waiting_for_the_broker(settings: Settings) -> None:
    env = {**saga_env(settings), "SAGA_AMQP_URL": _via(settings.amqp_url, _closed_port())}
    process = await asyncio.create_subprocess_exec(
        *saga_command("orchestrator"), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    assert process.stdout is not None
    # Once it says it waits, it is past its imports and in the start-up loop.
    while b"trying again" not in await asyncio.wait_for(process.stdout.readline(), 30):
        pass
    process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 0

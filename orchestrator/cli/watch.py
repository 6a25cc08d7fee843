"""`saga watch`: a saga's steps as they happen, then its outcome; and the same on a terminal for `saga start --wait`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, TextIO

from orchestrator.cli.common import EXIT_FAILED, EXIT_OK, EXIT_WAIT_TIMEOUT, UsageError, command, store, when
from orchestrator.config import Settings

if TYPE_CHECKING:
    from statemachines.instance import HistoryEntry, SagaInstance

# A saga just started may not be written yet: how long `watch` waits for it to appear.
APPEAR_SECONDS = 5.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = command(sub, "watch", "print a saga's steps as they happen; exit with its outcome", watch_saga)
    p.add_argument("saga_id", metavar="ID")
    p.add_argument("--timeout", type=float, help="give up after this many seconds (exit 2)")
    p.add_argument("--json", action="store_true", help="one JSON object per step, then the saga")


def line(entry: HistoryEntry) -> str:
    move = entry.dest if entry.source == entry.dest else f"{entry.source} -> {entry.dest}"
    what = f"  {entry.step} {entry.action} #{entry.attempt}" if entry.step else ""
    detail = f"  ({entry.detail})" if entry.detail else ""
    return f"{when(entry.at)}  {entry.event:<13} {move}{what}{detail}"


def outcome_code(inst: SagaInstance) -> int:
    return EXIT_OK if inst.status == "completed" else EXIT_FAILED


async def watch_saga(args: argparse.Namespace, settings: Settings) -> int:
    import msgspec

    from orchestrator.progress import Progress, follow

    async with store(settings) as sagas:
        loop = asyncio.get_running_loop()
        appear = loop.time() + APPEAR_SECONDS
        while await sagas.load(args.saga_id) is None:
            if loop.time() > appear:
                raise UsageError(f"no saga {args.saga_id!r} in namespace {settings.namespace!r}")
            await asyncio.sleep(0.1)
        try:
            async with asyncio.timeout(args.timeout):
                async for item in follow(sagas, args.saga_id, every=0.1):
                    if isinstance(item, Progress):
                        print(msgspec.json.encode(item.entry).decode() if args.json else line(item.entry), flush=True)
                    else:
                        print(msgspec.json.encode(item).decode() if args.json else f"{item.status} in {item.state}")
                        return outcome_code(item)
        except TimeoutError:
            inst = await sagas.load(args.saga_id)
            print(f"still {inst.status if inst else 'unknown'} after {args.timeout:g}s", file=sys.stderr)
            return EXIT_WAIT_TIMEOUT
    raise AssertionError("follow ends with the saga")


async def _show(settings: Settings, saga_id: str, out: TextIO) -> None:
    from orchestrator.progress import Progress, follow

    async with store(settings) as sagas:
        async for item in follow(sagas, saga_id, every=0.1):
            if isinstance(item, Progress):
                print(line(item.entry), file=out, flush=True)


@contextlib.asynccontextmanager
async def progress_on_terminal(settings: Settings, saga_id: str) -> AsyncIterator[None]:
    """While the block runs, print the saga's steps to stderr if it is a terminal."""
    if not sys.stderr.isatty():
        yield
        return
    shown = asyncio.create_task(_show(settings, saga_id, sys.stderr))
    try:
        yield
    finally:
        # The last entries may land just before the outcome: let them show.
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(shown, 1.0)

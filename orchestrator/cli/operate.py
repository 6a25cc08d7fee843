"""`saga retry` and `saga compensate`: an operator's events, applied through the orchestrator's own engine.

One saga by id, or many by selection (`--status stuck --type order --since 1h --limit N`,
`--dry-run` to count them first). The selection is read with pipelined reads and the
events applied many at once, each under the engine's own per-saga lock and version check,
so a bulk action races safely with running orchestrators.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from collections import Counter
from typing import Any

from orchestrator.cli.common import EXIT_FAILED, EXIT_OK, UsageError, command, sagas_flag, store
from orchestrator.config import Settings
from orchestrator.registry import Registry

# Applied at once: enough to fill the round trips to Redis and the broker, few enough to stay polite.
CONCURRENCY = 64
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = command(sub, "retry", "resume stuck sagas from the step each is stuck in (one ID, or --status)", retry_saga)
    _flags(p, ["stuck"])
    p = command(sub, "compensate", "force running sagas to compensate (one ID, or --status)", compensate_saga)
    _flags(p, ["running", "stuck"])


def _flags(p: argparse.ArgumentParser, statuses: list[str]) -> None:
    sagas_flag(p)
    p.add_argument("saga_id", metavar="ID", nargs="?", help="one saga; or select many with --status")
    p.add_argument("--status", choices=statuses, help="act on every saga with this status")
    p.add_argument("--type", dest="saga_type", metavar="TYPE", help="only sagas of this type")
    p.add_argument("--since", metavar="AGE", help="only sagas that changed within AGE: 90s, 30m, 1h, 2d")
    p.add_argument("--limit", type=int, metavar="N", help="at most N sagas, the oldest first")
    p.add_argument("--dry-run", action="store_true", help="print how many and which sagas, change nothing")


async def retry_saga(args: argparse.Namespace, settings: Settings) -> int:
    from statemachines.decide import Resume

    return await _operate(args, settings, Resume(), "resumed")


async def compensate_saga(args: argparse.Namespace, settings: Settings) -> int:
    from statemachines.decide import Abort

    return await _operate(args, settings, Abort(), "compensation forced")


def age(text: str) -> float:
    """Seconds in `90s`, `30m`, `1h`, `2d` (a bare number is seconds)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise UsageError(f"--since takes an age such as 90s, 30m, 1h or 2d, not {text[:40]!r}")
    return float(match[1]) * _UNITS[match[2] or "s"]


async def _operate(args: argparse.Namespace, settings: Settings, event: Any, verb: str) -> int:
    """Apply an operator's event through the same engine the orchestrator runs."""
    from orchestrator.engine import Engine
    from participants.edge.amqp import Broker

    selecting = args.status is not None
    if (args.saga_id is None) == (not selecting):
        raise UsageError("give one saga ID or --status to select sagas, not both")
    if not selecting and (args.saga_type or args.since or args.limit is not None or args.dry_run):
        raise UsageError("--type, --since, --limit and --dry-run select sagas: use them with --status")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit must be at least 1")
    since = age(args.since) if args.since else None
    registry = Registry.from_module(args.sagas)
    async with store(settings) as sagas:
        await sagas.connect()
        if selecting:
            after = time.time() - since if since is not None else None
            ids = await sagas.select(args.status, args.saga_type, after, args.limit)
            if args.dry_run:
                print(f"{len(ids)} saga(s) would be {verb}", file=sys.stderr)
                for saga_id in ids:
                    print(saga_id)
                return EXIT_OK
            if not ids:
                print(f"0 saga(s) {verb}: none matched", file=sys.stderr)
                return EXIT_OK
        else:
            ids = [args.saga_id]
        broker = await Broker.open(settings.amqp_url, settings.names)
        engine = Engine(sagas, broker, registry, settings.names)
        outcomes: Counter[str] = Counter()
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(saga_id: str) -> None:
            async with gate:
                decision = await engine.apply(saga_id, event)
            outcomes[_report(saga_id, decision, verb, selecting, settings.namespace)] += 1

        try:
            await asyncio.gather(*(one(saga_id) for saga_id in ids))
        finally:
            await broker.close()
            # Forget the outbox the broker confirmed, as the orchestrator does;
            # left behind, the sweep would send its commands a second time.
            await engine.close()
    if selecting:
        print(
            f"{outcomes['done']} saga(s) {verb}, {outcomes['unchanged']} had nothing to do, "
            f"{outcomes['refused']} could not be",
            file=sys.stderr,
        )
    return EXIT_FAILED if outcomes["refused"] else EXIT_OK


def _report(saga_id: str, decision: Any, verb: str, selecting: bool, namespace: str) -> str:
    inst = decision.instance
    if inst is None:
        if not selecting:
            raise UsageError(f"no saga {saga_id!r} in namespace {namespace!r}")
        print(f"{saga_id}: gone (expired or removed)")
        return "unchanged"
    if decision.changed:
        print(f"{saga_id}: {verb}; now {inst.status} in {inst.state}")
        return "done"
    print(f"{saga_id}: {decision.note}")
    # Both commands alike: nothing to do (the saga is not where the command acts) is not an error;
    # what cannot be done (compensate a saga past its pivot) is.
    return "refused" if _cannot(verb, inst.status) else "unchanged"


def _cannot(verb: str, status: str) -> bool:
    """Whether the command was refused, rather than had nothing to do."""
    return verb != "resumed" and status in ("running", "stuck")

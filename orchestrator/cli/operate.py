"""`saga retry` and `saga compensate`: an operator's events, applied through the orchestrator's own engine."""

from __future__ import annotations

import argparse
from typing import Any

from orchestrator.cli.common import EXIT_FAILED, EXIT_OK, UsageError, command, sagas_flag, store
from orchestrator.config import Settings
from orchestrator.registry import Registry


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = command(sub, "retry", "resume a stuck saga from the step it is stuck in", retry_saga)
    sagas_flag(p)
    p.add_argument("saga_id", metavar="ID")

    p = command(sub, "compensate", "force a running saga to compensate", compensate_saga)
    sagas_flag(p)
    p.add_argument("saga_id", metavar="ID")


async def retry_saga(args: argparse.Namespace, settings: Settings) -> int:
    from statemachines.decide import Resume

    return await _operate(args, settings, Resume(), "resumed")


async def compensate_saga(args: argparse.Namespace, settings: Settings) -> int:
    from statemachines.decide import Abort

    return await _operate(args, settings, Abort(), "compensation forced")


async def _operate(args: argparse.Namespace, settings: Settings, event: Any, verb: str) -> int:
    """Apply an operator's event through the same engine the orchestrator runs."""
    from orchestrator.engine import Engine
    from participants.edge.amqp import Broker

    registry = Registry.from_module(args.sagas)
    async with store(settings) as sagas:
        await sagas.connect()
        broker = await Broker.open(settings.amqp_url, settings.names)
        engine = Engine(sagas, broker, registry, settings.names)
        try:
            decision = await engine.apply(args.saga_id, event)
        finally:
            await broker.close()
            # Forget the outbox the broker confirmed, as the orchestrator does;
            # left behind, the sweep would send its commands a second time.
            await engine.close()
    inst = decision.instance
    if inst is None:
        raise UsageError(f"no saga {args.saga_id!r} in namespace {settings.namespace!r}")
    if decision.changed:
        print(f"{args.saga_id}: {verb}; now {inst.status} in {inst.state}")
        return EXIT_OK
    print(f"{args.saga_id}: {decision.note}")
    # Both commands alike: nothing to do (the saga is not where the command acts) is not an error;
    # what cannot be done (compensate a saga past its pivot) is.
    return EXIT_FAILED if _cannot(verb, inst.status) else EXIT_OK


def _cannot(verb: str, status: str) -> bool:
    """Whether the command was refused, rather than had nothing to do."""
    return verb != "resumed" and status in ("running", "stuck")

"""`saga orchestrator` and `saga participant`: the long-running processes."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os

from orchestrator.admission import DEFAULT_MAX_IN_FLIGHT
from orchestrator.cli.common import EXIT_OK, UsageError, command, metrics_flags, sagas_flag, serve_metrics
from orchestrator.config import Settings
from orchestrator.registry import Registry


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = command(sub, "orchestrator", "run the orchestrator service", run_orchestrator)
    sagas_flag(p)
    p.add_argument("--prefetch", type=int, default=256, help="deliveries in flight per queue (default: 256)")
    p.add_argument("--tick", type=float, default=0.05, help="seconds between looks for due timeouts (default: 0.05)")
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        metavar="N",
        help="sagas in flight in the namespace beyond which starts wait in the queue "
        "(default: $SAGA_MAX_IN_FLIGHT or 10000)",
    )
    p.add_argument(
        "--hold-seconds",
        type=float,
        default=None,
        metavar="S",
        help="wait up to S seconds for a participant whose queue has no consumer before its step times out "
        "(default: $SAGA_HOLD_SECONDS or 0, off)",
    )
    p.add_argument(
        "--authenticate-replies",
        action="store_true",
        default=None,
        help="take a reply only if its AMQP user-id (which RabbitMQ checks) is its participant's user, "
        "as `saga access` sets them up (default: $SAGA_AUTHENTICATE_REPLIES or off)",
    )
    startup_flag(p)
    metrics_flags(p)

    p = command(
        sub, "participant", "run a participant worker, e.g. participants.examples.inventory:worker", run_participant
    )
    p.add_argument("target", metavar="MODULE:OBJECT")
    startup_flag(p)
    metrics_flags(p)


def startup_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--startup-wait",
        type=int,
        default=None,
        metavar="S",
        help="wait up to S seconds for RabbitMQ and Redis at start-up, then exit 3 "
        "(default: $SAGA_STARTUP_WAIT_SECONDS or 60; 0: one try)",
    )


def _with_startup_wait(args: argparse.Namespace, settings: Settings) -> Settings:
    if args.startup_wait is None:
        return settings
    if args.startup_wait < 0:
        raise UsageError("--startup-wait must be a whole number of seconds, 0 or more")
    return dataclasses.replace(settings, startup_wait_seconds=args.startup_wait)


async def run_orchestrator(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.service import Orchestrator, Tuning

    if args.prefetch < 1 or args.tick <= 0:
        raise UsageError("--prefetch must be at least 1 and --tick positive")
    limit = args.max_in_flight
    if limit is None:
        raw = os.environ.get("SAGA_MAX_IN_FLIGHT") or str(DEFAULT_MAX_IN_FLIGHT)
        limit = int(raw) if raw.isdigit() else 0
    if limit < 1:
        raise UsageError("--max-in-flight (or SAGA_MAX_IN_FLIGHT) must be a whole number of at least 1")
    hold = args.hold_seconds
    if hold is None:
        try:
            hold = float(os.environ.get("SAGA_HOLD_SECONDS") or 0)
        except ValueError:
            hold = -1.0
    if not 0 <= hold < float("inf"):
        raise UsageError("--hold-seconds (or SAGA_HOLD_SECONDS) must be a number of seconds, 0 or more")
    authenticate = args.authenticate_replies
    if authenticate is None:
        raw = (os.environ.get("SAGA_AUTHENTICATE_REPLIES") or "0").strip().lower()
        if raw not in ("0", "1", "false", "true", "no", "yes", "off", "on"):
            raise UsageError("SAGA_AUTHENTICATE_REPLIES must be 1 or 0 (true/false, yes/no, on/off)")
        authenticate = raw in ("1", "true", "yes", "on")
    tuning = Tuning(
        prefetch=args.prefetch,
        tick=args.tick,
        max_in_flight=limit,
        hold_seconds=hold,
        authenticate_replies=authenticate,
    )
    settings = _with_startup_wait(args, settings)
    serve_metrics(args)
    await Orchestrator(settings, Registry.from_module(args.sagas), tuning).run()
    return EXIT_OK


async def run_participant(args: argparse.Namespace, settings: Settings) -> int:
    from participants.worker import Worker

    module, _, name = args.target.partition(":")
    try:
        worker = getattr(importlib.import_module(module), name or "worker")
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load participant {args.target!r}: {exc}") from None
    if not isinstance(worker, Worker):
        raise UsageError(f"{args.target!r} is not a participants.worker.Worker")
    settings = _with_startup_wait(args, settings)
    serve_metrics(args)
    await worker.run(settings)
    return EXIT_OK

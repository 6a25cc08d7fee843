"""`saga demo`, `saga bench` and `saga check`: the tooling's commands (see `orchestrator.tools`)."""

from __future__ import annotations

import argparse
import functools
import json
import sys

from orchestrator.cli.common import EXIT_OK, UsageError, command
from orchestrator.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = command(sub, "demo", "run the orchestrator and example participants, and a mix of sagas through them", demo)
    p.add_argument("--count", type=int, default=40, help="how many sagas (default: 40)")
    p.add_argument("--concurrency", type=int, default=8, help="how many in flight at once (default: 8)")

    p = command(sub, "bench", "measure sagas/s and latency against a bare RabbitMQ request/reply ring", bench)
    p.add_argument("--sagas", type=int, default=3000, help="sagas per run, and baseline units (default: 3000)")
    p.add_argument("--in-flight", type=int, default=64, help="sagas in flight at once (default: 64)")
    p.add_argument("--failure-ratio", type=float, default=0.1, help="share of sagas failing by design (default: 0.1)")
    p.add_argument("--repeat", type=int, default=1, help="alternate saga and baseline runs this often (default: 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument(
        "--against",
        choices=["celery"],
        help="also run the same orders as a Celery chain, alternating with ours (needs the bench extra)",
    )
    p.add_argument(
        "--waiting", type=int, metavar="N", help="measure scale instead: N sagas waiting, memory, timeouts fired"
    )
    p.add_argument(
        "--parallel",
        action="store_true",
        help="trip sagas instead: the parallel trip's latency beside the same bookings in line, and their ratio",
    )
    # The ring's far end, a child process of `saga bench`.
    command(sub, "bench-responder", None, bench_responder)

    p = command(sub, "check", "check that RabbitMQ and Redis answer", check_services)
    p.add_argument(
        "--start", action="store_true", help="if they do not and Docker runs, `docker compose up -d rabbitmq redis`"
    )


async def demo(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.tools.demo import run_demo

    if args.count < 1 or args.concurrency < 1:
        raise UsageError("--count and --concurrency must be at least 1")
    return await run_demo(settings, args.count, args.concurrency)


async def bench(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.tools.bench import Options, run_bench

    if args.sagas < 1 or args.in_flight < 1 or args.repeat < 1 or not 0 <= args.failure_ratio <= 1:
        raise UsageError("--sagas, --in-flight and --repeat must be at least 1, --failure-ratio within 0..1")
    if args.waiting is not None:
        if args.parallel:
            raise UsageError("--waiting and --parallel measure different things: give one of them")
        return await _scale(args, settings)
    if args.against is not None and args.parallel:
        raise UsageError("--against and --parallel measure different things: give one of them")
    if args.against == "celery":
        from orchestrator.tools.bench_celery import missing

        if (problem := missing()) is not None:
            raise UsageError(problem)
    options = Options(
        args.sagas,
        args.in_flight,
        args.failure_ratio,
        args.repeat,
        as_json=args.json,
        against=args.against,
        parallel=args.parallel,
    )
    return await run_bench(settings, options)


async def _scale(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.tools.bench import Progress
    from orchestrator.tools.scale import human, run_scale

    if args.waiting < 1:
        raise UsageError("--waiting must be at least 1")
    say = functools.partial(print, file=sys.stderr) if args.json else print
    report = await run_scale(settings, args.waiting, args.sagas, args.in_flight, Progress(not args.json), say)
    say(human(report))
    if args.json:
        print(json.dumps(report))
    return EXIT_OK


async def bench_responder(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.tools.baseline import respond

    await respond(settings.amqp_url, settings.names)
    return EXIT_OK


async def check_services(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.tools.check import check

    await check(settings, start=args.start)
    print("RabbitMQ and Redis answer.")
    return EXIT_OK

"""`saga signal`: an outside event for a saga that waits for it (an `Await` step)."""

from __future__ import annotations

import argparse
import json
import sys

import msgspec

from orchestrator.cli.common import EXIT_OK, EXIT_SIGNAL_REFUSED, EXIT_WAIT_TIMEOUT, command, json_object
from orchestrator.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = command(sub, "signal", "send a signal to a saga that waits for it", signal_saga)
    p.epilog = (
        "exit codes: 0 sent (with --wait: accepted, or accepted before under this signal id), "
        "2 the wait timed out, 3 RabbitMQ or Redis away, "
        "6 the signal was refused (the reason is printed; the signal is kept with the dead letters)"
    )
    p.add_argument("saga_id", metavar="ID")
    p.add_argument("name", metavar="NAME", help="the signal's name, as the saga's Await declares it")
    p.add_argument("--data", help="merged into the saga data, as a JSON object (default: {})")
    p.add_argument(
        "--signal-id",
        help="an idempotency key: the same signal again is applied once (default: a new one, printed)",
    )
    p.add_argument("--wait", action="store_true", help="wait for the answer and print it as one JSON line")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait with --wait (default: 30)")


async def signal_saga(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.client import SagaClient, SignalRefused

    data = {} if args.data is None else json_object("--data", args.data)
    try:
        async with await SagaClient.connect(settings) as client:
            if not args.wait:
                print(await client.signal(args.saga_id, args.name, data, args.signal_id))
                return EXIT_OK
            try:
                result = await client.signal(
                    args.saga_id, args.name, data, args.signal_id, wait=True, timeout=args.timeout
                )
            except TimeoutError:
                print(json.dumps({"saga_id": args.saga_id, "name": args.name, "status": "timeout"}))
                print(
                    f"saga: no answer within {args.timeout:g}s; the signal waits in {settings.names.signals_queue}",
                    file=sys.stderr,
                )
                return EXIT_WAIT_TIMEOUT
    except SignalRefused as refusal:
        if args.wait:
            print(msgspec.json.encode(refusal.result).decode())
        print(f"saga: signal refused: {refusal.code}: {refusal.reason}", file=sys.stderr)
        return EXIT_SIGNAL_REFUSED
    print(msgspec.json.encode(result).decode())
    return EXIT_OK

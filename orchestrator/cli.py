"""The `saga` command.

Every subcommand takes --amqp-url, --redis-url and --namespace, which
default to SAGA_AMQP_URL, SAGA_REDIS_URL and SAGA_NAMESPACE. Errors a user
can fix (a service away, a bad flag, an unknown saga) print one sentence and
exit non-zero; they never print a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import importlib
import json
import logging
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import msgspec

from orchestrator.config import BadSetting, Settings
from orchestrator.registry import DEFAULT_MODULE, Registry, UnknownSaga
from participants.connections import Unreachable
from statemachines.messages import TERMINAL

EXIT_OK, EXIT_FAILED, EXIT_WAIT_TIMEOUT, EXIT_UNREACHABLE = 0, 1, 2, 3

try:  # uvloop where it exists: the same asyncio, a faster loop
    from uvloop import run
except ImportError:  # pragma: no cover - Windows
    from asyncio import run  # type: ignore[assignment]


class UsageError(Exception):
    """A mistake in what the user asked for; the message is the whole story."""


def _connection_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--amqp-url", help="RabbitMQ URL (default: $SAGA_AMQP_URL or amqp://guest:guest@127.0.0.1:5672/)"
    )
    parser.add_argument("--redis-url", help="Redis URL (default: $SAGA_REDIS_URL or redis://127.0.0.1:6379/0)")
    parser.add_argument("--namespace", help="prefix of every queue and key (default: $SAGA_NAMESPACE or saga)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def _sagas_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sagas",
        default=DEFAULT_MODULE,
        metavar="MODULE",
        help=f"module defining the sagas (default: {DEFAULT_MODULE})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saga", description="Run and inspect sagas over RabbitMQ and Redis.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        _connection_flags(p)
        return p

    p = command("orchestrator", "run the orchestrator service")
    _sagas_flag(p)
    p.add_argument("--prefetch", type=int, default=256, help="deliveries in flight per queue (default: 256)")
    p.add_argument("--tick", type=float, default=0.05, help="seconds between looks for due timeouts (default: 0.05)")

    p = command("participant", "run a participant worker, e.g. participants.examples.inventory:worker")
    p.add_argument("target", metavar="MODULE:OBJECT")

    p = command("start", "start a saga and print its id")
    p.add_argument("saga_type", metavar="TYPE")
    p.add_argument("--data", default="{}", help="the saga data, as JSON")
    p.add_argument("--id", dest="saga_id", help="the saga id; starting an existing id again does nothing")
    p.add_argument("--wait", action="store_true", help="wait for the outcome and print it as one JSON line")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait with --wait (default: 60)")

    p = command("show", "show one saga with its history")
    p.add_argument("saga_id", metavar="ID")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command("list", "list sagas")
    p.add_argument("--status", choices=["running", "compensating", "completed", "compensated", "stuck"])
    p.add_argument("--type", dest="saga_type", metavar="TYPE")
    p.add_argument("--json", action="store_true", help="print one JSON object per line")

    p = command("graph", "export a saga's state machine as a graph")
    _sagas_flag(p)
    p.add_argument("saga_type", metavar="TYPE")
    p.add_argument("--format", default="mermaid", choices=["mermaid", "dot", "svg", "png"])
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    p.add_argument("--saga", metavar="ID", help="highlight the path this saga took")

    p = command("retry", "resume a stuck saga from the step it is stuck in")
    _sagas_flag(p)
    p.add_argument("saga_id", metavar="ID")

    p = command("compensate", "force a running saga to compensate")
    _sagas_flag(p)
    p.add_argument("saga_id", metavar="ID")

    p = command("demo", "run the orchestrator and example participants, and a mix of sagas through them")
    p.add_argument("--count", type=int, default=40, help="how many sagas (default: 40)")
    p.add_argument("--concurrency", type=int, default=8, help="how many in flight at once (default: 8)")

    p = command("bench", "measure sagas/s and latency against a bare RabbitMQ request/reply ring")
    p.add_argument("--sagas", type=int, default=3000, help="sagas per run, and baseline units (default: 3000)")
    p.add_argument("--in-flight", type=int, default=64, help="sagas in flight at once (default: 64)")
    p.add_argument("--failure-ratio", type=float, default=0.1, help="share of sagas failing by design (default: 0.1)")
    p.add_argument("--repeat", type=int, default=1, help="alternate saga and baseline runs this often (default: 1)")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument(
        "--waiting", type=int, metavar="N", help="measure scale instead: N sagas waiting, memory, timeouts fired"
    )
    command("bench-responder", argparse.SUPPRESS)

    p = command("check", "check that RabbitMQ and Redis answer")
    p.add_argument(
        "--start", action="store_true", help="if they do not and Docker runs, `docker compose up -d rabbitmq redis`"
    )

    command("schema", "print the JSON Schema of every message")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    # transitions logs every callback at INFO: thousands of lines a second.
    logging.getLogger("transitions").setLevel(max(logging.WARNING, logging.getLogger().level))
    handler = COMMANDS[args.command]
    try:
        settings = Settings.from_env(args.amqp_url, args.redis_url, args.namespace)
        return run(handler(args, settings))
    except (Unreachable, UsageError, UnknownSaga, BadSetting) as exc:
        print(f"saga: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE if isinstance(exc, Unreachable) else EXIT_FAILED
    except KeyboardInterrupt:
        return 130


async def run_orchestrator(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.service import Orchestrator, Tuning

    if args.prefetch < 1 or args.tick <= 0:
        raise UsageError("--prefetch must be at least 1 and --tick positive")
    tuning = Tuning(prefetch=args.prefetch, tick=args.tick)
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
    await worker.run(settings.amqp_url, settings.redis_url, settings.names, settings.max_message_bytes)
    return EXIT_OK


async def start_saga(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.client import SagaClient

    try:
        data = json.loads(args.data)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--data is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError("--data must be a JSON object")
    async with await SagaClient.connect(settings) as client:
        if not args.wait:
            print(await client.start(args.saga_type, data, args.saga_id))
            return EXIT_OK
        saga_id = args.saga_id or _new_id()
        print(saga_id, file=sys.stderr)
        try:
            event = await client.start(args.saga_type, data, saga_id, wait=True, timeout=args.timeout)
        except TimeoutError:
            print(json.dumps({"saga_id": saga_id, "status": "timeout", "waited": args.timeout}))
            return EXIT_WAIT_TIMEOUT
    print(msgspec.json.encode(event).decode())
    return EXIT_OK if event.status == "completed" else EXIT_FAILED


def _new_id() -> str:
    import uuid

    return str(uuid.uuid4())


async def _store(settings: Settings) -> Any:
    from orchestrator.store import RedisStore
    from participants.connections import connect_redis

    return RedisStore(await connect_redis(settings.redis_url), settings.names)


async def show_saga(args: argparse.Namespace, settings: Settings) -> int:
    store = await _store(settings)
    try:
        inst = await store.load(args.saga_id)
        if inst is None:
            raise UsageError(f"no saga {args.saga_id!r} in namespace {settings.namespace!r}")
        history = await store.history(args.saga_id)
    finally:
        await store.redis.aclose()
    if args.json:
        doc = msgspec.to_builtins(inst)
        doc["history"] = msgspec.to_builtins(history)
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    print(f"saga      {inst.saga_id}  ({inst.saga_type} v{inst.definition_version})")
    print(f"status    {inst.status}")
    print(f"state     {inst.state}")
    if inst.status not in TERMINAL:
        print(f"step      {inst.step} ({inst.action}), attempt {inst.attempt}")
    if inst.error is not None:
        print(f"error     {inst.error.code}: {inst.error.message}")
    print(f"started   {_when(inst.created_at)}")
    print(f"updated   {_when(inst.updated_at)}")
    print(f"data      {json.dumps(inst.data)}")
    print("history")
    for entry in history:
        move = entry.dest if entry.source == entry.dest else f"{entry.source} -> {entry.dest}"
        what = f"{entry.step} {entry.action} #{entry.attempt}" if entry.step else ""
        detail = f"  ({entry.detail})" if entry.detail else ""
        print(f"  {_when(entry.at)}  {entry.event:<13} {move:<55} {what}{detail}")
    return EXIT_OK


def _when(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


async def list_sagas(args: argparse.Namespace, settings: Settings) -> int:
    store = await _store(settings)
    found = []
    try:
        async for inst in store.sagas():
            if (args.status is None or inst.status == args.status) and (
                args.saga_type is None or inst.saga_type == args.saga_type
            ):
                found.append(inst)
    finally:
        await store.redis.aclose()
    found.sort(key=lambda inst: inst.created_at)
    for inst in found:
        if args.json:
            print(msgspec.json.encode(inst).decode())
        else:
            print(
                f"{inst.saga_id:<38} {inst.saga_type:<10} {inst.status:<13} {inst.state:<32} {_when(inst.updated_at)}"
            )
    if not args.json:
        print(f"{len(found)} saga(s)", file=sys.stderr)
    return EXIT_OK


async def export_graph(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator import graphviz
    from statemachines import graph

    saga = Registry.from_module(args.sagas).latest(args.saga_type)
    path = None
    if args.saga:
        store = await _store(settings)
        try:
            history = await store.history(args.saga)
        finally:
            await store.redis.aclose()
        if not history:
            raise UsageError(f"no history for saga {args.saga!r} in namespace {settings.namespace!r}")
        path = [history[0].source] + [h.dest for h in history if h.dest != h.source]
    if args.format == "mermaid":
        out: bytes = graph.mermaid(saga, path=path).encode()
    else:
        text = graph.dot(saga, path=path)
        if args.format == "dot":
            out = text.encode()
        else:
            try:
                out = graphviz.render(text, args.format)
            except graphviz.GraphvizError as exc:
                raise UsageError(str(exc)) from None
    if args.output:
        await asyncio.to_thread(Path(args.output).write_bytes, out)
    else:
        sys.stdout.buffer.write(out)
    return EXIT_OK


async def _operate(args: argparse.Namespace, settings: Settings, event: Any, verb: str) -> int:
    """Apply an operator's event through the same engine the orchestrator runs."""
    from orchestrator.engine import Engine
    from participants.amqp import Broker

    registry = Registry.from_module(args.sagas)
    store = await _store(settings)
    try:
        await store.connect()
        broker = await Broker.open(settings.amqp_url, settings.names)
        engine = Engine(store, broker, registry, settings.names)
        try:
            decision = await engine.apply(args.saga_id, event)
        finally:
            await broker.close()
            # Forget the outbox the broker confirmed, as the orchestrator does;
            # left behind, the sweep would send its commands a second time.
            await engine.close()
    finally:
        await store.redis.aclose()
    inst = decision.instance
    if inst is None:
        raise UsageError(f"no saga {args.saga_id!r} in namespace {settings.namespace!r}")
    if decision.changed:
        print(f"{args.saga_id}: {verb}; now {inst.status} in {inst.state}")
        return EXIT_OK
    print(f"{args.saga_id}: {decision.note}")
    return EXIT_OK if _already(verb, inst.status) else EXIT_FAILED


def _already(verb: str, status: str) -> bool:
    """An operator command repeated after it took effect is not an error."""
    if verb == "resumed":
        return status in ("running", "compensating", "completed", "compensated")
    return status in ("compensating", "compensated")


async def retry_saga(args: argparse.Namespace, settings: Settings) -> int:
    from statemachines.decide import Resume

    return await _operate(args, settings, Resume(), "resumed")


async def compensate_saga(args: argparse.Namespace, settings: Settings) -> int:
    from statemachines.decide import Abort

    return await _operate(args, settings, Abort(), "compensation forced")


async def run_demo(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.demo import run_demo

    if args.count < 1 or args.concurrency < 1:
        raise UsageError("--count and --concurrency must be at least 1")
    return await run_demo(settings, args.count, args.concurrency)


async def run_bench(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.bench import Options, run_bench

    if args.sagas < 1 or args.in_flight < 1 or args.repeat < 1 or not 0 <= args.failure_ratio <= 1:
        raise UsageError("--sagas, --in-flight and --repeat must be at least 1, --failure-ratio within 0..1")
    if args.waiting is not None:
        return await _scale(args, settings)
    options = Options(args.sagas, args.in_flight, args.failure_ratio, args.repeat, as_json=args.json)
    return await run_bench(settings, options)


async def _scale(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.bench import Progress
    from orchestrator.scale import human, run_scale

    if args.waiting < 1:
        raise UsageError("--waiting must be at least 1")
    say = functools.partial(print, file=sys.stderr) if args.json else print
    report = await run_scale(settings, args.waiting, args.sagas, args.in_flight, Progress(not args.json), say)
    say(human(report))
    if args.json:
        print(json.dumps(report))
    return EXIT_OK


async def bench_responder(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.baseline import respond

    await respond(settings.amqp_url, settings.names)
    return EXIT_OK


async def check_services(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.check import check

    await check(settings, start=args.start)
    print("RabbitMQ and Redis answer.")
    return EXIT_OK


async def print_schema(args: argparse.Namespace, settings: Settings) -> int:
    from statemachines.messages import schemas

    print(json.dumps(schemas(), indent=2))
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]] = {
    "orchestrator": run_orchestrator,
    "participant": run_participant,
    "start": start_saga,
    "show": show_saga,
    "list": list_sagas,
    "graph": export_graph,
    "retry": retry_saga,
    "compensate": compensate_saga,
    "demo": run_demo,
    "bench": run_bench,
    "bench-responder": bench_responder,
    "check": check_services,
    "schema": print_schema,
}


if __name__ == "__main__":
    sys.exit(main())

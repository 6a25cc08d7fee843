"""`saga start`, `saga show` and `saga list`: starting sagas and reading them."""

from __future__ import annotations

import argparse
import json
import sys
import uuid

import msgspec

from orchestrator.cli.common import EXIT_FAILED, EXIT_OK, EXIT_WAIT_TIMEOUT, UsageError, command, store, when
from orchestrator.config import Settings
from statemachines.messages import TERMINAL


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = command(sub, "start", "start a saga and print its id", start_saga)
    p.add_argument("saga_type", metavar="TYPE")
    p.add_argument("--data", default="{}", help="the saga data, as JSON")
    p.add_argument("--id", dest="saga_id", help="the saga id; starting an existing id again does nothing")
    p.add_argument("--wait", action="store_true", help="wait for the outcome and print it as one JSON line")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait with --wait (default: 60)")

    p = command(sub, "show", "show one saga with its history", show_saga)
    p.add_argument("saga_id", metavar="ID")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command(sub, "list", "list sagas", list_sagas)
    p.add_argument("--status", choices=["running", "compensating", "completed", "compensated", "stuck"])
    p.add_argument("--type", dest="saga_type", metavar="TYPE")
    p.add_argument("--json", action="store_true", help="print one JSON object per line")


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
        saga_id = args.saga_id or str(uuid.uuid4())
        print(saga_id, file=sys.stderr)
        try:
            event = await client.start(args.saga_type, data, saga_id, wait=True, timeout=args.timeout)
        except TimeoutError:
            print(json.dumps({"saga_id": saga_id, "status": "timeout", "waited": args.timeout}))
            return EXIT_WAIT_TIMEOUT
    print(msgspec.json.encode(event).decode())
    return EXIT_OK if event.status == "completed" else EXIT_FAILED


async def show_saga(args: argparse.Namespace, settings: Settings) -> int:
    async with store(settings) as sagas:
        inst = await sagas.load(args.saga_id)
        if inst is None:
            raise UsageError(f"no saga {args.saga_id!r} in namespace {settings.namespace!r}")
        history = await sagas.history(args.saga_id)
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
    print(f"started   {when(inst.created_at)}")
    print(f"updated   {when(inst.updated_at)}")
    print(f"data      {json.dumps(inst.data)}")
    print("history")
    for entry in history:
        move = entry.dest if entry.source == entry.dest else f"{entry.source} -> {entry.dest}"
        what = f"{entry.step} {entry.action} #{entry.attempt}" if entry.step else ""
        detail = f"  ({entry.detail})" if entry.detail else ""
        print(f"  {when(entry.at)}  {entry.event:<13} {move:<55} {what}{detail}")
    return EXIT_OK


async def list_sagas(args: argparse.Namespace, settings: Settings) -> int:
    found = []
    async with store(settings) as sagas:
        async for inst in sagas.sagas():
            if (args.status is None or inst.status == args.status) and (
                args.saga_type is None or inst.saga_type == args.saga_type
            ):
                found.append(inst)
    found.sort(key=lambda inst: inst.created_at)
    for inst in found:
        if args.json:
            print(msgspec.json.encode(inst).decode())
        else:
            print(f"{inst.saga_id:<38} {inst.saga_type:<10} {inst.status:<13} {inst.state:<32} {when(inst.updated_at)}")
    if not args.json:
        print(f"{len(found)} saga(s)", file=sys.stderr)
    return EXIT_OK

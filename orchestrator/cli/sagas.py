"""`saga start`, `saga show` and `saga list`: starting sagas and reading them."""

from __future__ import annotations

import argparse
import json
import sys
import uuid

import msgspec

from orchestrator.cli.common import (
    EXIT_CONFLICT,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REJECTED,
    EXIT_WAIT_TIMEOUT,
    UsageError,
    command,
    json_object,
    store,
    when,
)
from orchestrator.cli.watch import progress_on_terminal
from orchestrator.config import Settings
from statemachines.messages import FINAL

# Without --wait, how long `saga start` waits for an orchestrator to take the start (or refuse it).
ACCEPT_WITHIN = 5.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = command(sub, "start", "start a saga and print its id", start_saga)
    p.epilog = (
        "exit codes: 0 started (with --wait: completed), 1 compensated or stuck, 2 the wait timed out, "
        "3 RabbitMQ or Redis away, 4 the start was refused (the reason is printed), "
        "5 the id is taken by a start with other data"
    )
    p.add_argument("saga_type", metavar="TYPE")
    p.add_argument("--data", help="the saga data, as a JSON object (required unless the saga declares no data type)")
    p.add_argument(
        "--id", dest="saga_id", help="the saga id, an idempotency key: the same start again is the same saga"
    )
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
    from orchestrator.client import SagaClient, SagaConflict, SagaRejected

    data = None if args.data is None else json_object("--data", args.data)
    saga_id = args.saga_id or str(uuid.uuid4())
    try:
        async with await SagaClient.connect(settings) as client:
            if not args.wait:
                _, first = await client.submit(args.saga_type, data, saga_id, timeout=min(args.timeout, ACCEPT_WITHIN))
                print(saga_id)
                if first is None:
                    print(
                        f"saga: no orchestrator has taken it yet; it waits in {settings.names.start_queue}",
                        file=sys.stderr,
                    )
                return EXIT_OK
            print(saga_id, file=sys.stderr)
            try:
                async with progress_on_terminal(settings, saga_id):
                    event = await client.start(args.saga_type, data, saga_id, wait=True, timeout=args.timeout)
            except TimeoutError:
                print(json.dumps({"saga_id": saga_id, "status": "timeout", "waited": args.timeout}))
                return EXIT_WAIT_TIMEOUT
    except SagaRejected as refusal:
        if args.wait:
            print(msgspec.json.encode(refusal.event).decode())
        hint = " (saga start TYPE --data JSON)" if args.data is None and refusal.code == "invalid_data" else ""
        print(f"saga: rejected: {refusal.reason}{hint}", file=sys.stderr)
        return EXIT_CONFLICT if isinstance(refusal, SagaConflict) else EXIT_REJECTED
    print(msgspec.json.encode(event).decode())
    return EXIT_OK if event.status == "completed" else EXIT_FAILED


async def show_saga(args: argparse.Namespace, settings: Settings) -> int:
    async with store(settings) as sagas:
        inst = await sagas.load(args.saga_id)
        refusal = await sagas.rejection(args.saga_id)
        history = await sagas.history(args.saga_id) if inst is not None else []
    if inst is None:
        if refusal is None or refusal.error is None:
            raise UsageError(f"no saga {args.saga_id!r} in namespace {settings.namespace!r}")
        if args.json:
            print(json.dumps(msgspec.to_builtins(refusal), indent=2))
        else:
            print(f"saga      {args.saga_id}  ({refusal.saga_type or 'unknown type'})")
            print(f"rejected: {refusal.error.message}")
            print(f"at        {when(refusal.at)}  ({refusal.error.code}; no saga runs under this id)")
        return EXIT_OK
    if args.json:
        doc = msgspec.to_builtins(inst)
        doc["history"] = msgspec.to_builtins(history)
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    print(f"saga      {inst.saga_id}  ({inst.saga_type} v{inst.definition_version})")
    print(f"status    {inst.status}")
    print(f"state     {inst.state}")
    if inst.status not in FINAL and inst.step is not None:
        # A stuck saga too: where it is stuck is what an operator needs first.
        print(f"step      {inst.step} ({inst.action}), attempt {inst.attempt}")
    if inst.error is not None:
        print(f"error     {inst.error.code}: {inst.error.message}")
    print(f"started   {when(inst.created_at)}")
    print(f"updated   {when(inst.updated_at)}")
    print(f"data      {json.dumps(inst.data)}")
    if refusal is not None and refusal.error is not None and refusal.at >= inst.created_at:
        print(f"refused   a later start under this id, at {when(refusal.at)}: {refusal.error.message}")
    print("history")
    for entry in history:
        move = entry.dest if entry.source == entry.dest else f"{entry.source} -> {entry.dest}"
        what = f"{entry.step} {entry.action} #{entry.attempt}" if entry.step else ""
        detail = f"  ({entry.detail})" if entry.detail else ""
        print(f"  {when(entry.at)}  {entry.event:<14} {move:<55} {what}{detail}")
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
    if args.json:
        for inst in found:
            print(msgspec.json.encode(inst).decode())
        return EXIT_OK
    row = "{:<38} {:<10} {:<13} {:<32} {:<27} {}"
    print(row.format("ID", "TYPE", "STATUS", "STATE", "CREATED", "UPDATED"))
    for inst in found:
        print(
            row.format(
                inst.saga_id, inst.saga_type, inst.status, inst.state, when(inst.created_at), when(inst.updated_at)
            )
        )
    print(f"{len(found)} saga(s)", file=sys.stderr)
    return EXIT_OK

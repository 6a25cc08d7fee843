"""`saga schema`, `saga asyncapi`, `saga conformance`: the protocol, machine-readable, and a participant held to it."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any
from urllib.parse import unquote, urlsplit

from orchestrator.cli.common import EXIT_FAILED, EXIT_OK, UsageError, command, json_object, sagas_flag
from orchestrator.config import Settings
from orchestrator.registry import Registry


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = command(sub, "schema", "print the JSON Schema of every message and of the loaded sagas' data", print_schema)
    sagas_flag(p)
    p = command(sub, "asyncapi", "print the AsyncAPI 3.0 document of the protocol", print_asyncapi)
    sagas_flag(p)
    p.add_argument("--format", default="json", choices=["json", "yaml"], help="json (default) or yaml (needs PyYAML)")
    p.add_argument(
        "--participant", metavar="NAME", help="describe this participant's side instead of the orchestrator's"
    )
    p = command(
        sub,
        "conformance",
        "drive a running participant through the protocol's obligations; exit 1 if one fails",
        run_conformance,
    )
    p.add_argument("participant", metavar="PARTICIPANT")
    p.add_argument("--command", required=True, metavar="NAME", help="an action the participant performs")
    p.add_argument("--compensation", metavar="NAME", help="the action's compensation (without it, those checks skip)")
    p.add_argument("--payload", default="{}", metavar="JSON", help="a payload the action succeeds with")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds to wait for each answer")
    p.add_argument("--json", action="store_true", help="print the results as JSON lines")


async def print_schema(args: argparse.Namespace, settings: Settings) -> int:
    from statemachines.schema import schemas

    print(json.dumps(schemas(Registry.from_module(args.sagas).sagas), indent=2))
    return EXIT_OK


async def print_asyncapi(args: argparse.Namespace, settings: Settings) -> int:
    from statemachines.asyncapi import document

    sagas = Registry.from_module(args.sagas).sagas
    try:
        doc = document(settings.names, sagas, participant=args.participant, server=server(settings.amqp_url))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    sys.stdout.write(_yaml(doc) if args.format == "yaml" else json.dumps(doc, indent=2) + "\n")
    return EXIT_OK


def server(amqp_url: str) -> Any:
    """The broker as the document names it: host, port and virtual host, never the credentials."""
    from statemachines.asyncapi import Server

    parts = urlsplit(amqp_url)
    secure = parts.scheme == "amqps"
    port = parts.port or (5671 if secure else 5672)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return Server(host=f"{parts.hostname or 'localhost'}:{port}", vhost=vhost, secure=secure)


def _yaml(doc: dict[str, Any]) -> str:
    import msgspec

    try:
        return msgspec.yaml.encode(doc).decode()
    except ImportError:
        raise UsageError(
            "--format yaml needs PyYAML (pip install 'saga-orchestrator[yaml]'); --format json needs nothing"
        ) from None


async def run_conformance(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator.tools.conformance import NotReady, Target, check, table

    payload = json_object("--payload", args.payload)
    target = Target(args.participant, args.command, args.compensation, payload, args.timeout)
    try:
        results = await check(settings, target)
    except NotReady as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        for result in results:
            print(json.dumps(result.as_dict()))
    else:
        print(table(results))
    return EXIT_FAILED if any(r.status == "FAIL" for r in results) else EXIT_OK

"""`saga schema`: the wire protocol, machine-readable, for participants in any language."""

from __future__ import annotations

import argparse
import json

from orchestrator.cli.common import EXIT_OK, command
from orchestrator.config import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command(sub, "schema", "print the JSON Schema of every message", print_schema)


async def print_schema(args: argparse.Namespace, settings: Settings) -> int:
    from statemachines.messages import schemas

    print(json.dumps(schemas(), indent=2))
    return EXIT_OK

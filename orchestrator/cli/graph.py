"""`saga graph`: a saga type's state machine as Mermaid, DOT, SVG or PNG, one saga's path highlighted."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from orchestrator.cli.common import EXIT_OK, UsageError, command, sagas_flag, store
from orchestrator.config import Settings
from orchestrator.registry import Registry


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = command(sub, "graph", "export a saga's state machine as a graph", export_graph)
    sagas_flag(p)
    p.add_argument("saga_type", metavar="TYPE")
    p.add_argument("--format", default="mermaid", choices=["mermaid", "dot", "svg", "png"])
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    p.add_argument("--saga", metavar="ID", help="highlight the path this saga took")


async def export_graph(args: argparse.Namespace, settings: Settings) -> int:
    from orchestrator import graphviz
    from orchestrator.progress import path_of
    from statemachines import graph

    saga = Registry.from_module(args.sagas).latest(args.saga_type)
    path = None
    if args.saga:
        async with store(settings) as sagas:
            history = await sagas.history(args.saga)
        if not history:
            raise UsageError(f"no history for saga {args.saga!r} in namespace {settings.namespace!r}")
        path = path_of(history)
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

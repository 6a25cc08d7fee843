"""The `saga` command: `main` builds the parser from one module per group of subcommands.

To add a command, add it to the module of its group (or a new module listed
in GROUPS): `register(sub)` adds its parser with `common.command`, which
brings the connection flags and names the coroutine that runs it. Every
subcommand takes --amqp-url, --redis-url and --namespace, which default to
SAGA_AMQP_URL, SAGA_REDIS_URL and SAGA_NAMESPACE. Errors a user can fix (a
service away, a bad flag, an unknown saga) print one sentence and exit
non-zero; they never print a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from importlib import metadata

from orchestrator.cli import access, dead_letters, graph, operate, protocol, sagas, serve, signals, tools, watch, web
from orchestrator.cli.common import EXIT_ACCESS_REFUSED, EXIT_FAILED, EXIT_UNREACHABLE, UsageError
from orchestrator.registry import UnknownSaga
from orchestrator.store import LayoutMismatch
from participants.edge import logs, tracing
from participants.edge.connections import AccessRefused, Unreachable
from participants.edge.settings import BadSetting, Settings

try:  # uvloop where it exists: the same asyncio, a faster loop
    from uvloop import run
except ImportError:  # pragma: no cover - Windows
    from asyncio import run  # type: ignore[assignment]

# In the order `saga --help` lists their commands.
GROUPS = (serve, sagas, signals, watch, operate, dead_letters, graph, web, access, tools, protocol)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="saga", description="Run and inspect sagas over RabbitMQ and Redis.")
    parser.add_argument("--version", action="version", version=f"saga {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def _version() -> str:
    try:
        return metadata.version("saga-orchestrator")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    # `saga participant mymodule:worker` and `--sagas mymodule` find a module in the current
    # directory, as `python -m` would; last, so that it shadows nothing installed.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    args, extra = build_parser().parse_known_args(argv)
    if extra:
        # Named by the subcommand that got it, with that subcommand's usage (exits 2, as argparse does).
        args.parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logs.configure(args.log_level, args.log_format)
    # transitions logs every callback at INFO: thousands of lines a second.
    logging.getLogger("transitions").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        tracing.configure_from_env(args.command)
        settings = Settings.from_env(args.amqp_url, args.redis_url, args.namespace, args.queue_type)
        return int(run(args.handler(args, settings)))
    except (Unreachable, UsageError, UnknownSaga, BadSetting, LayoutMismatch, tracing.TracingMissing) as exc:
        print(f"saga: {exc}", file=sys.stderr)
        if isinstance(exc, AccessRefused):
            return EXIT_ACCESS_REFUSED
        return EXIT_UNREACHABLE if isinstance(exc, Unreachable) else EXIT_FAILED
    except KeyboardInterrupt:
        return 130

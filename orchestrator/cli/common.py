"""What every `saga` subcommand shares: exit codes, the usage error, the connection flags, a store to read."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from orchestrator.config import Settings
from orchestrator.registry import DEFAULT_MODULE

if TYPE_CHECKING:
    from orchestrator.store import RedisStore

EXIT_OK, EXIT_FAILED, EXIT_WAIT_TIMEOUT, EXIT_UNREACHABLE = 0, 1, 2, 3
# `saga start`: the start was refused (bounds, unknown type, data that does not fit...), or its id is taken.
EXIT_REJECTED, EXIT_CONFLICT = 4, 5
# `saga signal`: the signal was refused (unknown saga, not waiting for it, out of bounds...).
EXIT_SIGNAL_REFUSED = 6
# RabbitMQ refused the login: a wrong user, password or virtual host, not a service away.
EXIT_ACCESS_REFUSED = 7

Handler = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]


class UsageError(Exception):
    """A mistake in what the user asked for; the message is the whole story."""


def command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str | None, handler: Handler
) -> argparse.ArgumentParser:
    """Add subcommand `name` run by `handler`, with the connection flags; `help=None` hides it from `saga --help`."""
    # Passing help=argparse.SUPPRESS would list it as "==SUPPRESS=="; leaving help out hides it.
    parser = (
        sub.add_parser(name, description=help) if help is None else sub.add_parser(name, help=help, description=help)
    )
    # The parser itself, so that a wrong flag is answered with this subcommand's usage.
    parser.set_defaults(handler=handler, parser=parser)
    parser.add_argument(
        "--amqp-url", help="RabbitMQ URL (default: $SAGA_AMQP_URL or amqp://guest:guest@127.0.0.1:5672/)"
    )
    parser.add_argument("--redis-url", help="Redis URL (default: $SAGA_REDIS_URL or redis://127.0.0.1:6379/0)")
    parser.add_argument("--namespace", help="prefix of every queue and key (default: $SAGA_NAMESPACE or saga)")
    parser.add_argument(
        "--queue-type",
        choices=["quorum", "classic"],
        help="quorum (replicated) or classic (one node); the same for every process of a namespace "
        "(default: $SAGA_QUEUE_TYPE or quorum)",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--log-format",
        default=os.environ.get("SAGA_LOG_FORMAT") or "text",
        choices=["text", "json"],
        help="json: one object per line, with saga_id, saga_type, step, attempt (default: $SAGA_LOG_FORMAT or text)",
    )
    return parser


def metrics_flags(parser: argparse.ArgumentParser) -> None:
    """--metrics-port and --metrics-host, for the processes that serve /metrics."""
    default = os.environ.get("SAGA_METRICS_PORT")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(default) if default and default.isdigit() else None,
        metavar="PORT",
        help="serve Prometheus metrics on this port, 0 for any free one (default: $SAGA_METRICS_PORT, else off)",
    )
    parser.add_argument(
        "--metrics-host",
        default=os.environ.get("SAGA_METRICS_HOST") or "127.0.0.1",
        metavar="HOST",
        help="address to serve metrics on (default: $SAGA_METRICS_HOST or 127.0.0.1)",
    )


def serve_metrics(args: argparse.Namespace) -> None:
    """Turn metrics on if --metrics-port asks for them."""
    if args.metrics_port is None:
        return
    from participants.edge import metrics

    try:
        metrics.serve(args.metrics_port, args.metrics_host)
    except metrics.MetricsMissing as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc.strerror}") from None


def json_object(flag: str, text: str) -> dict[str, Any]:
    """The JSON object a flag was given, or a UsageError saying what is wrong with it."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{flag} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{flag} must be a JSON object")
    return value


def sagas_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sagas",
        default=DEFAULT_MODULE,
        metavar="MODULE",
        help=f"module defining the sagas (default: {DEFAULT_MODULE})",
    )


@contextlib.asynccontextmanager
async def store(settings: Settings) -> AsyncIterator[RedisStore]:
    """The namespace's Redis store, closed when done."""
    from orchestrator.store import RedisStore
    from participants.edge.connections import connect_redis

    redis = await connect_redis(settings.redis_url)
    opened = RedisStore(
        redis, settings.names, settings.retention_seconds, settings.redis_replicas, settings.redis_wait_ms
    )
    try:
        yield opened
    finally:
        await opened.redis.aclose()


def when(at: float) -> str:
    """A moment as operators read it, with its time zone: 2024-05-01 12:00:00.123 UTC."""
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"

"""`saga web`: the HTTP API and the live web view, served by uvicorn."""

from __future__ import annotations

import argparse
import os

from orchestrator.cli.common import EXIT_OK, UsageError, command, sagas_flag
from orchestrator.config import Settings
from orchestrator.registry import Registry


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = command(
        sub,
        "web",
        "serve the HTTP API and the live web view (actions need the bearer token $SAGA_WEB_TOKEN)",
        serve_web,
    )
    sagas_flag(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")


async def serve_web(args: argparse.Namespace, settings: Settings) -> int:
    try:
        import uvicorn

        from orchestrator.web.app import Web, create_app
    except ImportError as exc:
        raise UsageError(
            f"saga web needs the `web` extra (pip install 'saga-orchestrator[web]'): {exc.name} is missing"
        ) from None
    token = os.environ.get("SAGA_WEB_TOKEN") or None
    web = Web(settings, Registry.from_module(args.sagas), token)
    await web.open()  # before serving, so that a service away is one sentence, not a failed startup
    app = create_app(web)
    # Event streams never end by themselves: on SIGTERM they are cut after 2 s.
    config = uvicorn.Config(
        app, host=args.host, port=args.port, log_config=None, access_log=False, timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    if not token:
        import logging

        logging.getLogger("saga.web").warning("SAGA_WEB_TOKEN is not set: starting, retrying and compensating are off")
    await server.serve()
    return EXIT_OK

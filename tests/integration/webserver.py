"""`saga web`'s app served over real HTTP in the test's event loop, beside an orchestrator and workers."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Sequence

import uvicorn

from orchestrator.registry import Registry
from orchestrator.web.app import Web, create_app
from participants.edge.settings import Settings
from statemachines.dsl import Saga

TOKEN = "test-token-not-a-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.asynccontextmanager
async def serving(settings: Settings, sagas: Sequence[Saga], token: str | None = TOKEN) -> AsyncIterator[str]:
    """The web app for `sagas` at the URL yielded, until the block ends."""
    port = free_port()
    app = create_app(Web(settings, Registry(list(sagas)), token, every=0.05))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        # Open event streams would hold the shutdown; they are cut after a moment.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), 3)
        if not task.done():
            server.force_exit = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

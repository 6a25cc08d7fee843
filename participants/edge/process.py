"""Running a service as a process: until SIGTERM or SIGINT, then a clean close."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable


async def serve(
    start: Callable[[], Awaitable[None]], close: Callable[[], Awaitable[None]], stop: asyncio.Event
) -> None:
    """Start, wait until a signal (or `stop` is set another way), and close however it ends."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await start()
        await stop.wait()
    finally:
        await close()

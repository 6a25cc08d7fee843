"""Running a service as a process: until SIGTERM or SIGINT, then a clean close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable

from aiormq.exceptions import AMQPConnectionError, AMQPError, ChannelInvalidStateError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from participants.edge.connections import AccessRefused, Unreachable

log = logging.getLogger("saga.process")

# What a broker (or Redis) that is away or restarting raises mid start-up: waited out.
_TRANSIENT = (
    Unreachable,
    AMQPConnectionError,
    AMQPError,
    ChannelInvalidStateError,
    RedisConnectionError,
    RedisTimeoutError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    RuntimeError,  # aio-pika's "connection closed" on a channel of a connection cut under it
)
# A partial start is closed within this; a connection cut under it must not hold the process.
_ABANDON_TIMEOUT = 5.0


async def serve(
    start: Callable[[], Awaitable[None]],
    close: Callable[[], Awaitable[None]],
    stop: asyncio.Event,
    *,
    abandon: Callable[[], Awaitable[None]] | None = None,
    startup_wait: float = 0.0,
    amqp_url: str = "",
) -> None:
    """Start, wait until a signal (or `stop` is set another way), and close however it ends.

    A start that fails for want of RabbitMQ or Redis is closed (`abandon`) and
    tried again with a backoff for up to `startup_wait` seconds; then the last
    failure is raised as `Unreachable`. A signal ends the wait at once.
    """
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    deadline = loop.time() + startup_wait
    delay = 0.2
    started = False
    # aiormq logs a connection cut mid start-up as a warning with a traceback; the
    # user gets one line of ours per try instead. After start-up its logs are kept.
    quiet = [logging.getLogger(name) for name in ("aiormq.connection", "aiormq.channel")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        while True:
            try:
                if not await _unless_stopped(start(), stop):
                    return
                started = True
                break
            except AccessRefused:
                raise
            except Exception as exc:
                # aiormq fails the calls pending on a connection cut under them with a bare Exception.
                if not isinstance(exc, _TRANSIENT) and type(exc) is not Exception:
                    raise
                if abandon is not None:  # connections, channels, consumers of the partial start
                    with contextlib.suppress(Exception, asyncio.TimeoutError):
                        await asyncio.wait_for(abandon(), _ABANDON_TIMEOUT)
                if loop.time() + delay > deadline:
                    if isinstance(exc, Unreachable):
                        raise
                    raise Unreachable.rabbitmq(amqp_url, f"lost while starting: {type(exc).__name__}") from None
                reason = str(exc).strip()[:200] or type(exc).__name__
                log.warning("start-up failed (%s); trying again in %.1f s", reason, delay)
                if not await _unless_stopped(asyncio.sleep(delay), stop):
                    return
                delay = min(delay * 2, 5.0)
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
        await stop.wait()
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)
        if started or abandon is None:
            await close()
        else:  # stopped mid start-up: nothing to drain, and a cut connection must not hold the exit
            with contextlib.suppress(Exception, asyncio.TimeoutError):
                await asyncio.wait_for(abandon(), _ABANDON_TIMEOUT)


async def _unless_stopped(work: Awaitable[None], stop: asyncio.Event) -> bool:
    """Run `work` unless `stop` is set first (then it is cancelled): whether it finished."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        return False
    task.result()
    return True

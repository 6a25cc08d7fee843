"""Opening RabbitMQ and Redis connections, with one plain sentence when they fail."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry  # the asyncio client awaits its retries; redis.retry's would not
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from yarl import URL

from participants.edge.corking import Corked


def redact(url: str) -> str:
    """The URL with its password replaced, fit for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


class Unreachable(Exception):
    """RabbitMQ or Redis did not answer; the message is one sentence for the user."""

    @classmethod
    def rabbitmq(cls, url: str, reason: object) -> Unreachable:
        return cls(
            f"Cannot reach RabbitMQ at {redact(url)} ({reason}): start it with "
            "`docker compose up -d rabbitmq` or `rabbitmq-server -detached`, or point SAGA_AMQP_URL at yours."
        )

    @classmethod
    def redis(cls, url: str, reason: object) -> Unreachable:
        return cls(
            f"Cannot reach Redis at {redact(url)} ({reason}): start it with "
            "`docker compose up -d redis` or `redis-server --daemonize yes`, or point SAGA_REDIS_URL at yours."
        )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    # Connection errors often quote the URL; never let a password through.
    return text.splitlines()[0][:200]


async def connect_amqp(url: str, connect_timeout: float = 5.0) -> AbstractRobustConnection:
    """A robust connection: it reconnects and restores channels, queues and consumers."""
    # aiormq logs a failed first connect at ERROR with a repr; the user gets
    # our sentence instead. Later reconnects still log.
    quiet = [logging.getLogger(name) for name in ("aiormq.connection", "aio_pika.robust_connection")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    try:
        connection = aio_pika.RobustConnection(URL(url))
        # aio-pika 10 keeps only the keyword arguments it knows by name and
        # silently drops the rest, transport_factory among them; what is in
        # kwargs reaches aiormq on the first connect and every reconnect.
        connection.kwargs["transport_factory"] = Corked()
        await connection.connect(timeout=connect_timeout)
        return connection
    except Exception as exc:  # aiormq raises a zoo of types for refused, DNS, auth, TLS
        raise Unreachable.rabbitmq(url, _reason(exc)) from None
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


async def connect_redis(url: str, connect_timeout: float = 5.0) -> Redis:
    """A client that retries on a lost connection (a killed client, a restart)."""
    # A burst waits for a free connection rather than failing for want of one.
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=64,
        timeout=30,
        socket_connect_timeout=connect_timeout,
        socket_keepalive=True,
        health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.02), retries=8),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    client = Redis(connection_pool=pool)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        raise Unreachable.redis(url, _reason(exc)) from None
    return client

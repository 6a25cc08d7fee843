"""Opening RabbitMQ and Redis connections, with one plain sentence when they fail."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import aio_pika
from aio_pika.abc import AbstractRobustConnection
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import ClusterPipeline, PipelineCommand, RedisCluster
from redis.asyncio.retry import Retry  # the asyncio client awaits its retries; redis.retry's would not
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from yarl import URL

from participants.edge.batching import FAILING_OVER, FAILOVER_PATIENCE
from participants.edge.corking import Corked
from participants.edge.settings import split_urls


def redact(url: str) -> str:
    """The URL with its password replaced, fit for logs and error messages."""
    if "," in url:
        return ", ".join(redact(one) for one in split_urls(url))
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
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


class AccessRefused(Unreachable):
    """The broker answered and refused the login: not transient, so never waited out."""

    @classmethod
    def rabbitmq_login(cls, url: str) -> AccessRefused:
        return cls(
            f"RabbitMQ at {redact(url)} refused the login (ACCESS_REFUSED): "
            "check the user, password and virtual host in --amqp-url or SAGA_AMQP_URL."
        )


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    # Connection errors often quote the URL; never let a password through.
    return text.splitlines()[0][:200]


class MultiHostConnection(aio_pika.RobustConnection):
    """A robust connection over the nodes of a RabbitMQ cluster: each reconnect tries the next node.

    aio-pika reads `self.url` once per connection attempt, so moving it
    before each attempt after the first walks the nodes round and round
    until one answers; channels, queues and consumers are then restored
    on that node as on the old one (quorum queues live on all of them).
    """

    def __init__(self, urls: list[str], **kwargs: Any) -> None:
        super().__init__(URL(urls[0]), **kwargs)
        self.urls = [URL(u) for u in urls]
        self._at = 0
        self._attempts = 0

    async def _RobustConnection__connect_transport(self) -> None:
        if self._attempts and len(self.urls) > 1:
            self._at = (self._at + 1) % len(self.urls)
            self.url = self.urls[self._at]
        self._attempts += 1
        await super()._RobustConnection__connect_transport()  # type: ignore[misc]


async def connect_amqp(url: str, connect_timeout: float = 5.0) -> AbstractRobustConnection:
    """A robust connection to the first node that answers; it reconnects to a surviving one.

    `url` may list several nodes (see `split_urls`).
    """
    urls = split_urls(url)
    # aiormq logs a failed first connect at ERROR with a repr; the user gets
    # our sentence instead. Later reconnects still log.
    quiet = [logging.getLogger(name) for name in ("aiormq.connection", "aio_pika.robust_connection")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.CRITICAL)
    reason = "no URL given"
    try:
        for first in range(len(urls)):
            # A fresh connection per node: aio-pika fails fast on the first attempt.
            connection = MultiHostConnection(urls[first:] + urls[:first])
            # aio-pika 10 keeps only the keyword arguments it knows by name and
            # silently drops the rest, transport_factory among them; what is in
            # kwargs reaches aiormq on the first connect and every reconnect.
            connection.kwargs["transport_factory"] = Corked()
            try:
                await connection.connect(timeout=connect_timeout)
                return connection
            except Exception as exc:  # aiormq raises a zoo of types for refused, DNS, auth, TLS
                with contextlib.suppress(Exception):
                    await connection.close()
                if "ACCESS_REFUSED" in str(exc):
                    raise AccessRefused.rabbitmq_login(urls[first]) from None
                reason = _reason(exc)
        raise Unreachable.rabbitmq(", ".join(urls) or url, reason)
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


async def connect_redis(url: str, connect_timeout: float = 5.0) -> Redis:
    """A client that retries on a lost connection (a killed client, a restart).

    A URL naming any node of a Redis Cluster gives a cluster client
    (`RedisCluster`: each command to its slot's master, MOVED followed, a
    failover waited out); it takes the commands of `Redis` that the store,
    the workers and the tools use, all of them on keys of one slot each.
    """
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
        info = await client.info("cluster")
    except Exception as exc:
        await client.aclose()
        raise Unreachable.redis(url, _reason(exc)) from None
    if not info.get("cluster_enabled"):
        return client
    await client.aclose()
    return cast(Redis, await connect_cluster(url, connect_timeout))


class PatientCluster(RedisCluster):
    """A cluster client that waits out a failover, as the standalone client waits out a restart.

    redis-py's own retries re-read the topology but do not wait between
    tries, so they are spent in milliseconds, long before a replica is
    promoted (a few node timeouts). Here a command retries, re-reading the
    topology with a backoff, for up to `FAILOVER_PATIENCE` seconds.
    """

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return await _patiently(self, lambda: super(PatientCluster, self).execute_command(*args, **kwargs))

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        return _PatientPipeline(self, transaction)  # type: ignore[abstract]  # redis-py declares, never sets, it


class _PatientPipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        strategy: Any = self._execution_strategy
        queued = [(c.args, c.kwargs) for c in strategy._command_queue]

        async def once() -> list[Any]:
            # A failed execute empties the pipeline: each try queues the commands anew.
            strategy._command_queue = [PipelineCommand(n, *a, **k) for n, (a, k) in enumerate(queued)]
            return await super(_PatientPipeline, self).execute(raise_on_error, allow_redirections)

        return cast(list[Any], await _patiently(self.cluster_client, once))


# redis-py re-reads the topology while other commands use the connections it
# replaces, so during a failover a command can also meet a connection closed
# under it (uvloop's RuntimeError, or a None writer); it was not sent, and is tried again.
_CLOSED_UNDER = (RuntimeError, AttributeError)


async def _patiently(cluster: RedisCluster, attempt: Callable[[], Awaitable[Any]]) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + FAILOVER_PATIENCE
    delay = 0.05
    while True:
        try:
            return await attempt()
        except (*FAILING_OVER, *_CLOSED_UNDER):
            if loop.time() > deadline:
                raise
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)
        cluster._initialize = True  # the next try re-reads the topology first


async def connect_cluster(url: str, connect_timeout: float = 5.0) -> RedisCluster:
    """A Redis Cluster client from the URL of any of its nodes."""
    cluster = PatientCluster.from_url(
        url,
        socket_connect_timeout=connect_timeout,
        socket_keepalive=True,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
    )
    try:
        await cluster.initialize()
        await cluster.ping()
    except Exception as exc:
        await cluster.aclose()
        raise Unreachable.redis(url, _reason(exc)) from None
    return cluster

"""Redis commands go out in batches, one batch at a time on one connection.

Commands issued while a batch is on the wire wait and leave together as the
next batch: with many messages in flight, most commands then share their
round trip, their socket write and their reply read with many others, and a
burst (a thousand due timeouts at once) needs one connection, not a
thousand. redis-py's per-call path (pool, lock, timeout, retry wrapper) costs
more than the command on the hot path, so a batch is written on a connection
held for good and its replies are read straight off it.

Replies come back raw (no redis-py response callbacks): bytes, ints, lists.

On Redis Cluster (`redis.asyncio.cluster.RedisCluster`) a `ClusterBatcher`
keeps one such batcher per master and sends each command to the master of
its key's slot: it follows MOVED (updating the slot map) and ASK (ASKING
first, on the same connection), and waits out a failover (a lost master,
CLUSTERDOWN, TRYAGAIN) by re-reading the topology until a replica has taken
over, for up to `FAILOVER_PATIENCE` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    ReadOnlyError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

Pending = tuple[tuple[Any, ...], "asyncio.Future[Any]"]
# A batch whose connection was lost is sent again on a new one; opening it
# retries with backoff on its own (see connections.connect_redis).
RETRIES = 3
LOST = (RedisConnectionError, RedisTimeoutError, OSError)

# How long a Redis Cluster may go without a master for a slot (a failover) before a command gives up.
FAILOVER_PATIENCE = 30.0
# What a cluster says while a failover is under way (READONLY: the slot map still names a master
# that came back as a replica): wait, re-read the topology, try again.
FAILING_OVER = (*LOST, ClusterDownError, TryAgainError, SlotNotCoveredError, ReadOnlyError)

_batchers: weakref.WeakKeyDictionary[Redis | RedisCluster, Batcher | ClusterBatcher] = weakref.WeakKeyDictionary()


def batcher(redis: Redis | RedisCluster) -> Batcher | ClusterBatcher:
    """The one batcher of this client, so that all its callers share batches."""
    found = _batchers.get(redis)
    if found is None:
        found = _batchers[redis] = ClusterBatcher(redis) if isinstance(redis, RedisCluster) else Batcher(redis)
    return found


class Batcher:
    """Batches on one connection: the client's (held for good), or one of a cluster node's."""

    def __init__(self, redis: Redis | None = None, node: ClusterNode | None = None) -> None:
        self.redis = redis
        self.node = node
        self._pending: list[Pending] = []
        self._running = False
        self._connection: AbstractConnection | None = None
        self._task: asyncio.Task[None] | None = None  # held: the loop keeps only weak references

    async def execute(self, *command: Any) -> Any:
        """Run one raw command (as `Redis.execute_command` takes it) in the next batch."""
        return await self.submit(command)

    async def execute_many(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Run commands one after the other on one connection, in one batch; each result or exception."""
        futures = [self.submit(command) for command in commands]
        return list(await asyncio.gather(*futures, return_exceptions=True))

    async def wait_replicas(self, replicas: int, timeout_ms: int) -> int:
        """WAIT on this batcher's connection: how many replicas have every write it sent so far."""
        return int(await self.execute("WAIT", replicas, timeout_ms))

    def submit(self, command: tuple[Any, ...]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((command, future))
        if not self._running:
            self._running = True
            # The task's first step runs on the next turn: the rest of this one joins the batch.
            self._task = loop.create_task(self._run())
        return future

    async def _run(self) -> None:
        batch: list[Pending] = []
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await self._send(batch)
                except Exception as exc:
                    results = [exc] * len(batch)
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():  # its caller was cancelled
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
                batch = []
        finally:
            self._running = False
            # Only a cancelled batcher gets here with callers waiting: they must not wait forever.
            for _, future in batch + self._pending:
                future.cancel()
            self._pending = []

    async def _send(self, batch: list[Pending]) -> list[Any]:
        delay = 0.02
        for attempt in range(RETRIES + 1):
            try:
                connection = await self._connect()
                await connection.send_packed_command(pack([command for command, _ in batch]), check_health=False)
                return [await _read(connection) for _ in batch]
            except LOST:
                if self._connection is not None:
                    await self._connection.disconnect(nowait=True)
                if attempt == RETRIES:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")

    async def _connect(self) -> AbstractConnection:
        if self._connection is None:
            # Taken from the client's pool (or the node's) and never given
            # back, so that closing the client closes it too.
            if self.node is not None:
                self._connection = self.node.acquire_connection()
            else:
                assert self.redis is not None
                self._connection = await self.redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        if not self._connection.is_connected:
            await self._connection.connect()
        return self._connection


class ClusterBatcher:
    """One `Batcher` per cluster master; each command goes to the master of its key's slot."""

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster
        self._nodes: dict[str, Batcher] = {}
        self._refreshing: asyncio.Task[None] | None = None

    async def execute(self, *command: Any) -> Any:
        """Run one raw command that names its key (first, or first of EVAL's keys) on its slot's master."""
        [result] = await self.execute_many(command)
        if isinstance(result, Exception):
            raise result
        return result

    async def execute_many(self, *commands: tuple[Any, ...]) -> list[Any]:
        """Commands on one slot (routed by the first one's key), one after the other on one connection.

        A command without a key of its own (WAIT) goes where the one before it went.
        """
        slot = self.cluster.keyslot(_key(commands[0]))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FAILOVER_PATIENCE
        delay = 0.05
        asking: tuple[str, int] | None = None
        while True:
            if asking is not None:
                host, port = asking
                node = self.cluster.nodes_manager.get_node(host=host, port=port)
                sent = (("ASKING",), *commands)
            else:
                node = self.cluster.nodes_manager.get_node_from_slot(slot)
                sent = commands
            if node is None:
                results: list[Any] = [SlotNotCoveredError(f"no node at {asking}")] * len(sent)
            else:
                results = await self._batcher(node).execute_many(*sent)
            if asking is not None:
                results = results[1:]
                asking = None
            trouble = next((r for r in results if isinstance(r, (AskError, *FAILING_OVER))), None)
            if isinstance(trouble, MovedError):
                await self.cluster.nodes_manager.move_slot(trouble)
                continue
            if isinstance(trouble, AskError):
                asking = (trouble.host, trouble.port)
                continue
            if trouble is None:
                return results
            if loop.time() > deadline:
                raise trouble
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
            await self._refresh()

    async def wait_replicas(self, replicas: int, timeout_ms: int) -> int:
        """WAIT on the connection to every master written through: the fewest replicas any of them reached."""
        masters = {node.name for node in self.cluster.get_primaries()}
        batchers = [b for name, b in self._nodes.items() if name in masters]
        counts = await asyncio.gather(
            *(b.wait_replicas(replicas, timeout_ms) for b in batchers), return_exceptions=True
        )
        for count in counts:
            if isinstance(count, ResponseError) and "replica" in str(count):
                # A master that failed over and came back as a replica: what it had is its master's or gone.
                await self._refresh()
            elif isinstance(count, BaseException):
                raise count
        return min((c for c in counts if isinstance(c, int)), default=replicas)

    def _batcher(self, node: ClusterNode) -> Batcher:
        found = self._nodes.get(node.name)
        if found is None or found.node is not node:
            found = self._nodes[node.name] = Batcher(node=node)
        return found

    async def _refresh(self) -> None:
        """Read the topology again; concurrent callers share one reading."""
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.create_task(self.cluster.nodes_manager.initialize())
        # Every node we know may be away for now: the caller waits and tries again.
        with contextlib.suppress(Exception):
            await asyncio.shield(self._refreshing)


def _key(command: tuple[Any, ...]) -> Any:
    if str(command[0]).upper() in ("EVALSHA", "EVAL") and int(command[2]) > 0:
        return command[3]
    return command[1]


def pack(commands: list[tuple[Any, ...]]) -> bytes:
    """The commands in RESP, as redis-py packs them, at a third of its cost (a commit has fifteen arguments)."""
    out = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            raw = arg if isinstance(arg, bytes) else (arg if isinstance(arg, str) else repr(arg)).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


async def _read(connection: AbstractConnection) -> Any:
    try:
        return await connection.read_response()
    except ResponseError as exc:  # a failed command fails alone, not its batch
        return exc

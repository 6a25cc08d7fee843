"""The Redis store: saga hashes, their history, the outbox and the deadline index.

Layout (see `statemachines.names`): each saga falls in one of `BUCKETS`
buckets; with `{b}` for the bucket's hash tag `{<ns>:b<n>}`, per saga a hash
`<ns>:saga:{b}:<id>`, a list `<ns>:history:{b}:<id>` and, while messages
await broker confirmation, a hash `<ns>:outbox:{b}:<id>`; per bucket its
deadlines `<ns>:deadlines:{b}` (scores in ms) and its index of unconfirmed
outboxes `<ns>:outboxes:{b}`. The commit script writes all five, and they
share the hash tag, so it runs in one Redis Cluster slot as on a single
Redis. A deadline is still checked against the saga when it fires.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator, Collection, Sequence
from pathlib import Path

import msgspec
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import TimeoutError as RedisTimeoutError

from participants.edge.batching import batcher
from participants.edge.scripts import Scripts
from statemachines.instance import HistoryEntry, SagaInstance
from statemachines.messages import FINAL, SagaEvent
from statemachines.names import BUCKETS, Names

HISTORY_CAP = 200
_instance = msgspec.json.Decoder(SagaInstance)
_history = msgspec.json.Decoder(HistoryEntry)
_event = msgspec.json.Decoder(SagaEvent)
_json = msgspec.json.Encoder()


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def ms(seconds: float) -> int:
    return int(seconds * 1000)


EVERY_BUCKET = range(BUCKETS)


class NotReplicated(RedisTimeoutError):
    """Fewer replicas than asked acknowledged a commit in time: waited out like an outage, nothing published."""


class LayoutMismatch(Exception):
    """The namespace's keys were written with another bucket count; the message is one sentence."""


class RedisStore:
    def __init__(
        self,
        redis: Redis,
        names: Names,
        retention_seconds: int = 7 * 24 * 3600,
        replicas: int = 0,
        wait_ms: int = 1000,
    ) -> None:
        self.redis = redis
        self.names = names
        self.retention = retention_seconds
        self.replicas = replicas
        self.wait_ms = wait_ms
        self.scripts = Scripts(Path(__file__).parent / "lua")

    async def connect(self) -> None:
        """Check that Redis answers and load the scripts."""
        await self.scripts.load(self.redis)

    async def check_layout(self) -> None:
        """Record the bucket count at the namespace's first start; refuse another one later."""
        key = self.names.layout_key
        await self.redis.set(key, BUCKETS, nx=True)
        found = await self.redis.get(key)
        if found is not None and int(found) != BUCKETS:
            raise LayoutMismatch(
                f"namespace {self.names.namespace!r} keeps its sagas in {int(found)} buckets and this version "
                f"uses {BUCKETS}: a saga's keys are named by its bucket, so finish or remove that namespace's "
                "sagas and remove it (orchestrator.namespace.drop), or use another namespace."
            )

    async def load(self, saga_id: str) -> SagaInstance | None:
        doc = await batcher(self.redis).execute("HGET", self.names.saga_key(saga_id), "doc")
        return None if doc is None else _instance.decode(doc)

    async def commit(
        self, expected_rev: int, inst: SagaInstance, history: Sequence[HistoryEntry], outbox: bytes | None
    ) -> bool:
        """Write `inst`, its history, outbox and deadline if the stored rev is still `expected_rev`.

        False on a conflict: someone else wrote the saga since it was read.
        """
        names = self.names
        saga_id = inst.saga_id
        retention = self.retention if inst.status in FINAL else 0
        wake = inst.wake_at
        keys = (
            names.saga_key(saga_id),
            names.history_key(saga_id),
            names.outbox_key(saga_id),
            names.deadline_key(names.bucket(saga_id)),
            names.outbox_index(names.bucket(saga_id)),
        )
        args = [
            expected_rev, inst.rev, _json.encode(inst), inst.status, inst.state, inst.saga_type, inst.updated_at,
            outbox or b"", retention, HISTORY_CAP, saga_id, "" if wake is None else ms(wake),
            ms(inst.updated_at), *(_json.encode(h) for h in history),
        ]  # fmt: skip
        return await self._write("commit", inst.saga_id, keys, args)

    async def _write(self, script: str, saga_id: str, keys: Sequence[str], args: Sequence[object]) -> bool:
        """Run a script that writes a saga; with `replicas`, WAIT right after it on the same connection."""
        if not self.replicas:
            return bool(await self.scripts.call(self.redis, script, keys, args))
        wait = ("WAIT", self.replicas, self.wait_ms)
        written, acked = await self.scripts.call_then(self.redis, script, keys, args, wait)
        if written and int(acked) < self.replicas:
            raise NotReplicated(
                f"saga {saga_id}: {acked} of {self.replicas} replicas acknowledged within {self.wait_ms} ms"
            )
        return bool(written)

    async def replicated(self, saga_id: str) -> None:
        """Return once `replicas` replicas have every write in the saga's slot so far; NotReplicated if not in time.

        WAIT counts the writes of its own connection, so a small write in the
        slot goes first, on the same connection: replication is one ordered
        stream per master, so once a replica has that write, it has every
        write before it there, this process's or another's.
        """
        if not self.replicas:
            return
        sync = self.names.sync_key(self.names.bucket(saga_id))
        _, acked = await batcher(self.redis).execute_many(
            ("SET", sync, "1", "PX", "60000"), ("WAIT", self.replicas, self.wait_ms)
        )
        if isinstance(acked, Exception):
            raise acked
        if int(acked) < self.replicas:
            raise NotReplicated(
                f"saga {saga_id}: {acked} of {self.replicas} replicas acknowledged within {self.wait_ms} ms"
            )

    async def annotate(self, expected_rev: int, inst: SagaInstance, history: Sequence[HistoryEntry]) -> bool:
        """Write `inst` and its history over `expected_rev`, leaving its outbox and deadline alone.

        For a note that does not move the saga (a refused reply); False on a conflict.
        """
        keys = (self.names.saga_key(inst.saga_id), self.names.history_key(inst.saga_id))
        args = [expected_rev, inst.rev, _json.encode(inst), inst.updated_at, HISTORY_CAP]
        args += [_json.encode(h) for h in history]
        return await self._write("annotate", inst.saga_id, keys, args)

    async def reject(self, refusal: SagaEvent) -> None:
        """Keep a refused start's event for the retention period, for `saga show` (it never becomes a saga)."""
        await self.redis.set(self.names.rejected_key(refusal.saga_id), _json.encode(refusal), ex=self.retention)

    async def rejection(self, saga_id: str) -> SagaEvent | None:
        """The refusal of the latest refused start under `saga_id`, if one is kept."""
        raw = await self.redis.get(self.names.rejected_key(saga_id))
        return None if raw is None else _event.decode(raw)

    async def record(self, saga_id: str, history: Sequence[HistoryEntry]) -> None:
        """Append history without a transition (a reply that changed nothing)."""
        if not history:
            return
        key = self.names.history_key(saga_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.rpush(key, *(_json.encode(h) for h in history))
        pipe.ltrim(key, -HISTORY_CAP, -1)
        await pipe.execute()

    async def history(self, saga_id: str) -> list[HistoryEntry]:
        return [_history.decode(raw) for raw in await self.redis.lrange(self.names.history_key(saga_id), 0, -1)]

    async def clear_outboxes(self, confirmed: Sequence[tuple[str, int]]) -> None:
        """Forget the outboxes the broker confirmed: one call per bucket, all in one batch."""
        names = self.names
        by_bucket: defaultdict[int, list[tuple[str, int]]] = defaultdict(list)
        for saga_id, rev in confirmed:
            by_bucket[names.bucket(saga_id)].append((saga_id, rev))
        calls = []
        for bucket, sagas in by_bucket.items():
            keys = [names.outbox_index(bucket), *(names.outbox_key(saga_id) for saga_id, _ in sagas)]
            args = [part for saga_id, rev in sagas for part in (saga_id, rev)]
            calls.append(self.scripts.call(self.redis, "clear_outbox", keys, args))
        await asyncio.gather(*calls)

    async def outbox_rev(self, saga_id: str) -> int | None:
        """The rev of the saga's unconfirmed outbox, None if it has none."""
        rev = await self.redis.hget(self.names.outbox_key(saga_id), "rev")
        return None if rev is None else int(rev)

    async def park_outbox(self, saga_id: str, rev: int) -> bool:
        """Drop the saga's outbox of `rev`, which can never be published; False if a newer one replaced it."""
        names = self.names
        keys = [names.outbox_key(saga_id), names.outbox_index(names.bucket(saga_id))]
        return bool(await self.scripts.call(self.redis, "park_outbox", keys, [saga_id, rev]))

    async def _claim(
        self, key: str, bucket: int, upto: int, until: int, limit: int, owner: str | None
    ) -> list[bytes | str]:
        keys = [key] if owner is None else [key, self.names.lease_key(bucket)]
        args = [upto, until, limit] if owner is None else [upto, until, limit, owner]
        result: list[bytes | str] = await self.scripts.call(self.redis, "claim", keys, args)
        return result

    async def pending_outboxes(
        self,
        now: float,
        grace: float,
        limit: int = 1000,
        buckets: Collection[int] = EVERY_BUCKET,
        owner: str | None = None,
    ) -> list[tuple[str, int, bytes]]:
        """Outboxes of `buckets` unconfirmed for `grace` seconds: (saga id, rev, messages).

        They are claimed as deadlines are: moved to `now` in the index, so
        another orchestrator's sweep leaves them alone for `grace`. With an
        `owner`, only from the buckets whose lease it holds.
        """
        names = self.names
        order = sorted(buckets)
        claims = [self._claim(names.outbox_index(b), b, ms(now - grace), ms(now), limit, owner) for b in order]
        found = []
        for bucket, claimed in zip(order, await asyncio.gather(*claims), strict=True):
            for raw in claimed:
                saga_id = _bytes(raw).decode()
                rev, messages = await self.redis.hmget(names.outbox_key(saga_id), "rev", "messages")
                if rev is None or messages is None:  # confirmed meanwhile, or expired with its saga
                    await self.redis.zrem(names.outbox_index(bucket), saga_id)
                    continue
                found.append((saga_id, int(rev), _bytes(messages)))
        return found

    async def claim_due(
        self,
        now: float,
        lease: float,
        limit: int,
        buckets: Collection[int] = EVERY_BUCKET,
        owner: str | None = None,
    ) -> list[tuple[str, int]]:
        """Saga ids of `buckets` due by `now`, leased until now+lease: (saga id, lease score).

        With an `owner`, only from the buckets whose lease it holds. On a single
        Redis every bucket is claimed by one script call (claim_many.lua), so an
        idle tick costs one command, not one per bucket.
        """
        until = ms(now + lease)
        names = self.names
        order = sorted(buckets)
        if not isinstance(self.redis, RedisCluster) and order:
            keys = [names.deadline_key(b) for b in order]
            args: list[object] = [ms(now), until, limit]
            if owner is not None:
                keys += [names.lease_key(b) for b in order]
                args.append(owner)
            due: list[bytes | str] = await self.scripts.call(self.redis, "claim_many", keys, args)
            return [(_bytes(raw).decode(), until) for raw in due]
        claims = [self._claim(names.deadline_key(b), b, ms(now), until, limit, owner) for b in order]
        return [(_bytes(raw).decode(), until) for due in await asyncio.gather(*claims) for raw in due]

    async def settle(self, saga_id: str, lease: int, wake_at: float | None) -> None:
        """Put a claimed deadline back at the saga's wake time, unless it moved since."""
        key = self.names.deadline_key(self.names.bucket(saga_id))
        await self.scripts.call(self.redis, "settle", [key], [saga_id, lease, "" if wake_at is None else ms(wake_at)])

    async def sagas(self) -> AsyncIterator[SagaInstance]:
        """Every stored saga, in no particular order (SCAN: fine for operators, not for hot paths)."""
        async for key in self.redis.scan_iter(match=self.names.saga_pattern, count=1000):
            doc = await self.redis.hget(key, "doc")
            if doc is not None:
                yield _instance.decode(doc)

    async def select(
        self, status: str, saga_type: str | None = None, changed_after: float | None = None, limit: int | None = None
    ) -> list[str]:
        """Ids of the sagas with `status` (and `saga_type`, changed after `changed_after`), the oldest change first.

        A SCAN with the fields read in one pipelined round trip per page: the saga
        hash carries status, type and updated_at beside the document for this.
        """
        found: list[tuple[float, str]] = []
        keys: list[bytes] = []

        async def page() -> None:
            pipe = self.redis.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(key, "status", "type", "updated_at")
            for key, (got_status, got_type, updated) in zip(keys, await pipe.execute(), strict=True):
                if got_status is None or _bytes(got_status).decode() != status:
                    continue
                if saga_type is not None and (got_type is None or _bytes(got_type).decode() != saga_type):
                    continue
                at = float(updated or 0)
                if changed_after is not None and at < changed_after:
                    continue
                found.append((at, _bytes(key).decode().partition("}:")[2]))
            keys.clear()

        async for key in self.redis.scan_iter(match=self.names.saga_pattern, count=1000):
            keys.append(key)
            if len(keys) >= 1000:
                await page()
        await page()
        found.sort()
        return [saga_id for _, saga_id in found[:limit]]

    async def count(self, counter: str, by: int = 1) -> None:
        await self.redis.hincrby(self.names.counters_key, counter, by)

    async def counters(self) -> dict[str, int]:
        raw = await self.redis.hgetall(self.names.counters_key)
        return {_bytes(k).decode(): int(v) for k, v in raw.items()}

"""Which buckets this orchestrator sweeps: leases, shared out by rendezvous hashing.

Every orchestrator heartbeats into `<ns>:orchestrators` (a sorted set of
members by their last heartbeat) and, from the live members it reads back,
works out which buckets are its own: each bucket goes to the member whose
hash of (member, bucket) is highest, so a member joining or leaving moves
only its share. It holds each of its buckets by a lease in Redis
(`<ns>:lease:{b}`, SET NX PX, renewed at every heartbeat) and gives up those
that went to another member. The claim script checks the lease in the same
step as it claims (`lua/claim.lua`), so a member that was paused past its
lease, and lost the bucket meanwhile, claims nothing from it.

A member that dies stops heartbeating: after `ttl` it drops out of the
live members and its leases run out, and the survivors take its buckets
over. One that stops cleanly gives its leases up at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable

from orchestrator.store import RedisStore, ms
from participants.edge.batching import batcher
from statemachines.names import BUCKETS

log = logging.getLogger("saga.leases")


def owner(bucket: int, members: Iterable[str]) -> str | None:
    """The member that a bucket goes to (rendezvous hashing), None with no members."""
    return max(members, key=lambda member: _weight(member, bucket), default=None)


def _weight(member: str, bucket: int) -> bytes:
    return hashlib.blake2b(f"{member}/{bucket}".encode(), digest_size=8).digest()


class Leases:
    def __init__(self, store: RedisStore, ttl: float, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock
        self.me = uuid.uuid4().hex
        # The buckets whose lease this member held at its last heartbeat.
        self.held: frozenset[int] = frozenset()
        self.members: tuple[str, ...] = ()

    @property
    def every(self) -> float:
        """How often to heartbeat: several times a lease, so that one slow beat loses nothing."""
        return self.ttl / 4

    async def heartbeat(self) -> frozenset[int]:
        """Say this member is alive, read who else is, then take its buckets and give up the others."""
        store = self.store
        key = store.names.members_key
        now = ms(self.clock())
        batch = batcher(store.redis)
        _, _, raw = await asyncio.gather(
            batch.execute("ZADD", key, now, self.me),
            batch.execute("ZREMRANGEBYSCORE", key, "-inf", now - ms(self.ttl)),
            batch.execute("ZRANGE", key, 0, -1),
        )
        self.members = tuple(sorted(m.decode() if isinstance(m, bytes) else m for m in raw))
        mine = {b for b in range(BUCKETS) if owner(b, self.members) == self.me}
        asks = sorted(mine | self.held)
        results = await asyncio.gather(*(self._ask(b, "take" if b in mine else "give") for b in asks))
        held = frozenset(b for b, ok in zip(asks, results, strict=True) if ok)
        if held != self.held:
            log.info("sweeping %d of %d buckets, %d orchestrator(s) live", len(held), BUCKETS, len(self.members))
        self.held = held
        return held

    async def release(self) -> None:
        """Give every lease up and leave the members, so that the others take over at once."""
        held, self.held = self.held, frozenset()
        await asyncio.gather(*(self._ask(b, "give") for b in sorted(held)))
        await batcher(self.store.redis).execute("ZREM", self.store.names.members_key, self.me)

    async def _ask(self, bucket: int, what: str) -> bool:
        store = self.store
        key = store.names.lease_key(bucket)
        return bool(await store.scripts.call(store.redis, "lease", [key], [self.me, ms(self.ttl), what]))

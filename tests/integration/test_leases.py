"""N orchestrators share the buckets' sweeps by leases: each bucket swept by one, a dead one's taken over.

The leases are driven by hand here (orchestrator.leases.Leases, as the
service's heartbeat loop drives them), against the shared Redis in the
test's namespace.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from orchestrator.leases import Leases
from orchestrator.store import LayoutMismatch, RedisStore, ms
from participants.edge.settings import Settings
from statemachines.names import BUCKETS
from tests.integration.conftest import eventually
from tests.integration.scripted import open_store

EVERY = frozenset(range(BUCKETS))


@pytest.fixture
async def store(settings: Settings, cleanup: set[str]) -> AsyncIterator[RedisStore]:
    store = await open_store(settings)
    yield store
    await store.redis.aclose()


async def settled(*members: Leases) -> None:
    """Heartbeat every member until each holds its own share and nothing more moves."""

    async def beat() -> bool:
        before = [m.held for m in members]
        for member in members:
            await member.heartbeat()
        return before == [m.held for m in members] and all(len(m.members) == len(members) for m in members)

    await eventually(beat, timeout=10)


async def test_two_orchestrators_split_the_buckets_and_a_third_moves_only_its_share(store: RedisStore) -> None:
    a, b, c = (Leases(store, ttl=5.0) for _ in range(3))
    assert await a.heartbeat() == EVERY, "alone, an orchestrator sweeps every bucket"
    assert await b.heartbeat() == frozenset(), "a newcomer takes nothing its peer still holds"
    await settled(a, b)
    assert a.held | b.held == EVERY and not a.held & b.held
    assert a.held and b.held
    before = {"a": a.held, "b": b.held}
    await settled(a, b, c)
    assert a.held | b.held | c.held == EVERY
    assert not (a.held & b.held or a.held & c.held or b.held & c.held)
    assert a.held <= before["a"] and b.held <= before["b"], "the newcomer's share came from both, nothing else moved"
    for bucket in a.held:
        assert await store.redis.get(store.names.lease_key(bucket)) == a.me.encode()


async def test_the_buckets_of_a_dead_orchestrator_are_taken_over_once_its_leases_run_out(store: RedisStore) -> None:
    ttl = 1.0
    survivor, dead = Leases(store, ttl), Leases(store, ttl)
    await settled(survivor, dead)
    orphaned = dead.held
    assert orphaned
    died = time.monotonic()

    async def all_taken() -> bool:
        return await survivor.heartbeat() == EVERY

    await eventually(all_taken, timeout=10, every=0.1)
    assert time.monotonic() - died >= ttl * 0.9, "nobody took a bucket whose lease still held"
    assert survivor.members == (survivor.me,)


async def test_a_member_that_lost_its_lease_claims_no_deadline_of_that_bucket(store: RedisStore) -> None:
    names = store.names
    holder, other = Leases(store, 5.0), Leases(store, 5.0)
    await holder.heartbeat()
    saga_id = "lease-probe"
    bucket = names.bucket(saga_id)
    await store.redis.zadd(names.deadline_key(bucket), {saga_id: ms(time.time()) - 1000})
    now = time.time()
    assert await store.claim_due(now, 30, 10, [bucket], other.me) == [], "not its bucket: nothing claimed"
    [(claimed, _)] = await store.claim_due(now, 30, 10, [bucket], holder.me)
    assert claimed == saga_id
    # Stopping cleanly gives every lease up at once: the other takes them at its next heartbeat.
    await holder.release()
    assert await other.heartbeat() == EVERY


async def test_a_namespace_laid_out_in_another_bucket_count_is_refused(store: RedisStore) -> None:
    await store.check_layout()
    assert await store.redis.get(store.names.layout_key) == str(BUCKETS).encode(), "written at the first start"
    await store.check_layout()  # the same count again: fine
    await store.redis.set(store.names.layout_key, 64)
    with pytest.raises(LayoutMismatch, match=f"64 buckets and this version uses {BUCKETS}"):
        await store.check_layout()

"""Every key one commit writes shares its bucket's hash tag, so it shares a Redis Cluster slot."""

from __future__ import annotations

import re
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from orchestrator.leases import owner
from statemachines.names import BUCKETS, ID_PATTERN, Names

ids = st.from_regex(ID_PATTERN, fullmatch=True).filter(lambda s: len(s) <= 128)


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes of a key: the first {...} that is not empty."""
    found = re.search(r"\{([^}]+)\}", key)
    assert found is not None, f"{key} has no hash tag"
    return found.group(1)


@given(ids, st.sampled_from(["saga", "t0123456789"]))
def test_the_keys_of_one_commit_share_one_hash_tag(saga_id: str, namespace: str) -> None:
    names = Names(namespace)
    bucket = names.bucket(saga_id)
    keys = [
        names.saga_key(saga_id),
        names.history_key(saga_id),
        names.outbox_key(saga_id),
        names.rejected_key(saga_id),
        names.deadline_key(bucket),
        names.outbox_index(bucket),
        names.lease_key(bucket),
    ]
    assert {hash_tag(key) for key in keys} == {f"{namespace}:b{bucket}"}
    assert 0 <= bucket < BUCKETS
    # A saga's key still names its saga, so that two sagas never share one.
    assert names.saga_key(saga_id).endswith(f":{saga_id}")


def test_sagas_spread_over_every_bucket() -> None:
    spread = Counter(Names.bucket(f"order-{n}") for n in range(20_000))
    assert set(spread) == set(range(BUCKETS))
    assert max(spread.values()) < 2 * min(spread.values())


def test_each_bucket_has_one_owner_and_a_member_leaving_moves_only_its_own() -> None:
    members = [f"orchestrator-{n}" for n in range(3)]
    before = {bucket: owner(bucket, members) for bucket in range(BUCKETS)}
    assert set(before.values()) == set(members)
    assert all(count > BUCKETS / 6 for count in Counter(before.values()).values()), "a fair share each"
    after = {bucket: owner(bucket, members[:2]) for bucket in range(BUCKETS)}
    moved = {bucket for bucket in range(BUCKETS) if before[bucket] != after[bucket]}
    assert moved == {bucket for bucket, who in before.items() if who == members[2]}
    assert owner(0, []) is None

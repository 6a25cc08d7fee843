"""The latency budget of `saga bench`: where a saga's milliseconds go, hop by hop.

Run under SAGA_TIMING (participants.edge.timing), the orchestrator and the
participants note when each message of a saga passes; the bench adds when
it sent the start and when the outcome came back. One saga's notes, sorted
by time, are laid end to end: each pair of consecutive notes is one hop
(`HOPS`). A hop a saga crosses several times (a command to each of its
participants) counts its total per saga. The budget is, per hop, the p50
over the sagas of that total, so that a regression shows where it happened.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterable
from itertools import pairwise

from redis.asyncio import Redis

from orchestrator.tools.report import percentile
from participants.edge import timing
from statemachines.names import Names

Point = tuple[str, str]  # who (client, orchestrator or participant), what
HOPS: dict[tuple[Point, Point], str] = {
    (("client", "sent"), ("orchestrator", "taken")): "client_to_orchestrator",
    (("orchestrator", "taken"), ("orchestrator", "committed")): "orchestrator_commit",
    (("orchestrator", "committed"), ("orchestrator", "published")): "orchestrator_publish",
    (("orchestrator", "published"), ("participant", "taken")): "orchestrator_to_participant",
    (("participant", "taken"), ("participant", "published")): "participant_work",
    (("participant", "published"), ("orchestrator", "taken")): "participant_to_orchestrator",
    (("orchestrator", "published"), ("client", "done")): "orchestrator_to_client",
}
# In the order a saga meets them; "other" is any pair not above (none for an order saga at K=1).
ORDER = (*HOPS.values(), "other")


def spent(notes: Iterable[str], saga_ids: Iterable[str]) -> tuple[dict[str, list[float]], list[float]] | None:
    """Seconds each saga spent in each hop, and from its start sent to its outcome taken.

    None unless every saga has notes from its start to its outcome.
    """
    by_saga: defaultdict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for raw in notes:
        saga_id, who, what, at = raw.split(" ")
        who = who if who in (timing.ORCHESTRATOR, timing.CLIENT) else "participant"
        by_saga[saga_id].append((int(at), who, what))
    hops: dict[str, list[float]] = {hop: [] for hop in ORDER}
    totals = []
    for saga_id in saga_ids:
        found = sorted(by_saga.get(saga_id, []))
        if len(found) < 2 or found[0][1:] != (timing.CLIENT, "sent") or found[-1][1:] != (timing.CLIENT, "done"):
            return None
        mine = dict.fromkeys(ORDER, 0.0)
        for before, after in pairwise(found):
            hop = HOPS.get(((before[1], before[2]), (after[1], after[2])), "other")
            mine[hop] += (after[0] - before[0]) / 1e9
        for hop, seconds in mine.items():
            hops[hop].append(seconds)
        totals.append((found[-1][0] - found[0][0]) / 1e9)
    return hops, totals


def p50_ms(hops: dict[str, list[float]], totals: list[float]) -> tuple[dict[str, float], float]:
    """The p50 of each hop and of the total, in ms (by the same rank as the bench's latency p50)."""
    return {hop: percentile(v, 50) * 1000 for hop, v in hops.items()}, percentile(totals, 50) * 1000


async def collect(redis: Redis, names: Names, wanted: int) -> list[str]:
    """The notes pushed so far, once they stop coming (the processes push every FLUSH seconds)."""
    where = timing.key(names)
    seen = -1
    for _ in range(50):
        await asyncio.sleep(timing.FLUSH * 2)
        count = await redis.llen(where)
        if count == seen and count >= wanted:
            break
        seen = count
    raw = await redis.lrange(where, 0, -1)
    await redis.delete(where)
    return [r.decode() if isinstance(r, bytes) else r for r in raw]

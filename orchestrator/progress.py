"""A saga's progress as it happens: its history, entry by entry, each with an id to resume after.

`saga watch`, `saga start --wait` on a terminal and the web view's event
stream all read it. It reads what the engine records anyway (the history
list and the saga's hash), so following a saga costs the hot path nothing.

An id is `<n>-<at>`: the entry's place in the saga's history (1 for the
first) and its time. The history keeps its newest entries only, so a
reader that resumes looks for its last entry by time rather than trusting
the place alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from orchestrator.store import HISTORY_CAP, RedisStore
from statemachines.instance import HistoryEntry, SagaInstance
from statemachines.messages import TERMINAL


@dataclass(frozen=True)
class Progress:
    id: str
    entry: HistoryEntry


def path_of(history: Sequence[HistoryEntry]) -> list[str]:
    """The states a saga went through, from its history."""
    if not history:
        return []
    return [history[0].source] + [h.dest for h in history if h.dest != h.source]


def progress_id(n: int, entry: HistoryEntry) -> str:
    return f"{n}-{entry.at!r}"


def _resume_point(history: Sequence[HistoryEntry], after: str | None) -> tuple[int, int]:
    """(index in `history` of the first entry to give, its place n) for a reader whose last id was `after`."""
    if not after:
        return 0, 1
    number, _, at = after.partition("-")
    try:
        seen, when = int(number), float(at)
    except ValueError:
        return 0, 1
    for index in range(len(history) - 1, -1, -1):
        if history[index].at == when:
            return index + 1, seen + 1
    # Not there: trimmed away, or the id was made up; a short history was never trimmed.
    start = min(seen, len(history)) if len(history) < HISTORY_CAP else 0
    return start, seen + 1


async def follow(
    store: RedisStore, saga_id: str, after: str | None = None, every: float = 0.2
) -> AsyncIterator[Progress | SagaInstance]:
    """Yield each new history entry of the saga in order, then its instance once it has an outcome.

    Waits (polling every `every` seconds) while the saga does not exist yet
    or is still running; a stuck saga counts as an outcome.
    """
    position: tuple[int, int] | None = None
    last: HistoryEntry | None = None
    while True:
        # The instance first: its commit wrote the history with it, so a
        # terminal instance means the history read next is complete.
        inst = await store.load(saga_id)
        history = await store.history(saga_id)
        if position is None:
            if inst is None:
                await asyncio.sleep(every)
                continue
            position = _resume_point(history, after)
            index, n = position
        else:
            index, n = position
            if last is not None and (index > len(history) or history[index - 1] != last):
                # Trimmed at the head meanwhile: find our last entry again.
                found = [i for i in range(len(history) - 1, -1, -1) if history[i] == last]
                index = found[0] + 1 if found else 0
        for entry in history[index:]:
            yield Progress(progress_id(n, entry), entry)
            last = entry
            n += 1
        position = (len(history), n)
        if inst is not None and inst.status in TERMINAL:
            yield inst
            return
        await asyncio.sleep(every)

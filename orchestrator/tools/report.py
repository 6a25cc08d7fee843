"""Figures from sagas' histories: latency per step, percentiles."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

from statemachines.instance import HistoryEntry


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def step_latencies(histories: Iterable[Sequence[HistoryEntry]]) -> dict[str, list[float]]:
    """Seconds each step's state was held, by state name (forward and compensating)."""
    held: dict[str, list[float]] = defaultdict(list)
    for history in histories:
        entered: dict[str, float] = {}
        for entry in history:
            if entry.source == entry.dest:
                continue
            if entry.source in entered:
                held[entry.source].append(entry.at - entered.pop(entry.source))
            entered[entry.dest] = entry.at
    return dict(held)


def saga_latency(history: Sequence[HistoryEntry]) -> float:
    """Seconds from start to the last transition."""
    moves = [entry for entry in history if entry.source != entry.dest]
    return moves[-1].at - moves[0].at if moves else 0.0


def table(rows: Sequence[Sequence[str]]) -> str:
    """Rows as left-aligned text columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)

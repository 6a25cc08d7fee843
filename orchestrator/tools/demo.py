"""`saga demo`: the whole system on this machine, some sagas failing by design.

It starts the orchestrator and the example participants as child
processes, runs a mix of order and trip sagas through them, shows progress,
prints what happened and how long each step took, and stops its children.
"""

from __future__ import annotations

import asyncio
import random
import sys
import uuid
from collections import Counter
from typing import Any

from orchestrator.client import SagaClient
from orchestrator.tools.fleet import EXAMPLES, Fleet
from orchestrator.tools.report import percentile, saga_latency, step_latencies, table
from participants.edge.settings import Settings
from statemachines.messages import SagaEvent


def scenarios(count: int, seed: int = 7) -> list[tuple[str, dict[str, Any], str]]:
    """(saga type, data, what should happen) for a mix of order and trip sagas."""
    rng = random.Random(seed)
    out = []
    for n in range(count):
        fail = rng.random() < 0.3
        if n % 2 == 0:
            step = rng.choice(["reserve_inventory", "charge_payment", "create_shipment"])
            items = [{"sku": f"sku-{rng.randint(1, 9)}", "qty": rng.randint(1, 3)} for _ in range(rng.randint(1, 3))]
            data: dict[str, Any] = {
                "order_id": f"order-{n}",
                "customer_id": f"customer-{rng.randint(1, 20)}",
                "items": items,
                "amount": rng.randint(500, 50_000),
                "fail_at": [step] if fail else [],
            }
            out.append(("order", data, "compensated" if fail else "completed"))
        else:
            step = rng.choice(["book_flight", "book_hotel", "rent_car"])
            destination = rng.choice(["paris", "rome", "lisbon", "tokyo"])
            data = {
                "trip_id": f"trip-{n}",
                "customer_id": f"customer-{rng.randint(1, 20)}",
                "destination": destination,
                "nights": rng.randint(1, 7),
                "fail_at": [step] if fail else [],
            }
            out.append(("trip", data, "compensated" if fail else "completed"))
    return out


def progress(done: int, total: int, counts: Counter[str]) -> None:
    width = 30
    filled = width * done // total
    line = f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}  " + "  ".join(
        f"{status} {n}" for status, n in sorted(counts.items())
    )
    if sys.stdout.isatty():
        print(line, end="", flush=True)
    elif done == total or done % 10 == 0:
        print(line.strip("\r"), flush=True)


async def run_demo(settings: Settings, count: int = 40, concurrency: int = 8) -> int:
    fleet = Fleet(settings)
    print(f"starting the orchestrator and {len(EXAMPLES)} example participants in namespace {settings.namespace!r}")
    try:
        await fleet.start_examples()
        async with await SagaClient.connect(settings) as client:
            outcomes = await _run(client, scenarios(count), concurrency)
            histories = [await client.store.history(event.saga_id) for event, _ in outcomes]
            failed = _summary(outcomes, histories)
    finally:
        fleet.stop()
    print("\nInspect one:  saga show <id>      List them:  saga list      Graph:  saga graph order --saga <id>")
    return 1 if failed else 0


async def _run(
    client: SagaClient, plan: list[tuple[str, dict[str, Any], str]], concurrency: int
) -> list[tuple[SagaEvent, str]]:
    gate = asyncio.Semaphore(concurrency)
    counts: Counter[str] = Counter()
    results: list[tuple[SagaEvent, str]] = []

    async def one(saga_type: str, data: dict[str, Any], expected: str) -> None:
        async with gate:
            event = await client.start(saga_type, data, f"demo-{uuid.uuid4().hex[:8]}", wait=True, timeout=60)
        counts[event.status] += 1
        results.append((event, expected))
        progress(len(results), len(plan), counts)

    await asyncio.gather(*(one(*scenario) for scenario in plan))
    print()
    return results


def _summary(outcomes: list[tuple[SagaEvent, str]], histories: list[Any]) -> bool:
    by_type: Counter[tuple[str, str]] = Counter((event.saga_type, event.status) for event, _ in outcomes)
    rows = [["saga", "completed", "compensated", "stuck"]]
    for saga_type in sorted({t for t, _ in by_type}):
        rows.append([saga_type, *(str(by_type[(saga_type, s)]) for s in ("completed", "compensated", "stuck"))])
    print("\n" + table(rows))
    held = step_latencies(histories)
    rows = [["step", "count", "p50 ms", "p95 ms"]]
    for state, values in sorted(held.items()):
        values_ms = [v * 1000 for v in values]
        rows.append([state, str(len(values)), f"{percentile(values_ms, 50):.1f}", f"{percentile(values_ms, 95):.1f}"])
    print("\nlatency per step (time from command sent to reply applied)\n" + table(rows))
    sagas = [saga_latency(h) * 1000 for h in histories]
    print(f"\nsaga latency: p50 {percentile(sagas, 50):.1f} ms, p95 {percentile(sagas, 95):.1f} ms")
    surprises = [(event, expected) for event, expected in outcomes if event.status != expected]
    for event, expected in surprises:
        print(f"unexpected: {event.saga_id} is {event.status}, expected {expected} ({event.error})")
    return bool(surprises)

"""The trip participants (flight, hotel, car) book capacity per destination."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from participants.examples.stock import Stock, refuse_if_asked
from participants.worker import Context, Worker

# Capacity per destination; Reykjavik is small enough to sell out.
DESTINATIONS = {"paris": 1_000_000, "rome": 1_000_000, "lisbon": 1_000_000, "tokyo": 1_000_000, "reykjavik": 2}


def booking_worker(
    participant: str,
    book: str,
    cancel: str,
    what: str,
    refusal: str,
    units: Callable[[Mapping[str, Any]], int] = lambda payload: 1,
) -> Worker:
    """A worker that takes `units(payload)` of `what` at the trip's destination, and gives it back."""
    worker = Worker(participant)
    capacity = Stock(participant, what)

    async def seed(worker: Worker) -> None:
        assert worker.redis is not None
        await capacity.seed(worker.redis, worker.names, DESTINATIONS)

    async def booked(ctx: Context) -> dict[str, Any]:
        refuse_if_asked(ctx)
        await capacity.take(ctx, {ctx.payload["destination"]: units(ctx.payload)}, refusal)
        return {f"{participant}_booking": ctx.key}

    async def cancelled(ctx: Context) -> None:
        await capacity.give_back(ctx)

    worker.on_start = seed
    worker.handler(book)(booked)
    worker.handler(cancel)(cancelled)
    return worker

"""Inventory: reserves stock for an order's items, and releases it.

saga participant participants.examples.inventory:worker
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from participants.examples.stock import Stock, refuse_if_asked
from participants.worker import Context, Worker

# Plenty of everything, except a rare item to run out of.
CATALOGUE = {**{f"sku-{n}": 1_000_000 for n in range(1, 10)}, "sku-rare": 3}

worker = Worker("inventory")
stock = Stock("inventory", "stock")


async def seed(worker: Worker) -> None:
    assert worker.redis is not None
    await stock.seed(worker.redis, worker.names, CATALOGUE)


worker.on_start = seed


@worker.handler("reserve_stock")
async def reserve(ctx: Context) -> dict[str, Any]:
    refuse_if_asked(ctx)
    wanted: Counter[str] = Counter()
    for item in ctx.payload["items"]:
        wanted[item["sku"]] += int(item["qty"])
    await stock.take(ctx, wanted, "out_of_stock")
    return {"reservation_id": ctx.key}


@worker.handler("release_stock")
async def release(ctx: Context) -> None:
    await stock.give_back(ctx)

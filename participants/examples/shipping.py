"""Shipping: books a truck for an order. It is the order saga's pivot, so it has no undo.

saga participant participants.examples.shipping:worker
"""

from __future__ import annotations

from typing import Any

from participants.examples.stock import Stock, refuse_if_asked
from participants.worker import Context, Failure, Worker

# More items than a parcel takes.
MAX_ITEMS = 1000

worker = Worker("shipping")
shipments = Stock("shipping", "trucks")


async def seed(worker: Worker) -> None:
    assert worker.redis is not None
    await shipments.seed(worker.redis, worker.names, {"trucks": 1_000_000_000})


worker.on_start = seed


@worker.handler("create_shipment")
async def create_shipment(ctx: Context) -> dict[str, Any]:
    refuse_if_asked(ctx)
    count = sum(int(item["qty"]) for item in ctx.payload["items"])
    if count > MAX_ITEMS:
        raise Failure("too_large", f"{count} items do not fit a parcel of {MAX_ITEMS}")
    await shipments.take(ctx, {"trucks": 1}, "no_truck")
    return {"shipment_id": ctx.key}

"""Payment: charges a customer's card against a credit limit, and refunds.

The ledger is the stock's entries (charges) and returns (refunds): a
compensated order nets to zero.

    saga participant participants.examples.payment:worker
"""

from __future__ import annotations

from typing import Any

from participants.examples.stock import Stock, refuse_if_asked
from participants.worker import Context, Worker

# Each new customer's card may carry this much, in cents.
CREDIT_LIMIT = 1_000_000_00

worker = Worker("payment")
credit = Stock("payment", "credit")


@worker.handler("charge")
async def charge(ctx: Context) -> dict[str, Any]:
    refuse_if_asked(ctx)
    amount = {ctx.payload["customer_id"]: int(ctx.payload["amount"])}
    await credit.take(ctx, amount, "card_declined", default=CREDIT_LIMIT)
    return {"charge_id": ctx.key}


@worker.handler("refund")
async def refund(ctx: Context) -> None:
    await credit.give_back(ctx)

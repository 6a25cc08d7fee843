"""Backup payment: a second card processor, for when the first is down; charges and refunds.

It keeps a ledger of its own, like the payment participant's (entries for
charges, returns for refunds), so a test can tell which orders it charged:
an order paid through the fallback has its charge here, not there.

    saga participant participants.examples.backup_payment:worker
"""

from __future__ import annotations

from typing import Any

from participants.examples.payment import CREDIT_LIMIT
from participants.examples.stock import Stock, refuse_if_asked
from participants.worker import Context, Worker

worker = Worker("backup_payment")
credit = Stock("backup_payment", "credit")


@worker.handler("charge")
async def charge(ctx: Context) -> dict[str, Any]:
    refuse_if_asked(ctx)
    amount = {ctx.payload["customer_id"]: int(ctx.payload["amount"])}
    await credit.take(ctx, amount, "card_declined", default=CREDIT_LIMIT)
    return {"charge_id": ctx.key, "paid_by": "backup_payment"}


@worker.handler("refund")
async def refund(ctx: Context) -> None:
    await credit.give_back(ctx)

"""Fraud: checks an order's amount before it is charged; a check changes nothing, so nothing is undone.

Every check is kept in a ledger (`<ns>:participant:fraud:checks`, the step's
idempotency key -> the amount checked), written once however often the
check runs, so tests can tell which orders were checked.

    saga participant participants.examples.fraud:worker
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from participants.examples.stock import refuse_if_asked
from participants.worker import Context, Failure, Worker
from statemachines.names import Names

# An amount above this (in cents) is refused as suspected fraud.
SUSPICIOUS = 500_000_00

worker = Worker("fraud")


def ledger(names: Names) -> str:
    return names.participant_key("fraud", "checks")


@worker.handler("check_fraud")
async def check_fraud(ctx: Context) -> dict[str, Any]:
    refuse_if_asked(ctx)
    amount = int(ctx.payload["amount"])
    await ctx.redis.hsetnx(ledger(ctx.names), ctx.key, amount)
    if amount > SUSPICIOUS:
        raise Failure("fraud_suspected", f"an amount of {amount} needs a person to look at it")
    return {"fraud_checked": ctx.key}


async def checks(redis: Redis, names: Names) -> dict[str, int]:
    """Every check made, by the step's idempotency key."""
    raw = await redis.hgetall(ledger(names))
    return {(k.decode() if isinstance(k, bytes) else k): int(v) for k, v in raw.items()}

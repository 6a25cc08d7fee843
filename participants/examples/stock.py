"""What the example participants keep: stocks of countable things in Redis.

Stock levels (items, credit, seats, rooms, cars) live in one hash per stock;
what each saga step took is an entry keyed by the step's idempotency key, and
giving it back is recorded once too. So a handler that runs twice after a
crash takes once, and a compensation that runs twice gives back once.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import msgspec
from redis.asyncio import Redis

from participants.edge.scripts import Scripts
from participants.worker import Context, Failure
from statemachines.messages import COMPENSATED
from statemachines.names import Names

_scripts = Scripts(Path(__file__).parent / "lua")
_taken = msgspec.json.Decoder(dict[str, int])


class Stock:
    def __init__(self, participant: str, name: str) -> None:
        self.participant = participant
        self.name = name

    def keys(self, names: Names) -> tuple[str, str, str]:
        """The stock levels, what was taken, and what was given back: one slot, for the scripts' sake."""
        key = names.book_key
        return (
            key(self.participant, self.name),
            key(self.participant, self.name, "taken"),
            key(self.participant, self.name, "returned"),
        )

    async def seed(self, redis: Redis, names: Names, levels: Mapping[str, int]) -> None:
        """Set levels that are not set yet; a restart keeps what is there."""
        pipe = redis.pipeline(transaction=False)
        for field, level in levels.items():
            pipe.hsetnx(self.keys(names)[0], field, level)
        await pipe.execute()

    async def take(self, ctx: Context, amounts: Mapping[str, int], refusal: str, default: int | None = None) -> None:
        """Take all `amounts` for this step, or raise Failure(`refusal`) naming what is short.

        A field never seen before starts at `default` (None: at 0).
        """
        args: list[str | int] = [ctx.key, "" if default is None else default]
        for field, amount in sorted(amounts.items()):
            args += [field, amount]
        taken = await _scripts.call(ctx.redis, "take", self.keys(ctx.names), args)
        if taken == 0:
            raise Failure(COMPENSATED, "this step was given back already")
        if taken != 1:
            short = taken.decode() if isinstance(taken, bytes) else str(taken)
            raise Failure(refusal, f"not enough {self.name} for {short}")

    async def give_back(self, ctx: Context) -> None:
        """Give back what this step took, if it took anything and has not given it back."""
        await _scripts.call(ctx.redis, "give_back", self.keys(ctx.names), [ctx.key])

    async def level(self, redis: Redis, names: Names, field: str) -> int:
        return int(await redis.hget(self.keys(names)[0], field) or 0)

    async def taken(self, redis: Redis, names: Names) -> dict[str, dict[str, int]]:
        """Every entry taken, by idempotency key."""
        raw = await redis.hgetall(self.keys(names)[1])
        return {_text(k): _taken.decode(v) for k, v in raw.items()}

    async def returned(self, redis: Redis, names: Names) -> set[str]:
        return {_text(k) for k in await redis.hkeys(self.keys(names)[2])}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def refuse_if_asked(ctx: Context) -> None:
    """Fail when the saga data lists this step in `fail_at`, so every path can be driven by hand.

    `<step>` refuses for good (`asked_to_fail`); `<step>:unavailable` fails
    with the retriable `unavailable`, as a participant that is down would,
    so that retries, fallbacks and circuit breakers can be driven too.
    """
    fail_at = ctx.payload.get("fail_at", ())
    if ctx.command.step in fail_at:
        raise Failure("asked_to_fail", f"fail_at lists {ctx.command.step!r}")
    if f"{ctx.command.step}:unavailable" in fail_at:
        raise Failure("unavailable", f"fail_at lists {ctx.command.step + ':unavailable'!r}")

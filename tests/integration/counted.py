"""The example participants with a counter around each handler, for the fault tests.

Run as `saga participant tests.integration.counted:inventory` (and payment,
backup_payment, fraud, shipping, flight, hotel, car). The handlers are the examples' own, unchanged;
the wrapper only counts, in the participant's namespace in Redis:

- `<ns>:participant:<name>:test:calls`, a field `<command>|<saga step>|<uuid>`
  for each time the handler ran, valued by how that run ended: `ok`, `failure`
  (it raised Failure), `raised` (any other exception: an error reached the
  handler), `cancelled`, or still `ran` (its process was killed). A run cut
  short can run again on redelivery, as the worker documents;
- `<ns>:participant:<name>:test:twice`, the same fields, each time the handler
  ran although the step's own record said it was done already (an action that
  succeeded, or a compensation that was applied), which the worker promises
  never to do. The test asserts this hash is empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping
from typing import Any

from participants.examples import backup_payment as _backup_payment
from participants.examples import car as _car
from participants.examples import flight as _flight
from participants.examples import fraud as _fraud
from participants.examples import hotel as _hotel
from participants.examples import inventory as _inventory
from participants.examples import payment as _payment
from participants.examples import shipping as _shipping
from participants.worker import Context, Failure, Handler, Worker


def calls_key(ctx: Context) -> str:
    return ctx.state_key("test", "calls")


def twice_key(ctx: Context) -> str:
    return ctx.state_key("test", "twice")


def _counting(handler: Handler) -> Handler:
    async def counted(ctx: Context) -> Mapping[str, Any] | None:
        command = ctx.command
        # The record the worker keeps of this saga step (participants/worker.py, `handle`).
        record = ctx.state_key("step", f"{{{command.saga_id}}}", command.step)
        did, compensated = await ctx.redis.hmget(record, "do", "compensated")
        done = compensated is not None or (command.action == "do" and did == b"success")
        # One field per call, so that a write the client retries after a lost connection counts once.
        field = f"{command.command}|{ctx.key}|{uuid.uuid4().hex}"
        pipe = ctx.redis.pipeline(transaction=False)
        pipe.hset(calls_key(ctx), field, "ran")
        if done:
            pipe.hset(twice_key(ctx), field, 1)
        await pipe.execute()
        outcome = "raised"
        try:
            result = await handler(ctx)
            outcome = "ok"
            return result
        except Failure:
            outcome = "failure"
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            with contextlib.suppress(Exception):
                await ctx.redis.hset(calls_key(ctx), field, outcome)

    return counted


def counted(worker: Worker) -> Worker:
    """Wrap every handler of `worker` (in this process only) with the counters."""
    for command, handler in list(worker.handlers.items()):
        worker.handlers[command] = _counting(handler)
    return worker


# `saga participant tests.integration.counted:<name>`
inventory = counted(_inventory.worker)
payment = counted(_payment.worker)
backup_payment = counted(_backup_payment.worker)
fraud = counted(_fraud.worker)
shipping = counted(_shipping.worker)
flight = counted(_flight.worker)
hotel = counted(_hotel.worker)
car = counted(_car.worker)

"""Several orchestrators on the same queues: every saga finishes, every reply is applied once.

The orchestrators share `<ns>.start` and `<ns>.replies` and the deadline
index; the version compare-and-set in the commit script keeps them correct.
A few hundred of the shipped order and trip sagas, some asked to fail at a
step, run through three orchestrators, in this process and as real
processes. Each saga's history must be exactly the path its definition
prescribes (a reply applied twice, or lost, would show), and the example
participants' own books must balance: stock taken only by completed orders,
every charge of a compensated order refunded, every booking of a compensated
trip cancelled.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from orchestrator.client import SagaClient
from orchestrator.store import RedisStore
from orchestrator.tools.fleet import EXAMPLES, Fleet
from participants.edge.settings import Settings
from participants.examples import inventory, payment
from participants.examples.stock import Stock
from statemachines.dsl import Saga
from statemachines.harness import SagaHarness
from statemachines.names import Names
from statemachines.sagas import order as order_saga
from statemachines.sagas import trip as trip_saga
from tests.integration.conftest import eventually, remove_namespace, running
from tests.integration.scripted import transitions
from tests.integration.test_end_to_end import order, trip

SAGA_OF = {"order": order_saga, "trip": trip_saga}
TRIP_STOCKS = {"book_flight": ("flight", "seats"), "book_hotel": ("hotel", "rooms"), "rent_car": ("car", "cars")}


@dataclass(frozen=True)
class Planned:
    saga_type: str
    saga_id: str
    failing: str | None

    @property
    def saga(self) -> Saga:
        return SAGA_OF[self.saga_type]


# The steps that run for these sagas' data (the fraud check is skipped at this amount).
FAILING = {
    "order": ("reserve_inventory", "charge_payment", "create_shipment"),
    "trip": ("book_flight", "book_hotel", "rent_car"),
}


def plan(count: int) -> list[Planned]:
    """`count` sagas, alternating order and trip, cycling through success and a failure at each step."""
    out = []
    choices = {name: itertools.cycle([None, *steps]) for name, steps in FAILING.items()}
    for n in range(count):
        saga_type = ("order", "trip")[n % 2]
        out.append(Planned(saga_type, f"{saga_type}-{n}-{uuid.uuid4().hex[:6]}", next(choices[saga_type])))
    return out


def data_for(planned: Planned) -> dict[str, Any]:
    fail_at = [planned.failing] if planned.failing else []
    return order(fail_at=fail_at) if planned.saga_type == "order" else trip(fail_at=fail_at)


def expected_path(saga: Saga, failing: str | None, data: dict[str, Any]) -> list[str]:
    """The states a saga of `saga` enters when the step `failing` (if any) refuses.

    Asked of the pure core (the harness), so that what the orchestrators did live is held to
    what one decide() at a time does.
    """
    run = SagaHarness(saga).start(saga.name, data)
    while not run.done:
        sent = run.awaited[0]
        if sent.step == failing and sent.action == "do":
            run.fail("asked_to_fail", step=sent.step)
        else:
            run.succeed(step=sent.step)
    return run.states


async def statuses(redis: Redis, names: Names, sagas: list[Planned]) -> list[str]:
    pipe = redis.pipeline(transaction=False)
    for planned in sagas:
        pipe.hget(names.saga_key(planned.saga_id), "status")
    return [raw.decode() if raw else "missing" for raw in await pipe.execute()]


async def wait_until_all_end(redis: Redis, names: Names, sagas: list[Planned], timeout: float) -> None:
    async def ended() -> bool:
        return all(s in ("completed", "compensated") for s in await statuses(redis, names, sagas))

    try:
        await eventually(ended, timeout=timeout, every=0.1)
    except AssertionError:
        found = await statuses(redis, names, sagas)
        raise AssertionError({s: found.count(s) for s in set(found)}) from None


async def verify(redis: Redis, names: Names, sagas: list[Planned], stock_before: dict[str, int]) -> None:
    """Every saga took exactly its path, once; the participants' books balance."""
    store = RedisStore(redis, names)
    for planned in sagas:
        inst = await store.load(planned.saga_id)
        assert inst is not None
        want = expected_path(planned.saga, planned.failing, data_for(planned))
        assert inst.status == want[-1], (planned, inst.status)
        moves = transitions(await store.history(planned.saga_id))
        told = (planned, [(h.event, h.source, h.dest, h.attempt, h.detail) for h in moves])
        assert ["new", *(h.dest for h in moves if h.dest != h.source)] == want, told
        # The entries of one commit share its time: one revision per event applied, none applied twice.
        assert inst.rev == len({h.at for h in moves}), "one revision per event applied"

    orders = [p for p in sagas if p.saga_type == "order"]
    taken = await inventory.stock.taken(redis, names)
    given_back = await inventory.stock.returned(redis, names)
    charges = await payment.credit.taken(redis, names)
    refunds = await payment.credit.returned(redis, names)
    completed_orders = 0
    for planned in orders:
        reserved = f"{planned.saga_id}:reserve_inventory"
        charged = f"{planned.saga_id}:charge_payment"
        if planned.failing is None:
            completed_orders += 1
            assert reserved in taken and reserved not in given_back
            assert charges[charged] == {"c-1": 4200} and charged not in refunds
            continue
        assert (reserved in taken) == (planned.failing != "reserve_inventory"), planned
        assert reserved not in taken or reserved in given_back, f"{planned}: stock restored"
        assert (charged in charges) == (planned.failing == "create_shipment"), planned
        assert charged not in charges or charged in refunds, f"{planned}: refunded"
    levels = {sku: await inventory.stock.level(redis, names, sku) for sku in stock_before}
    assert levels == {
        "sku-1": stock_before["sku-1"] - 2 * completed_orders,
        "sku-2": stock_before["sku-2"] - completed_orders,
    }, "only completed orders hold stock"

    for step, (participant, what) in TRIP_STOCKS.items():
        capacity = Stock(participant, what)
        booked = await capacity.taken(redis, names)
        cancelled = await capacity.returned(redis, names)
        for planned in (p for p in sagas if p.saga_type == "trip"):
            key = f"{planned.saga_id}:{step}"
            # The bookings go out at once: a failed trip may have made any but the refused one, and undoes it.
            if planned.failing is None:
                assert key in booked and key not in cancelled, (planned, step)
            elif step == planned.failing:
                assert key not in booked, (planned, step)
            else:
                assert key not in booked or key in cancelled, (planned, step)


async def seeded_stock(redis: Redis, names: Names) -> dict[str, int]:
    return {sku: await inventory.stock.level(redis, names, sku) for sku in ("sku-1", "sku-2")}


async def test_three_orchestrators_in_process_apply_each_reply_once(settings: Settings) -> None:
    sagas = plan(300)
    async with running(settings, orchestrators=3) as stack:
        redis = stack.client.store.redis
        before = await seeded_stock(redis, stack.names)
        await asyncio.gather(*(stack.client.start(p.saga_type, data_for(p), p.saga_id) for p in sagas))
        await wait_until_all_end(redis, stack.names, sagas, timeout=60)
        await verify(redis, stack.names, sagas, before)
        applied = [o.engine.stats["transitions"] for o in stack.orchestrators]  # type: ignore[union-attr]
        assert all(applied), f"every orchestrator took part: {applied}"


async def test_three_orchestrator_processes_finish_every_saga(settings: Settings, tmp_path: Path) -> None:
    sagas = plan(240)
    fleet = Fleet(settings, logs=tmp_path)
    redis = Redis.from_url(settings.redis_url)
    try:
        for n in range(3):
            fleet.orchestrator(f"orchestrator-{n}")
        for participant in EXAMPLES:
            fleet.participant(participant)
        await fleet.ready(fleet.examples_queues())

        async def all_up() -> bool:
            return all(
                "orchestrator up" in (tmp_path / f"orchestrator-{n}.log").read_text(errors="replace") for n in range(3)
            )

        await eventually(all_up, timeout=30)
        names = settings.names
        before = await seeded_stock(redis, names)
        async with await SagaClient.connect(settings) as client:
            await asyncio.gather(*(client.start(p.saga_type, data_for(p), p.saga_id) for p in sagas))
        await wait_until_all_end(redis, names, sagas, timeout=60)
        await verify(redis, names, sagas, before)
        codes = await asyncio.to_thread(fleet.stop)
        assert all(code == 0 for code in codes.values()), codes
    finally:
        await asyncio.to_thread(fleet.stop)
        await redis.aclose()
        await remove_namespace(settings, set(EXAMPLES))

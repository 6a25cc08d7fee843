"""The shared circuit breaker's state machine, in real Redis: closed -> open -> half-open (one trial) -> closed/open.

Time is the test's own clock, passed to the scripts as the engine passes
its clock, so nothing here sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from aio_pika.abc import AbstractIncomingMessage, ExchangeType
from redis.asyncio import Redis

from orchestrator.breakers import Breakers
from orchestrator.store import RedisStore
from participants.edge.amqp import Broker
from participants.edge.settings import Settings
from statemachines.messages import BreakerEvent, decode

KEY = "participant:payment"
OTHER = "step:order.charge"


@dataclass(frozen=True)
class Policy:
    failures: int = 3
    window: float = 30.0
    cool_down: float = 60.0


POLICY = Policy()
POLICIES = {KEY: POLICY, OTHER: POLICY}


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def breakers(settings: Settings, redis: Redis, clock: Clock, cleanup: set[str]) -> AsyncIterator[Breakers]:
    store = RedisStore(redis, settings.names)
    await store.connect()
    yield Breakers(store, clock=clock)


async def fail(breakers: Breakers, times: int, key: str = KEY, saga: str = "s") -> list[str]:
    moved = []
    for n in range(times):
        moved += [m.state for m in await breakers.record([(key, False)], POLICIES, f"{saga}{n}")]
    return moved


async def test_a_breaker_opens_at_the_nth_failure_within_its_window(breakers: Breakers, clock: Clock) -> None:
    assert (await breakers.check(POLICIES, "s")).open == frozenset()
    assert await fail(breakers, 2) == []
    assert (await breakers.check(POLICIES, "s")).open == frozenset()
    assert await fail(breakers, 1) == ["open"]
    seen = await breakers.check(POLICIES, "s")
    assert seen.open == {KEY} and seen.may_try == frozenset()
    # Another breaker is not touched.
    assert OTHER not in seen.open


async def test_failures_spread_wider_than_the_window_do_not_open_it(breakers: Breakers, clock: Clock) -> None:
    for _ in range(6):
        assert await fail(breakers, 1) == []
        clock.now += 16  # two failures at most within any 30 s
    assert (await breakers.check(POLICIES, "s")).open == frozenset()


async def test_a_success_while_closed_leaves_the_window_as_it_is(breakers: Breakers, clock: Clock) -> None:
    await fail(breakers, 2)
    assert await breakers.record([(KEY, True)], POLICIES, "ok") == []
    assert await fail(breakers, 1) == ["open"]


async def test_after_the_cool_down_exactly_one_trial_goes_among_concurrent_sagas(
    breakers: Breakers, clock: Clock
) -> None:
    await fail(breakers, 3)
    clock.now += 59
    assert (await breakers.check(POLICIES, "a")).open == {KEY}
    assert not await breakers.claim(KEY, POLICY, "a")
    clock.now += 1
    sagas = [f"saga-{n}" for n in range(20)]
    seen = await asyncio.gather(*(breakers.check(POLICIES, s) for s in sagas))
    assert all(KEY in s.may_try for s in seen)  # each may ask...
    granted = await asyncio.gather(*(breakers.claim(KEY, POLICY, s) for s in sagas))
    assert sum(granted) == 1  # ...one gets it
    trial = sagas[granted.index(True)]
    assert (await breakers.state(KEY))["state"] == "half_open"
    # The trial's own saga may go on trying (its retry, a conflict's redo); the others stay out.
    assert KEY in (await breakers.check(POLICIES, trial)).may_try
    assert await breakers.claim(KEY, POLICY, trial)
    others = [s for s in sagas if s != trial]
    assert all(KEY in s.open for s in await asyncio.gather(*(breakers.check(POLICIES, o) for o in others)))


async def test_the_trials_success_closes_it_and_its_failure_opens_it_again(breakers: Breakers, clock: Clock) -> None:
    await fail(breakers, 3)
    clock.now += 60
    assert await breakers.claim(KEY, POLICY, "trial")
    assert [m.state for m in await breakers.record([(KEY, False)], POLICIES, "trial")] == ["open"]
    # Open again for a whole cool-down from now.
    clock.now += 59
    assert (await breakers.check(POLICIES, "x")).open == {KEY}
    clock.now += 1
    assert await breakers.claim(KEY, POLICY, "trial2")
    moved = await breakers.record([(KEY, True)], POLICIES, "trial2")
    assert [(m.breaker, m.state, m.saga_id) for m in moved] == [(KEY, "closed", "trial2")]
    assert await breakers.state(KEY) == {}
    # Closed means closed: the count starts afresh.
    assert await fail(breakers, 2) == []
    assert (await breakers.check(POLICIES, "x")).open == frozenset()


async def test_a_trial_that_never_reports_lets_another_try_after_a_cool_down(breakers: Breakers, clock: Clock) -> None:
    await fail(breakers, 3)
    clock.now += 60
    assert await breakers.claim(KEY, POLICY, "crashed")
    clock.now += 30
    assert not await breakers.claim(KEY, POLICY, "next")
    clock.now += 30
    assert await breakers.claim(KEY, POLICY, "next")


async def test_results_while_open_change_nothing(breakers: Breakers, clock: Clock) -> None:
    await fail(breakers, 3)
    # Replies to commands sent before it opened: neither closes nor prolongs it.
    assert await breakers.record([(KEY, True), (KEY, False)], POLICIES, "late") == []
    clock.now += 60
    assert KEY in (await breakers.check(POLICIES, "x")).may_try


async def test_one_decision_records_several_breakers_in_one_call(breakers: Breakers, clock: Clock) -> None:
    await fail(breakers, 2, OTHER)
    moved = await breakers.record([(KEY, False), (OTHER, False)], POLICIES, "both")
    assert [(m.breaker, m.state) for m in moved] == [(OTHER, "open")]
    assert (await breakers.check(POLICIES, "x")).open == {OTHER}


async def test_a_key_out_of_bounds_is_refused_before_redis(breakers: Breakers) -> None:
    with pytest.raises(ValueError, match="breaker key"):
        await breakers.check({"step:a.b.c*": POLICY}, "s")


async def test_opening_and_closing_are_published_and_counted(
    settings: Settings, redis: Redis, clock: Clock, cleanup: set[str]
) -> None:
    store = RedisStore(redis, settings.names)
    await store.connect()
    broker = await Broker.open(settings.amqp_url, settings.names)
    got: asyncio.Queue[tuple[str, BreakerEvent]] = asyncio.Queue()

    async def on_event(message: AbstractIncomingMessage) -> None:
        await got.put((message.routing_key or "", decode(BreakerEvent, message.body)))

    try:
        channel = await broker.connection.channel()
        exchange = await channel.declare_exchange(settings.names.events_exchange, ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, "breaker.#")
        await queue.consume(on_event, no_ack=True)
        breakers = Breakers(store, broker, clock)
        await fail(breakers, 3)
        key, opened = await asyncio.wait_for(got.get(), 10)
        assert key == f"breaker.{KEY}.open"
        assert (opened.breaker, opened.state, opened.saga_id, opened.failures) == (KEY, "open", "s2", 3)
        clock.now += 60
        await breakers.claim(KEY, POLICY, "t")
        await breakers.record([(KEY, True)], POLICIES, "t")
        key, closed = await asyncio.wait_for(got.get(), 10)
        assert key == f"breaker.{KEY}.closed" and closed.state == "closed"
        counters = await store.counters()
        assert counters[f"breaker_open:{KEY}"] == 1 and counters[f"breaker_closed:{KEY}"] == 1
    finally:
        await broker.close()

"""Every construct of the DSL over real RabbitMQ and Redis: Parallel, when, fallback, CircuitBreaker, Await, ForEach.

The participants here are real workers in the test's event loop that keep
their own books (what each did and undid, per saga step); the tests judge
by those books, not by what the orchestrator says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractIncomingMessage, ExchangeType

from participants.edge.settings import Settings
from participants.worker import Context, Failure, Worker
from statemachines import Await, CircuitBreaker, ForEach, Parallel
from statemachines.dsl import Retry, Saga, Step
from statemachines.messages import BreakerEvent, decode
from tests.integration.conftest import Stack, eventually, running
from tests.integration.scripted import cli
from tests.integration.test_dead_letters import letters

# One attempt; `unavailable` is retriable, so giving up on it goes to a fallback and counts for a breaker.
QUICK = Retry(1, retry_on={"unavailable"})


class Books:
    """What the test's participants did, by participant: each action and each undo, per saga step."""

    def __init__(self) -> None:
        self.done: dict[str, Counter[str]] = defaultdict(Counter)
        self.undone: dict[str, Counter[str]] = defaultdict(Counter)
        self.received: Counter[str] = Counter()
        self.arrived: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.in_flight = 0
        self.most_in_flight = 0

    def did(self, participant: str) -> set[str]:
        return set(self.done[participant])

    def net(self, participant: str) -> set[str]:
        return {key for key, n in self.done[participant].items() if n > self.undone[participant][key]}


def desk(
    books: Books,
    name: str,
    *,
    fails: set[str] | None = None,
    wait_for: tuple[str, ...] = (),
    slow: float = 0.0,
    result: str | None = None,
) -> Worker:
    """A participant `name` answering `do` and `undo`; it fails (retriably) for saga ids in `fails`.

    With `wait_for`, an action waits until each of those participants has
    received its command for the same saga: it completes only if they were
    all sent at once.
    """
    worker = Worker(name, transient_backoff=0.01)

    @worker.handler("do")
    async def do(ctx: Context) -> dict[str, Any]:
        books.received[name] += 1
        books.arrived[f"{name}|{ctx.saga_id}"].set()
        books.in_flight += 1
        books.most_in_flight = max(books.most_in_flight, books.in_flight)
        try:
            for other in wait_for:
                await asyncio.wait_for(books.arrived[f"{other}|{ctx.saga_id}"].wait(), 10)
            if slow:
                await asyncio.sleep(slow)
        finally:
            books.in_flight -= 1
        if fails is not None and (ctx.saga_id in fails or "*" in fails):
            raise Failure("unavailable", f"{name} is down")
        if ctx.payload.get("refuse") == ctx.command.step:
            raise Failure("refused", f"{ctx.command.step} refused")
        books.done[name][ctx.key] += 1
        item = ctx.payload.get("item")
        return {result or f"{name}_ref": ctx.key if item is None else f"{item}@{ctx.key}"}

    @worker.handler("undo")
    async def undo(ctx: Context) -> None:
        if ctx.key in books.done[name]:
            books.undone[name][ctx.key] += 1

    return worker


def step(name: str, participant: str, **options: Any) -> Step:
    options.setdefault("retry", QUICK)
    options.setdefault("timeout", 10.0)
    return Step(name, participant=participant, command="do", compensation="undo", **options)


@pytest.fixture
def books() -> Books:
    return Books()


async def history_events(stack: Stack, saga_id: str) -> list[str]:
    store = stack.client.store
    return [h.event for h in await store.history(saga_id)]


# Parallel


parallel_trip = Saga(
    "live_parallel",
    steps=[
        Parallel("book", [step("fly", "lp_flight"), step("sleep", "lp_hotel"), step("drive", "lp_car")]),
        step("confirm", "lp_confirm"),
    ],
)


async def test_parallel_sends_every_branch_at_once_and_merges_their_data(settings: Settings, books: Books) -> None:
    branches = ("lp_flight", "lp_hotel", "lp_car")
    workers = [desk(books, p, wait_for=tuple(o for o in branches if o != p)) for p in branches]
    workers.append(desk(books, "lp_confirm"))
    async with running(settings, sagas=[parallel_trip], workers=workers) as stack:
        outcome = await stack.run("live_parallel", {})
    assert outcome.status == "completed"
    key = outcome.saga_id
    assert {outcome.data[f"{p}_ref"] for p in branches} == {f"{key}:fly", f"{key}:sleep", f"{key}:drive"}
    for participant in (*branches, "lp_confirm"):
        assert books.net(participant) == books.did(participant) and len(books.did(participant)) == 1


async def test_a_failed_branch_compensates_the_others_and_the_steps_before(settings: Settings, books: Books) -> None:
    saga = Saga(
        "live_parallel_fail",
        steps=[
            step("first", "lpf_first"),
            Parallel("book", [step("fly", "lpf_flight"), step("sleep", "lpf_hotel", payload=("refuse",))]),
        ],
    )
    workers = [desk(books, p) for p in ("lpf_first", "lpf_flight")]
    workers.append(desk(books, "lpf_hotel", slow=0.3))
    async with running(settings, sagas=[saga], workers=workers) as stack:
        outcome = await stack.run("live_parallel_fail", {"refuse": "sleep"})
    assert outcome.status == "compensated"
    assert books.did("lpf_flight") and not books.net("lpf_flight"), "the flight that succeeded was cancelled"
    assert books.did("lpf_first") and not books.net("lpf_first"), "the step before was undone"
    assert not books.did("lpf_hotel")


# when


guarded = Saga(
    "live_guarded",
    steps=[
        step("reserve", "lg_stock"),
        step("check", "lg_fraud", when="amount > 100000", payload=("amount", "refuse")),
        step("charge", "lg_pay", payload=("amount", "refuse")),
    ],
)


async def test_a_guarded_step_runs_only_when_its_condition_holds(settings: Settings, books: Books) -> None:
    workers = [desk(books, p) for p in ("lg_stock", "lg_fraud", "lg_pay")]
    async with running(settings, sagas=[guarded], workers=workers) as stack:
        small = await stack.run("live_guarded", {"amount": 500})
        large = await stack.run("live_guarded", {"amount": 250_000})
        # Skipped, it is not compensated either: a later failure undoes only what ran.
        failed = await stack.run("live_guarded", {"amount": 500, "refuse": "charge"})
    assert (small.status, large.status, failed.status) == ("completed", "completed", "compensated")
    assert books.did("lg_fraud") == {f"{large.saga_id}:check"}
    assert books.received["lg_fraud"] == 1
    assert books.undone["lg_fraud"] == Counter()
    assert not books.net("lg_stock") - {f"{small.saga_id}:reserve", f"{large.saga_id}:reserve"}


# fallback and circuit breaker


def paying(breaker: CircuitBreaker | None = None) -> Saga:
    return Saga(
        "live_fallback",
        steps=[
            step("reserve", "lf_stock"),
            step(
                "charge",
                "lf_pay",
                fallback=step("charge_backup", "lf_backup"),
                breaker=breaker,
                payload=("refuse",),
            ),
            step("ship", "lf_ship", payload=("refuse",)),
        ],
    )


async def test_a_fallback_runs_in_place_of_a_step_that_gave_up_and_is_the_one_compensated(
    settings: Settings, books: Books
) -> None:
    down: set[str] = set()
    workers = [desk(books, "lf_stock"), desk(books, "lf_pay", fails=down), desk(books, "lf_backup")]
    workers.append(desk(books, "lf_ship"))
    async with running(settings, sagas=[paying()], workers=workers) as stack:
        saga_id = f"fb-{uuid.uuid4().hex[:6]}"
        down.add(saga_id)
        fell_back = await stack.run("live_fallback", {}, saga_id=saga_id)
        undone_id = f"fb-{uuid.uuid4().hex[:6]}"
        down.add(undone_id)
        undone = await stack.run("live_fallback", {"refuse": "ship"}, saga_id=undone_id)
        normal = await stack.run("live_fallback", {})
    assert (fell_back.status, undone.status, normal.status) == ("completed", "compensated", "completed")
    assert books.did("lf_backup") == {f"{saga_id}:charge_backup", f"{undone_id}:charge_backup"}
    assert books.net("lf_backup") == {f"{saga_id}:charge_backup"}, "the fallback is what gets compensated"
    assert books.did("lf_pay") == {f"{normal.saga_id}:charge"}


@contextlib.asynccontextmanager
async def breaker_events(settings: Settings) -> AsyncIterator[asyncio.Queue[tuple[str, BreakerEvent]]]:
    got: asyncio.Queue[tuple[str, BreakerEvent]] = asyncio.Queue()
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(settings.names.events_exchange, ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, "breaker.#")

        async def on_event(message: AbstractIncomingMessage) -> None:
            await got.put((message.routing_key or "", decode(BreakerEvent, message.body)))

        await queue.consume(on_event, no_ack=True)
        yield got
    finally:
        await connection.close()


async def test_a_breaker_opens_under_a_failing_participant_and_lets_one_trial_through(
    settings: Settings, books: Books
) -> None:
    down = {"*"}
    # Slow, so that every saga started together reaches the charge while the trial is still out.
    workers = [desk(books, "lf_stock"), desk(books, "lf_pay", fails=down, slow=1.0), desk(books, "lf_backup")]
    workers.append(desk(books, "lf_ship"))
    # A cool-down long enough that the ten sagas below cannot outlast it on a slow machine.
    policy = CircuitBreaker(failures=3, window=30, cool_down=6)
    saga = paying(policy)
    key = "step:live_fallback.charge"
    async with (
        breaker_events(settings) as got,
        running(settings, sagas=[saga], workers=workers, orchestrators=2) as stack,
    ):
        first = [await stack.run("live_fallback", {}) for _ in range(10)]
        assert all(outcome.status == "completed" for outcome in first)
        # Without the breaker each of the 10 would have sent its charge; it opened at the third failure.
        assert books.received["lf_pay"] == 3
        assert books.received["lf_backup"] == 10
        routing, opened = await asyncio.wait_for(got.get(), 10)
        assert (routing, opened.state) == (f"breaker.{key}.open", "open")
        for skipped in first[3:]:
            assert "breaker_open" in await history_events(stack, skipped.saga_id)

        # Cooled down, and the participant is back: among sagas started together (on two
        # orchestrators), exactly one sends its charge as the trial; its success closes the breaker.
        down.clear()
        breakers = stack.orchestrators[0].engine.breakers  # type: ignore[union-attr]

        async def cooled() -> bool:
            return key in (await breakers.check({key: policy}, "a-probe")).may_try

        await eventually(cooled, timeout=15, every=0.1)
        together = await asyncio.gather(*(stack.run("live_fallback", {}) for _ in range(8)))
        assert all(outcome.status == "completed" for outcome in together)
        assert books.received["lf_pay"] == 4
        routing, closed = await asyncio.wait_for(got.get(), 10)
        assert (routing, closed.state) == (f"breaker.{key}.closed", "closed")
        after = await stack.run("live_fallback", {})
        assert f"{after.saga_id}:charge" in books.did("lf_pay"), "closed again: commands go out"
        counters = await stack.client.store.counters()
        assert counters[f"breaker_open:{key}"] == 1 and counters[f"breaker_closed:{key}"] == 1


# Await and signals


waiting = Saga(
    "live_transfer",
    steps=[
        step("debit", "la_bank"),
        Await("bank_confirmed", timeout=30, compensation=step("recall", "la_recall")),
        step("credit", "la_ledger", payload=("ref",)),
    ],
)
waiting_briefly = Saga("live_transfer_brief", steps=[step("debit", "la_bank"), Await("bank_confirmed", timeout=0.5)])


async def parked(stack: Stack, saga_id: str) -> bool:
    inst = await stack.client.status(saga_id)
    return inst is not None and inst.waiting == "signal"


async def test_a_saga_waits_for_its_signal_and_a_repeated_signal_is_applied_once(
    settings: Settings, books: Books
) -> None:
    workers = [desk(books, p) for p in ("la_bank", "la_recall", "la_ledger")]
    async with running(settings, sagas=[waiting, waiting_briefly], workers=workers) as stack:
        saga_id = f"tx-{uuid.uuid4().hex[:6]}"
        await stack.client.start("live_transfer", {}, saga_id=saga_id)
        await eventually(lambda: parked(stack, saga_id))
        first = await stack.client.signal(saga_id, "bank_confirmed", {"ref": "b-1"}, "bank-77", wait=True)
        again = await stack.client.signal(saga_id, "bank_confirmed", {"ref": "b-2"}, "bank-77", wait=True)
        assert (first.outcome, first.duplicate, again.outcome, again.duplicate) == (
            "accepted", False, "accepted", True,
        )  # fmt: skip

        async def ended() -> Any:
            inst = await stack.client.status(saga_id)
            return inst if inst is not None and inst.status == "completed" else None

        done = await eventually(ended)
        assert done.data["ref"] == "b-1", "the second sending changed nothing"
        assert (await history_events(stack, saga_id)).count("signal") == 1
        assert books.did("la_ledger") == {f"{saga_id}:credit"}

        # Its timeout compensates what came before.
        brief = await stack.run("live_transfer_brief", {})
        assert brief.status == "compensated" and brief.error is not None and brief.error.code == "timeout"
        assert books.did("la_bank") - books.net("la_bank") == {f"{brief.saga_id}:debit"}


async def test_a_signal_that_comes_too_early_is_refused_and_replayed_once_the_saga_waits(
    settings: Settings, books: Books
) -> None:
    # The debit takes a moment, so the bank's webhook overtakes the saga.
    workers = [desk(books, "la_bank", slow=4.0), desk(books, "la_recall"), desk(books, "la_ledger")]
    async with running(settings, sagas=[waiting], workers=workers) as stack:
        saga_id = f"tx-{uuid.uuid4().hex[:6]}"
        await stack.client.start("live_transfer", {}, saga_id=saga_id)
        await eventually(lambda: stack.client.status(saga_id))
        done = await cli(
            settings, "signal", saga_id, "bank_confirmed", "--data", '{"ref": "early"}', "--signal-id", "e-1", "--wait"
        )
        assert done.returncode == 6 and json.loads(done.stdout)["error"]["code"] == "not_waiting", done.stderr
        [letter] = await eventually(lambda: letters(settings))
        assert (letter["message_id"], letter["queue"]) == ("e-1", settings.names.signals_queue)
        assert str(letter["reason"]).startswith("not_waiting: ")
        await eventually(lambda: parked(stack, saga_id))
        # The CLI that sent it has gone with its reply queue: the replayed signal is applied, unanswered.
        replayed = await cli(settings, "dead-letters", "replay", "e-1")
        assert replayed.returncode == 0, replayed.stderr
        ended = await eventually(lambda: _status(stack, saga_id, "completed"))
        assert ended.data["ref"] == "early"
        assert await letters(settings) == []
        events = await history_events(stack, saga_id)
        assert events.count("refused_signal") == 1 and events.count("signal") == 1


async def _status(stack: Stack, saga_id: str, status: str) -> Any:
    inst = await stack.client.status(saga_id)
    return inst if inst is not None and inst.status == status else None


# ForEach


per_item = Saga(
    "live_per_item",
    steps=[ForEach("reserve", items="warehouses", step=step("reserve_at", "le_depot", payload=("item", "refuse")),
                   max_concurrency=2)],
)  # fmt: skip


async def test_for_each_sends_one_command_per_item_within_its_concurrency(settings: Settings, books: Books) -> None:
    workers = [desk(books, "le_depot", slow=0.2, result="held")]
    async with running(settings, sagas=[per_item], workers=workers) as stack:
        outcome = await stack.run("live_per_item", {"warehouses": ["north", "south", "east", "west", "mid"]})
        assert outcome.status == "completed"
        assert books.received["le_depot"] == 5 and books.most_in_flight == 2
        held = [entry["held"].split("@")[0] for entry in outcome.data["reserve"]]
        assert held == ["north", "south", "east", "west", "mid"], "results in the items' order"

        books.most_in_flight = 0
        failed = await stack.run("live_per_item", {"warehouses": ["a", "b", "c"], "refuse": "reserve_at-2"})
        assert failed.status == "compensated"
        mine = {k for k in books.did("le_depot") if k.startswith(failed.saga_id)}
        assert mine == {f"{failed.saga_id}:reserve_at-0", f"{failed.saga_id}:reserve_at-1"}
        assert not {k for k in books.net("le_depot") if k.startswith(failed.saga_id)}, "the items that held are undone"

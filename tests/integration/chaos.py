"""What the fault tests share: real processes, a seeded workload, and an audit.

The audit trusts nothing the orchestrator says about the participants: it
reads each example participant's own state in Redis (the stock levels, the
entries taken per saga step, the entries given back; see
participants/examples/stock.py) and the counters kept by
tests/integration/counted.py, and checks them against what each saga should
have done.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from orchestrator.client import SagaClient
from orchestrator.store import RedisStore
from orchestrator.tools.fleet import EXAMPLES, Fleet
from participants.edge.amqp import REASON
from participants.edge.connections import connect_amqp
from participants.examples import backup_payment, bookings, inventory, payment, shipping
from participants.examples.stock import Stock
from statemachines.messages import FINAL, OUTCOME_UNKNOWN, TERMINAL
from statemachines.names import Names
from tests.integration.private import RabbitNode

ROOT = Path(__file__).resolve().parents[2]
ORDER_STEPS = ("reserve_inventory", "charge_payment", "create_shipment")
TRIP_STEPS = ("book_flight", "book_hotel", "rent_car")
SKUS = tuple(f"sku-{n}" for n in range(1, 10))
DESTINATIONS = ("paris", "rome", "lisbon", "tokyo")
FAIL_RATE = 0.3
TRUCKS = 1_000_000_000  # participants/examples/shipping.py seeds this many

# Each saga step: the participant, its stock, and the initial level of a field.
STOCKS: dict[str, Stock] = {
    "inventory": inventory.stock,
    "payment": payment.credit,
    "backup_payment": backup_payment.credit,
    "shipping": shipping.shipments,
    "flight": Stock("flight", "seats"),
    "hotel": Stock("hotel", "rooms"),
    "car": Stock("car", "cars"),
}
STEP_PARTICIPANT = {
    "reserve_inventory": "inventory",
    "charge_payment": "payment",
    "charge_backup": "backup_payment",
    "create_shipment": "shipping",
    "book_flight": "flight",
    "book_hotel": "hotel",
    "rent_car": "car",
}


def initial_level(participant: str, field: str) -> int:
    if participant == "inventory":
        return inventory.CATALOGUE[field]
    if participant in ("payment", "backup_payment"):
        return payment.CREDIT_LIMIT
    if participant == "shipping":
        return TRUCKS
    return bookings.DESTINATIONS[field]


@dataclass(frozen=True)
class Planned:
    """One saga the test starts, and what it must end as."""

    saga_id: str
    saga_type: str
    data: dict[str, Any]

    @property
    def steps(self) -> tuple[str, ...]:
        return ORDER_STEPS if self.saga_type == "order" else TRIP_STEPS

    @property
    def expected(self) -> str:
        return "compensated" if self.data["fail_at"] else "completed"

    def takes(self, step: str) -> dict[str, int]:
        """What the step's participant takes from its stock when the step succeeds."""
        data = self.data
        if step == "reserve_inventory":
            wanted: Counter[str] = Counter()
            for item in data["items"]:
                wanted[item["sku"]] += item["qty"]
            return dict(wanted)
        if step in ("charge_payment", "charge_backup"):
            return {data["customer_id"]: data["amount"]}
        if step == "create_shipment":
            return {"trucks": 1}
        if step == "book_hotel":
            return {data["destination"]: data["nights"]}
        return {data["destination"]: 1}


def plan(rng: random.Random, orders: int, trips: int, prefix: str = "") -> list[Planned]:
    """`orders` order sagas and `trips` trip sagas, shuffled; about FAIL_RATE of them fail at a random step."""
    out = []
    for n in range(orders):
        fail_at = [rng.choice(ORDER_STEPS)] if rng.random() < FAIL_RATE else []
        if fail_at == ["charge_payment"]:
            # Payment's breaker may send the charge to the backup processor: it refuses too.
            fail_at.append("charge_backup")
        items = [{"sku": rng.choice(SKUS), "qty": rng.randint(1, 5)} for _ in range(rng.randint(1, 3))]
        data = {
            "order_id": f"{prefix}o-{n}",
            "customer_id": f"c-{rng.randint(1, 25)}",
            "items": items,
            "amount": rng.randint(100, 90_000),
            "fail_at": fail_at,
        }
        out.append(Planned(f"{prefix}order-{n:04d}", "order", data))
    for n in range(trips):
        fail_at = [rng.choice(TRIP_STEPS)] if rng.random() < FAIL_RATE else []
        data = {
            "trip_id": f"{prefix}t-{n}",
            "customer_id": f"c-{rng.randint(1, 25)}",
            "destination": rng.choice(DESTINATIONS),
            "nights": rng.randint(1, 6),
            "fail_at": fail_at,
        }
        out.append(Planned(f"{prefix}trip-{n:04d}", "trip", data))
    rng.shuffle(out)
    return out


def chunks(items: Sequence[Planned], parts: int) -> list[Sequence[Planned]]:
    size = -(-len(items) // parts)
    return [items[i : i + size] for i in range(0, len(items), size)]


class ChaosFleet(Fleet):
    """The Fleet, with counted example participants, and a tally of kills and restarts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.kills: Counter[str] = Counter()
        self.restarts: Counter[str] = Counter()
        self.spawns: Counter[str] = Counter()

    def env(self) -> dict[str, str]:
        env = super().env()
        # The children import tests.integration.counted, wherever pytest was started from.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
        return env

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        self.spawns[name] += 1
        return super().spawn(name, *args)

    def participant(self, participant: str, target: str | None = None) -> subprocess.Popen[bytes]:
        return super().participant(participant, target or f"tests.integration.counted:{participant}")

    def kill(self, name: str) -> None:
        super().kill(name)
        self.kills[name] += 1

    def restart(self, name: str) -> subprocess.Popen[bytes]:
        self.restarts[name] += 1
        return super().restart(name)

    def log(self, name: str) -> str:
        assert self.logs is not None
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def up(self, name: str, timeout: float = 30.0) -> None:
        """Wait until the latest process called `name` says it serves."""
        banner = "orchestrator up" if name.startswith("orchestrator") else f"participant {name!r} up"
        deadline = time.monotonic() + timeout
        while self.log(name).count(banner) < self.spawns[name]:
            process = self.processes[name]
            if process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode}:\n{self.log(name)[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} not up after {timeout:g}s:\n{self.log(name)[-3000:]}")
            await asyncio.sleep(0.05)

    def alive(self) -> dict[str, bool]:
        return {name: process.poll() is None for name, process in self.processes.items()}

    def tally(self, counter: Counter[str]) -> str:
        return ", ".join(f"{name} {n}" for name, n in sorted(counter.items()))


async def start_all(client: SagaClient, sagas: Iterable[Planned], patience: float = 60.0) -> None:
    """Publish a start for each saga (confirmed by the broker), retrying while the broker is away."""

    async def one(saga: Planned) -> None:
        deadline = time.monotonic() + patience
        while True:
            try:
                await client.start(saga.saga_type, saga.data, saga_id=saga.saga_id)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    await asyncio.gather(*(one(saga) for saga in sagas))


async def statuses(redis: Redis, names: Names, sagas: Sequence[Planned]) -> dict[str, str]:
    """Each saga's stored status, "missing" if there is none."""
    pipe = redis.pipeline(transaction=False)
    for saga in sagas:
        pipe.hget(names.saga_key(saga.saga_id), "status")
    found = await pipe.execute()
    return {saga.saga_id: (s.decode() if s else "missing") for saga, s in zip(sagas, found, strict=True)}


async def wait_until_ended(
    redis: Redis, names: Names, sagas: Sequence[Planned], timeout: float
) -> tuple[dict[str, str], float]:
    """Poll until every saga is terminal or `timeout` passes; (statuses, seconds waited)."""
    started = time.monotonic()
    while True:
        now = await statuses(redis, names, sagas)
        waited = time.monotonic() - started
        if all(s in TERMINAL for s in now.values()) or waited > timeout:
            return now, waited
        await asyncio.sleep(0.25)


async def when_part_ended(
    redis: Redis, names: Names, sagas: Sequence[Planned], fraction: float, timeout: float = 60.0
) -> int:
    """Wait until `fraction` of `sagas` have ended (a moment while the rest are under way); how many have not."""
    deadline = time.monotonic() + timeout
    while True:
        now = await statuses(redis, names, sagas)
        running = sum(s not in TERMINAL for s in now.values())
        if len(sagas) - running >= fraction * len(sagas) or time.monotonic() > deadline:
            return running
        await asyncio.sleep(0.02)


async def wait_until_drained(amqp_url: str, queues: Sequence[str], timeout: float = 30.0) -> bool:
    """Until no queue holds a ready message, three looks in a row; False on timeout."""
    connection = await connect_amqp(amqp_url)
    try:
        channel = await connection.channel()
        quiet = 0
        deadline = time.monotonic() + timeout
        while quiet < 3:
            if time.monotonic() > deadline:
                return False
            counts = [(await channel.declare_queue(q, passive=True)).declaration_result.message_count for q in queues]
            quiet = quiet + 1 if not any(counts) else 0
            await asyncio.sleep(0.2)
        return True
    finally:
        await connection.close()


async def dead_letters(amqp_url: str, names: Names, reasons: list[str] | None = None) -> int:
    """How many messages the namespace's dead-letter queue holds; the first few reasons into `reasons`."""
    connection = await connect_amqp(amqp_url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(names.dead_queue, passive=True)
        count = declared.declaration_result.message_count or 0
        if reasons is not None:
            for _ in range(min(count, 5)):  # left unacked: the queue still holds them when the channel closes
                message = await declared.get(no_ack=False, fail=False)
                if message is None:
                    break
                reasons.append(f"dead letter: {(message.headers or {}).get(REASON)!r}")
        return count
    finally:
        await connection.close()


@dataclass
class Audit:
    statuses: dict[str, str]
    # Not completed or compensated at the end: running, stuck, missing.
    lost: list[str] = field(default_factory=list)
    # Ended, but not as its fail_at says it must.
    wrong_outcome: list[str] = field(default_factory=list)
    # A participant's state disagrees with the saga's outcome.
    inconsistent: list[str] = field(default_factory=list)
    # A handler ran for a step already done, or a stock level disagrees with its own entries.
    applied_twice: list[str] = field(default_factory=list)
    handler_calls: int = 0
    # Runs cut short (a killed process, a task cancelled when the broker connection dropped).
    handler_interrupted: int = 0
    # Runs that ended in an exception other than Failure: an error reached the handler.
    handler_raised: list[str] = field(default_factory=list)
    # Messages a fault sent to the dead-letter queue: a crash or an outage is no reason to give up on one.
    dead_lettered: int = 0
    dead_reasons: list[str] = field(default_factory=list)
    # Steps that failed with `unavailable`: a participant's handler kept raising (e.g. a lost Redis
    # connection that its client did not retry), and the saga spent an attempt on it.
    unavailable: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [
            *(f"lost: {s} is {self.statuses[s]}" for s in self.lost),
            *(f"wrong outcome: {s}" for s in self.wrong_outcome),
            *self.inconsistent,
            *self.applied_twice,
            *([f"{self.dead_lettered} message(s) dead-lettered"] if self.dead_lettered else []),
            *self.dead_reasons,
            *self.unavailable,
            *self.handler_raised,
        ]

    def counts(self) -> Counter[str]:
        return Counter(self.statuses.values())


async def audit(
    redis: Redis,
    names: Names,
    sagas: Sequence[Planned],
    ended: Mapping[str, str],
    parallel: frozenset[str] = frozenset({"trip"}),
) -> Audit:
    """`parallel`: saga types whose steps run at once (a compensated one may have taken any but the failing step)."""
    result = Audit(dict(ended))
    for saga in sagas:
        status = ended[saga.saga_id]
        if status not in FINAL:
            result.lost.append(saga.saga_id)
        elif status != saga.expected:
            result.wrong_outcome.append(f"{saga.saga_id} {status}, expected {saga.expected} ({saga.data['fail_at']})")

    store = RedisStore(redis, names)
    for saga in sagas:
        for happened in await store.history(saga.saga_id):
            if happened.event == "failed" and happened.detail.startswith(OUTCOME_UNKNOWN):
                result.unavailable.append(f"{saga.saga_id}: {happened.source} failed: {happened.detail}")

    taken = {p: await stock.taken(redis, names) for p, stock in STOCKS.items()}
    returned = {p: await stock.returned(redis, names) for p, stock in STOCKS.items()}
    levels = {p: await _levels(redis, names, stock) for p, stock in STOCKS.items()}
    # What the completed sagas, and only they, should have taken: per participant and field.
    owed: dict[str, Counter[str]] = {p: Counter() for p in STOCKS}
    keys: set[str] = set()

    for saga in sagas:
        status = ended[saga.saga_id]
        fail_at = saga.data["fail_at"]
        failing = saga.steps.index(fail_at[0]) if fail_at else len(saga.steps)
        for index, step in enumerate(saga.steps):
            if step == "charge_payment":
                _audit_charge(saga, status, index, failing, taken, returned, owed, keys, result)
                continue
            participant = STEP_PARTICIPANT[step]
            key = f"{saga.saga_id}:{step}"
            keys.add(key)
            entry = taken[participant].get(key)
            given_back = key in returned[participant]
            want: tuple[dict[str, int] | None, bool]
            if status == "completed":
                owed[participant].update(saga.takes(step))
                want = (saga.takes(step), False)
            elif status == "compensated" and saga.saga_type in parallel and index != failing:
                # Taken and given back, or never taken (compensated before its action arrived).
                want = (saga.takes(step), True) if entry is not None else (None, given_back)
            elif status == "compensated" and index < failing:
                want = (saga.takes(step), step != "create_shipment")
            elif status == "compensated":
                want = (None, given_back)  # never taken; a marker that refuses a late take is fine
            else:
                continue  # lost: counted above
            if (entry, given_back) != want:
                result.inconsistent.append(
                    f"{saga.saga_id} {status}: {participant} holds {entry} for {step}"
                    f"{' (given back)' if given_back else ''}, expected {want[0]}{' given back' if want[1] else ''}"
                )

    for participant in STOCKS:
        for key in set(taken[participant]) - keys:
            result.inconsistent.append(f"{participant} took {taken[participant][key]} for {key}, which no saga asked")
        net: Counter[str] = Counter()
        for key, amounts in taken[participant].items():
            if key not in returned[participant]:
                net.update(amounts)
        for field_ in set(levels[participant]) | set(net) | set(owed[participant]):
            initial = initial_level(participant, field_)
            used = initial - levels[participant].get(field_, initial)
            if used != net[field_]:
                result.applied_twice.append(
                    f"{participant} {field_}: level is down {used}, but its entries not given back add up to "
                    f"{net[field_]}"
                )
            elif used != owed[participant][field_] and not result.lost:
                result.inconsistent.append(
                    f"{participant} {field_}: down {used}, the completed sagas took {owed[participant][field_]}"
                )

    for participant in STOCKS:
        base = names.participant_key(participant, "test")
        # One field per call, `<command>|<saga step>|<uuid>`, valued by how it ended (see counted.py).
        calls = await _texts(redis, f"{base}:calls")
        twice = Counter(f.rsplit("|", 1)[0] for f in await _texts(redis, f"{base}:twice"))
        result.handler_calls += len(calls)
        result.handler_interrupted += sum(outcome in ("ran", "cancelled") for outcome in calls.values())
        result.handler_raised += [
            f"{participant} {f.rsplit('|', 1)[0]} raised" for f, o in calls.items() if o == "raised"
        ]
        result.applied_twice += [f"{participant} ran {f} {n} more time(s) after it was done" for f, n in twice.items()]
    return result


def _audit_charge(
    saga: Planned,
    status: str,
    index: int,
    failing: int,
    taken: Mapping[str, Mapping[str, dict[str, int]]],
    returned: Mapping[str, Iterable[str]],
    owed: Mapping[str, Counter[str]],
    keys: set[str],
    result: Audit,
) -> None:
    """An order's charge: by payment, or by backup_payment when payment gave up or its breaker was open."""
    held: dict[str, tuple[dict[str, int] | None, bool]] = {}
    for step in ("charge_payment", "charge_backup"):
        participant = STEP_PARTICIPANT[step]
        key = f"{saga.saga_id}:{step}"
        keys.add(key)
        held[participant] = (taken[participant].get(key), key in returned[participant])
    kept = [p for p, (entry, back) in held.items() if entry is not None and not back]
    charged = [p for p, (entry, _) in held.items() if entry is not None]
    wrong = [p for p, (entry, _) in held.items() if entry is not None and entry != saga.takes("charge_payment")]
    if status == "completed":
        ok = len(kept) == 1 and not wrong
        if ok:
            owed[kept[0]].update(saga.takes("charge_payment"))
        want = "one charge kept, by payment or backup_payment"
    elif status == "compensated" and index < failing:
        ok, want = bool(charged) and not kept and not wrong, "charged and refunded"
    elif status == "compensated":
        ok, want = not charged, "never charged"  # a marker that refuses a late charge is fine
    else:
        return
    if not ok:
        result.inconsistent.append(f"{saga.saga_id} {status}: the charge is {held}, expected {want}")


async def _texts(redis: Redis, key: str) -> dict[str, str]:
    raw = await redis.hgetall(key)
    return {
        (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in raw.items()
    }


async def _levels(redis: Redis, names: Names, stock: Stock) -> dict[str, int]:
    return {k: int(v) for k, v in (await _texts(redis, stock.keys(names)[0])).items()}


def summary(title: str, sagas: Sequence[Planned], result: Audit, fleet: ChaosFleet, seconds: float) -> str:
    kinds = Counter(s.saga_type for s in sagas)
    counts = result.counts()
    kills = sum(fleet.kills.values())
    restarts = sum(fleet.restarts.values())
    killed = f"kills {kills} ({fleet.tally(fleet.kills)}), restarts {restarts}, " if kills or restarts else ""
    return (
        f"{title}: sagas {len(sagas)} ({kinds['order']} order, {kinds['trip']} trip; "
        f"{counts['completed']} completed, {counts['compensated']} compensated), {killed}"
        f"lost {len(result.lost)}, applied twice {len(result.applied_twice)}, "
        f"wrong outcome {len(result.wrong_outcome)}, inconsistent {len(result.inconsistent)}, "
        f"dead-lettered {result.dead_lettered}, 'outcome_unknown' failures {len(result.unavailable)}, "
        f"handler calls {result.handler_calls} (cut short {result.handler_interrupted}, "
        f"raised {len(result.handler_raised)}), {seconds:.1f}s"
    )


def assert_nothing_lost(line: str, result: Audit, fleet: ChaosFleet) -> None:
    """Every saga ended as planned and every participant's books agree with it."""
    assert all(fleet.alive().values()), f"a process died on its own: {fleet.alive()}"
    assert not result.lost, verdict(line, result, fleet)
    assert not result.applied_twice, verdict(line, result, fleet)
    assert not result.wrong_outcome, verdict(line, result, fleet)
    assert not result.inconsistent, verdict(line, result, fleet)
    assert not result.dead_lettered, verdict(line, result, fleet)
    assert not result.unavailable, verdict(line, result, fleet)
    # A lost connection is the Redis client's to retry (participants/edge/connections.py): no handler sees it.
    assert not result.handler_raised, verdict(line, result, fleet)


def verdict(line: str, result: Audit, fleet: ChaosFleet, limit: int = 15) -> str:
    """The assertion message: the summary, the first problems, and the tail of each process's log."""
    text = [line, *result.problems[:limit]]
    if result.problems:
        for name in sorted(fleet.processes):
            errors = [x for x in fleet.log(name).splitlines() if re.search(r"ERROR|Traceback|WARNING", x)]
            if errors:
                text += [f"--- {name}: last warnings", *errors[-5:]]
    return "\n".join(text)


def queues(names: Names) -> list[str]:
    return [names.start_queue, names.reply_queue, *(names.participant_queue(p) for p in EXAMPLES)]


async def stop(fleet: ChaosFleet) -> None:
    with contextlib.suppress(Exception):
        await asyncio.to_thread(fleet.stop)


def redis_ports(pids: Iterable[int], redis_port: int) -> dict[int, int]:
    """The local ports of the TCP connections processes `pids` hold to Redis, with their pid (Linux /proc)."""
    owner: dict[str, int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        owner[link[len("socket:[") : -1]] = pid
    ports = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                local, remote, inode = fields[1], fields[2], fields[9]
                if inode in owner and int(remote.rsplit(":", 1)[1], 16) == redis_port:
                    ports[int(local.rsplit(":", 1)[1], 16)] = owner[inode]
    return ports


async def kill_redis_clients(redis: Redis, pids: Iterable[int], redis_port: int) -> Counter[int]:
    """CLIENT KILL every connection these processes hold to Redis; how many were killed, by pid.

    Only theirs: other clients of the same Redis (other test runs) are left alone.
    """
    ports = redis_ports(pids, redis_port)
    killed: Counter[int] = Counter()
    for client in await redis.client_list():
        pid = ports.get(int(client["addr"].rsplit(":", 1)[1]))
        if pid is not None:
            with contextlib.suppress(Exception):  # it may have gone by itself
                killed[pid] += int(await redis.client_kill_filter(_id=client["id"]))
    return killed


@contextlib.asynccontextmanager
async def broker_stopped(node: RabbitNode) -> AsyncIterator[None]:
    """`stop_app` on the test's own node inside; `start_app` (and wait for it) on the way out, whatever happened."""
    try:
        await node.stop_app()
        yield
    finally:
        await node.start_app()

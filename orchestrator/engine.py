"""The path of one event: load, decide, commit, publish, clear the outbox.

Everything with I/O that happens to a saga goes through `Engine.apply`, be
the event a start, a reply, a due deadline or an operator's command; the
service, the CLI and the timer loop all call it. A crash between any two of
its steps loses nothing: the commit is atomic, the outbox is re-published by
`sweep`, and replies are redelivered until acked.

A decision that would start a step guarded by a circuit breaker
(`orchestrator.breakers`) costs one more round trip: which of the saga's
breakers are open, and the decision is made again with them. Any other
decision is the same whatever the breakers say, and reads none.
A decision that would send a command through a half-open breaker claims its
one trial first, and decides again with the breaker open if another saga
has it. After the commit, the decision's breaker results are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection

from orchestrator.breakers import Breakers, Seen
from orchestrator.presence import Presence
from orchestrator.registry import Registry
from orchestrator.store import RedisStore
from participants.edge import observe, timing
from participants.edge.amqp import Broker, Envelope, pack, unpack, unpublishable
from statemachines.decide import Decision, Due, Event, Start, Unpublishable, decide
from statemachines.dsl import CircuitBreaker, Saga, breaker_key, breaker_of
from statemachines.instance import SagaInstance
from statemachines.messages import TERMINAL, Reply, encode
from statemachines.names import BUCKETS, Names

log = logging.getLogger("saga.engine")
CONFLICT_RETRIES = 20
# Sagas whose last write this process remembers, to skip a read per reply.
WRITTEN_CACHE = 100_000


# Lifecycle events kept in the outbox until confirmed, and re-published after a crash; the
# others (`running`, `compensating`) are best-effort notices (docs/protocol.md, section 3.6).
GUARANTEED = TERMINAL
# After a best-effort event that no queue took, how long that type's events of that status are not published.
UNROUTED_PAUSE = 1.0

# How often a held-back deadline looks again whether its participant is back.
HOLD_RECHECK = 5.0


class KeyedLocks:
    """One asyncio lock per saga id, kept only while someone holds or waits on it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def hold(self, key: str) -> _Held:
        return _Held(self._locks, key)


class _Held:
    # A class, not @asynccontextmanager: this is on every event's path, and
    # a generator-based manager costs more than the lock.
    __slots__ = ("_key", "_locks")

    def __init__(self, locks: dict[str, tuple[asyncio.Lock, int]], key: str) -> None:
        self._locks = locks
        self._key = key

    async def __aenter__(self) -> None:
        lock, users = self._locks.get(self._key) or (asyncio.Lock(), 0)
        self._locks[self._key] = (lock, users + 1)
        try:
            await lock.acquire()
        except BaseException:
            self._leave()
            raise

    async def __aexit__(self, *_: object) -> None:
        self._locks[self._key][0].release()
        self._leave()

    def _leave(self) -> None:
        lock, users = self._locks[self._key]
        if users == 1:
            del self._locks[self._key]
        else:
            self._locks[self._key] = (lock, users - 1)


class Engine:
    def __init__(
        self,
        store: RedisStore,
        broker: Broker,
        registry: Registry,
        names: Names,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.broker = broker
        self.registry = registry
        self.names = names
        self.clock = clock
        self.stats: Counter[str] = Counter()
        self._locks = KeyedLocks()
        # Hold-back (`orchestrator.presence`): off unless the service sets both.
        self.presence: Presence | None = None
        self.hold_seconds = 0.0
        self.hold_recheck = HOLD_RECHECK
        # Sagas held back by this process (in memory: after a crash one more attempt is all it costs).
        self._held: dict[str, float] = {}
        self._confirmed: list[tuple[str, int]] = []
        self._confirmed_ready = asyncio.Event()
        # How long a confirmed outbox waits before it is cleared (0: at once); the service sets it.
        self.clear_after = 0.0
        self._written: OrderedDict[str, SagaInstance] = OrderedDict()
        # The rev of each saga's newest commit that replaced its outbox (an annotation leaves it).
        self._outbox_revs: OrderedDict[str, int] = OrderedDict()
        # (saga type, status) of best-effort events that no queue took lately: until when to skip them.
        self._unrouted: dict[tuple[str, str], float] = {}
        self.unrouted_pause = UNROUTED_PAUSE
        self.breakers = Breakers(store, broker, clock)
        self._policies: dict[tuple[str, int], dict[str, CircuitBreaker]] = {}
        self._guards: dict[tuple[str, int, str], str | None] = {}

    def policies(self, saga: Saga) -> dict[str, CircuitBreaker]:
        """Every breaker the saga's steps are guarded by, by key (empty for most sagas)."""
        found = self._policies.get((saga.name, saga.version))
        if found is None:
            found = {}
            for name in saga.all_steps:
                key = breaker_key(saga, name)
                policy = breaker_of(saga, key) if key is not None else None
                if key is not None and policy is not None:
                    found[key] = policy
            self._policies[(saga.name, saga.version)] = found
        return found

    def _guard(self, saga: Saga, step: str) -> str | None:
        """The breaker a command for `step` (a ForEach item's too) goes through, if any."""
        cached = (saga.name, saga.version, step)
        if cached not in self._guards:
            try:
                self._guards[cached] = breaker_key(saga, saga.step(step).name)
            except KeyError:
                self._guards[cached] = None
        return self._guards[cached]

    def _guarded(self, saga: Saga, decision: Decision, policies: dict[str, CircuitBreaker]) -> bool:
        """Whether open breakers could change `decision`, made as if every breaker were closed.

        A breaker only acts where a step it guards starts: open, the step goes to its
        fallback (or fails) instead of sending its command. With every breaker
        closed, such a start sends the command, or fails the whole decision on
        its payload; a decision with neither is the same whatever the breakers
        say, and costs no round trip to read them.
        """
        for command in decision.commands:
            if command.action == "do" and self._guard(saga, command.step) in policies:
                return True
        inst = decision.instance
        return inst is not None and inst.error is not None and inst.error.code == "payload_error"

    async def _decide(
        self,
        saga_id: str,
        saga: Saga,
        inst: SagaInstance | None,
        event: Event,
        policies: dict[str, CircuitBreaker],
        seen: Seen,
    ) -> Decision:
        """decide() with the open breakers; a command through a half-open one first claims its trial."""
        now = self.clock()
        closed_to = seen.open
        granted: set[str] = set()
        for _ in range(len(policies) + 1):
            decision = decide(saga, inst, event, now, closed_to)
            trials = {
                key
                for command in decision.commands
                if command.action == "do"
                and (key := self._guard(saga, command.step)) in seen.may_try
                and key not in granted
            }
            if not trials:
                return decision
            for key in sorted(trials):
                if await self.breakers.claim(key, policies[key], saga_id):
                    granted.add(key)
                else:
                    closed_to = closed_to | {key}
            if granted >= trials:
                return decision
        return decide(saga, inst, event, now, closed_to)

    async def _count(self, decision: Decision, policies: dict[str, CircuitBreaker]) -> None:
        """Count the decision's breaker results; a breaker that misses one is only logged."""
        if not decision.breaker_results or decision.instance is None:
            return
        try:
            await self.breakers.record(decision.breaker_results, policies, decision.instance.saga_id)
        except Exception as exc:
            log.warning("saga %s: counting its breaker results failed: %r", decision.instance.saga_id, exc)

    def definition(self, inst: SagaInstance) -> Saga:
        return self.registry.get(inst.saga_type, inst.definition_version)

    async def apply(self, saga_id: str, event: Event, saga: Saga | None = None) -> Decision:
        """Apply one event to one saga, exactly once however many processes race."""
        observe.about(saga_id)
        async with self._locks.hold(saga_id):
            # A guess spares a read on the hot path: for a reply, what this
            # process last wrote; for a start, that the saga is new. The
            # version compare-and-set catches a wrong guess.
            guessed = isinstance(event, Reply | Start)
            guess = self._written.pop(saga_id, None) if isinstance(event, Reply) else None
            attempted: tuple[Decision, list[Envelope]] | None = None
            for _ in range(CONFLICT_RETRIES):
                inst = guess if guessed else await self.store.load(saga_id)
                trusted = not guessed
                guessed = False
                if attempted is not None and inst is not None and inst == attempted[0].instance:
                    # A write we saw fail (a retried connection) had landed after all.
                    await self.store.replicated(saga_id)
                    landed = await self._committed(*attempted)
                    await self._count(landed, self.policies(self.definition(inst)))
                    return landed
                if inst is None and saga is None:
                    if not trusted:
                        continue
                    return Decision(None, note=f"unknown saga {saga_id!r}")
                definition = self.definition(inst) if inst is not None else saga
                assert definition is not None
                policies = self.policies(definition)
                decision = decide(definition, inst, event, self.clock())
                if (
                    policies
                    and (inst is None or inst.status not in TERMINAL)
                    and self._guarded(definition, decision, policies)
                ):
                    seen = await self.breakers.check(policies, saga_id)
                    decision = await self._decide(saga_id, definition, inst, event, policies, seen)
                if not decision.changed:
                    if not trusted:
                        continue  # "nothing to do" is only believed of what Redis says
                    await self.store.record(saga_id, decision.history)
                    # What Redis says must be on the replicas too before the event is acked (SAGA_REDIS_REPLICAS).
                    await self.store.replicated(saga_id)
                    observe.unchanged(event, decision)
                    self.stats["unchanged"] += 1
                    return decision
                new = decision.instance
                assert new is not None
                envelopes = self.envelopes(definition, decision)
                outbox = pack(envelopes) if envelopes else None
                # With SAGA_REDIS_REPLICAS the write waits for the replicas: NotReplicated (an outage, to
                # the consumer) retries the event in place, and leaves the outbox to the sweep.
                if decision.keeps_outbox:
                    assert inst is not None
                    written = await self.store.annotate(inst.rev, new, decision.history)
                else:
                    written = await self.store.commit(inst.rev if inst else 0, new, decision.history, outbox)
                    if written:
                        self._outbox_revs[saga_id] = new.rev
                        self._outbox_revs.move_to_end(saga_id)
                        if len(self._outbox_revs) > WRITTEN_CACHE:
                            self._outbox_revs.popitem(last=False)
                if written:
                    timing.note(saga_id, "committed")
                    observe.committed(inst, event, decision)
                    if decision.breaker_results:
                        # Counted as the messages go, not after their confirms: the next saga to
                        # reach the breaker should find this result counted.
                        await asyncio.gather(self._committed(decision, envelopes), self._count(decision, policies))
                    else:
                        await self._committed(decision, envelopes)
                    return decision
                attempted = (decision, envelopes)
                self.stats["conflicts"] += 1
            raise RuntimeError(f"saga {saga_id}: gave up after {CONFLICT_RETRIES} write conflicts")

    async def _committed(self, decision: Decision, envelopes: list[Envelope]) -> Decision:
        new = decision.instance
        assert new is not None
        self.stats["transitions"] += 1
        if new.status not in TERMINAL:
            self._written[new.saga_id] = new
            if len(self._written) > WRITTEN_CACHE:
                self._written.popitem(last=False)
        notices = self.notices(decision) if decision.events else []
        if notices:
            # Beside the outbox, not after it: the confirms of both come back together.
            sent = [self._notify(new.saga_type, status, envelope) for status, envelope in notices]
            if envelopes:
                sent.append(self.deliver(new.saga_id, new.rev, envelopes))
            await asyncio.gather(*sent)
        elif envelopes:
            await self.deliver(new.saga_id, new.rev, envelopes)
        return decision

    def envelopes(self, saga: Saga, decision: Decision) -> list[Envelope]:
        names = self.names
        inst = decision.instance
        assert inst is not None
        out = []
        for command in decision.commands:
            command.reply_to = names.reply_queue
            out.append(
                Envelope(
                    exchange=names.commands_exchange,
                    routing_key=saga.step(command.step).participant,
                    body=encode(command),
                    message_id=command.message_id,
                    correlation_id=command.saga_id,
                    kind="Command",
                    reply_to=names.reply_queue,
                    headers=observe.command_headers(inst, command),
                )
            )
        for event in decision.events:
            if event.status not in GUARANTEED:
                continue  # best-effort: `notices`, after the commit
            body = encode(event)
            message_id = f"{inst.saga_id}:{inst.rev}:{event.status}"
            key = names.event_key(event.saga_type, event.saga_id, event.status)
            out.append(Envelope(names.events_exchange, key, body, message_id, inst.saga_id, "SagaEvent"))
            if inst.reply_to:
                out.append(Envelope("", inst.reply_to, body, message_id, inst.saga_id, "SagaEvent"))
        return out

    def notices(self, decision: Decision) -> list[tuple[str, Envelope]]:
        """The decision's best-effort events (`running`, `compensating`) that some queue may take.

        Not in the outbox: a crash may lose one, and the saga in Redis says
        the same. One that no queue took (it came back) stops that type's
        events of that status for `unrouted_pause` seconds.
        """
        inst = decision.instance
        assert inst is not None
        out: list[tuple[str, Envelope]] = []
        for event in decision.events:
            if event.status in GUARANTEED:
                continue
            if self._unrouted.get((event.saga_type, event.status), 0.0) > self.clock():
                self.stats["events_skipped"] += 1
                continue
            key = self.names.event_key(event.saga_type, event.saga_id, event.status)
            message_id = f"{inst.saga_id}:{inst.rev}:{event.status}"
            envelope = Envelope(self.names.events_exchange, key, encode(event), message_id, inst.saga_id, "SagaEvent")
            out.append((event.status, envelope))
        return out

    async def _notify(self, saga_type: str, status: str, envelope: Envelope) -> None:
        if not await self.broker.notify(envelope):
            self._unrouted[(saga_type, status)] = self.clock() + self.unrouted_pause

    async def deliver(self, saga_id: str, rev: int, envelopes: list[Envelope]) -> None:
        """Publish with confirms, then let the outbox go; on failure the sweep retries."""
        try:
            await self.broker.publish(envelopes)
        except Exception as exc:
            self.stats["publish_failures"] += 1
            log.warning("saga %s: publish failed (%r); the outbox sweep will retry", saga_id, exc)
            return
        self._confirmed.append((saga_id, rev))
        self._confirmed_ready.set()

    async def clear_confirmed(self) -> None:
        """Forget confirmed outboxes in batches: one round trip for many replies.

        With `clear_after`, a confirmed outbox waits that long first: the
        saga's next transition (its reply is often back by then) replaces
        it in its commit, and one this process knows was replaced is not
        cleared at all. The sweep leaves an outbox alone for longer than that.
        """
        while True:
            await self._confirmed_ready.wait()
            self._confirmed_ready.clear()
            if self.clear_after:
                await asyncio.sleep(self.clear_after)
            confirmed, self._confirmed = self._confirmed, []
            newest: dict[str, int] = {}
            for saga_id, rev in confirmed:  # a saga's older outboxes were replaced by its newer commits
                newest[saga_id] = max(rev, newest.get(saga_id, rev))
            batch = [(saga_id, rev) for saga_id, rev in newest.items() if not self._replaced(saga_id, rev)]
            if not batch:
                continue
            try:
                await self.store.clear_outboxes(batch)
            except Exception as exc:  # Redis away: keep them, a left-over outbox is only re-sent
                log.warning("clearing %d outboxes failed (%r); will retry", len(batch), exc)
                self._confirmed[:0] = batch
                await asyncio.sleep(0.5)
                self._confirmed_ready.set()

    def _replaced(self, saga_id: str, rev: int) -> bool:
        """Whether this process committed a newer transition of the saga, whose commit replaced outbox `rev`."""
        return self._outbox_revs.get(saga_id, rev) > rev

    async def close(self) -> None:
        """Forget the outboxes confirmed so far (best effort), then close Redis."""
        with contextlib.suppress(Exception):
            await self.store.clear_outboxes(self._confirmed)
        await self.store.redis.aclose()

    async def fire_due(
        self, lease: float, limit: int, buckets: Collection[int] = range(BUCKETS), owner: str | None = None
    ) -> int:
        """Apply `Due` to every saga of `buckets` whose deadline has passed; returns how many were claimed.

        With an `owner`, only in the buckets whose lease it holds (`orchestrator.leases`).
        """
        claimed = await self.store.claim_due(self.clock(), lease, limit, buckets, owner)
        if claimed:
            await asyncio.gather(*(self._fire(saga_id, score) for saga_id, score in claimed))
        return len(claimed)

    async def _fire(self, saga_id: str, lease: int) -> None:
        try:
            if self.presence is not None and await self._held_back(saga_id, lease):
                return
            decision = await self.apply(saga_id, Due())
        except Exception as exc:
            # The lease runs out and the deadline fires again; a bug shows in the log, not a lost timer.
            log.error("saga %s: firing its deadline failed: %r", saga_id, exc)
            return
        if decision.changed:
            self.stats["deadlines_fired"] += 1
        else:
            inst = decision.instance
            await self.store.settle(saga_id, lease, inst.wake_at if inst else None)

    async def _held_back(self, saga_id: str, lease: int) -> bool:
        """A reply is due from a participant whose queue has no consumer: wait for it rather than spend an attempt.

        Up to `hold_seconds` after the command was sent; the deadline is looked at again in
        `hold_recheck` seconds. Then, or once the participant consumes again, it fires as usual.
        """
        assert self.presence is not None
        inst = await self.store.load(saga_id)
        if inst is None or inst.waiting != "reply" or inst.step is None or inst.step in inst.groups:
            return False
        now = self.clock()
        if now - inst.updated_at >= self.hold_seconds:
            return False
        try:
            participant = self.definition(inst).step(inst.step).participant
        except Exception:  # a saga version or step this process does not know: let decide say so
            return False
        step = self.definition(inst).step(inst.step)
        if await self.presence.consumers(self.names.participant_queue(participant)) > 0:
            if self._held.pop(saga_id, None) is None:
                return False
            # Back: its command waits at the head of its queue, give it a whole timeout to answer.
            await self.store.settle(saga_id, lease, now + step.timeout)
            return True
        self._held[saga_id] = now
        if len(self._held) > WRITTEN_CACHE:
            self._held.pop(next(iter(self._held)))
        self.stats["held_back"] += 1
        await self.store.settle(saga_id, lease, min(now + self.hold_recheck, inst.updated_at + self.hold_seconds))
        return True

    async def sweep(self, grace: float, buckets: Collection[int] = range(BUCKETS), owner: str | None = None) -> int:
        """Re-publish outboxes of `buckets` older than `grace` seconds that no broker confirmed.

        Each outbox is tried on its own: one that fails never holds up the
        others, and one that can never be published is parked (`park`).
        """
        count = failed = 0
        first: Exception | None = None
        for saga_id, rev, raw in await self.store.pending_outboxes(self.clock(), grace, 1000, buckets, owner):
            try:
                async with self._locks.hold(saga_id):
                    await self.store.replicated(saga_id)
                    await self.broker.publish(unpack(raw))
                    await self.store.clear_outboxes([(saga_id, rev)])
            except Exception as exc:
                reason = unpublishable(exc)
                try:
                    if reason is not None:
                        await self.park(saga_id, rev, reason)
                        continue
                except Exception as parking:
                    exc = parking
                failed += 1
                first = first or exc
                if isinstance(exc, ConnectionError):
                    break  # the broker or Redis is away: the rest would fail alike
                continue
            count += 1
        if failed:
            self.stats["sweep_failures"] += failed
            log.warning("outbox sweep: %d outboxes failed to publish (first: %r); retried in %gs", failed, first, grace)
        if count:
            self.stats["outboxes_swept"] += count
            log.info("re-published %d outboxes left behind", count)
        return count

    async def park(self, saga_id: str, rev: int, reason: str) -> None:
        """Give up on an outbox that can never be published: its saga goes stuck with `reason`, the outbox goes."""
        if await self.store.outbox_rev(saga_id) != rev:
            return  # confirmed or replaced meanwhile
        log.error("saga %s: its messages can never be published (%s); parked, the saga is stuck", saga_id, reason)
        decision = await self.apply(saga_id, Unpublishable(reason))
        # A stuck transition replaced the outbox in its commit; otherwise (a finished saga) drop it here.
        parked = await self.store.park_outbox(saga_id, rev) or decision.changed
        if parked:
            self.stats["parked_outboxes"] += 1
            await self.store.count("parked_outboxes")
            observe.parked(decision.instance.saga_type if decision.instance else "unknown")

"""Circuit breakers whose state every orchestrator process shares, in Redis.

One hash per breaker (`Names.breaker_state_key`), moved only by
`lua/breaker.lua`, so that every process sees the same breaker:

- closed: commands go out; each counted failure is kept (at most `failures`
  of them, and only for `window` seconds). The `failures`-th within the
  window opens it.
- open: for `cool_down` seconds, its steps are skipped (decide sends them
  to their fallback, or compensates) without a command being sent.
- half-open: after the cool-down, exactly one saga's command is let
  through as the trial (claimed atomically, whichever process asks first);
  its success closes the breaker, its failure opens it again. A trial
  whose result has not come within another cool-down lets the next one try.

An engine reads the breakers of a saga in one round trip (`check`) when a
decision would start a step one of them guards, claims the trial only when its decision would send a command
through a breaker that may try (`claim`), and records the decision's
results after committing it (`record`). Opening and closing are logged,
counted and published on `<ns>.events` as `breaker.<key>.open|closed`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from orchestrator.store import RedisStore, ms
from participants.edge import observe
from participants.edge.amqp import Broker, Envelope
from statemachines.messages import BreakerEvent, encode
from statemachines.names import breaker_problem

log = logging.getLogger("saga.breakers")


class Policy(Protocol):
    """What a breaker is declared with (`statemachines.dsl.CircuitBreaker`)."""

    @property
    def failures(self) -> int: ...
    @property
    def window(self) -> float: ...
    @property
    def cool_down(self) -> float: ...


@dataclass(frozen=True)
class Seen:
    """What `check` found: the breakers to skip, and those that would let a trial through."""

    open: frozenset[str] = frozenset()
    may_try: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Moved:
    """A breaker that a result opened or closed."""

    breaker: str
    state: str
    saga_id: str | None = None


NOTHING = Seen()


class Breakers:
    def __init__(self, store: RedisStore, broker: Broker | None = None, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.broker = broker
        self.names = store.names
        self.clock = clock

    def _key(self, breaker: str) -> str:
        problem = breaker_problem(breaker)
        if problem is not None:
            raise ValueError(problem)
        return self.names.breaker_state_key(breaker)

    async def check(self, policies: Mapping[str, Policy], saga_id: str) -> Seen:
        """Which of these breakers are open for `saga_id`, and which would let its trial through: one round trip."""
        if not policies:
            return NOTHING
        breakers = sorted(policies)
        keys = [self._key(b) for b in breakers]
        args = ["peek", ms(self.clock()), saga_id, *(ms(policies[b].cool_down) for b in breakers)]
        found = await self.store.scripts.call(self.store.redis, "breaker", keys, args)
        return Seen(
            open=frozenset(b for b, code in zip(breakers, found, strict=True) if int(code) == 1),
            may_try=frozenset(b for b, code in zip(breakers, found, strict=True) if int(code) == 2),
        )

    async def claim(self, breaker: str, policy: Policy, saga_id: str) -> bool:
        """Take the half-open trial of `breaker` for `saga_id`; False if another saga's trial runs, or it is open."""
        cool_down = ms(policy.cool_down)
        args = ["trial", ms(self.clock()), saga_id, cool_down, cool_down]
        got = int(await self.store.scripts.call(self.store.redis, "breaker", [self._key(breaker)], args))
        if got == 2:
            log.info("breaker %s is half-open: saga %s makes the trial", breaker, saga_id)
            observe.breaker(breaker, "half_open")
        return got > 0

    async def record(
        self, results: Sequence[tuple[str, bool]], policies: Mapping[str, Policy], saga_id: str | None = None
    ) -> list[Moved]:
        """Count the results (breaker, success?) of one decision; returns the breakers they opened or closed."""
        known = [(breaker, ok) for breaker, ok in results if breaker in policies]
        if not known:
            return []
        keys = [self._key(breaker) for breaker, _ in known]
        args: list[str | int] = ["record", ms(self.clock()), saga_id or ""]
        for breaker, ok in known:
            policy = policies[breaker]
            args += [1 if ok else 0, policy.failures, ms(policy.window), ms(policy.cool_down)]
        found = await self.store.scripts.call(self.store.redis, "breaker", keys, args)
        moved = [
            Moved(breaker, state.decode() if isinstance(state, bytes) else state, saga_id)
            for (breaker, _), state in zip(known, found, strict=True)
            if state
        ]
        for change in moved:
            await self._announce(change, policies[change.breaker])
        return moved

    async def _announce(self, change: Moved, policy: Policy) -> None:
        """Log, count and publish a breaker that opened or closed; a publish that fails is only logged."""
        if change.state == "open":
            log.warning(
                "breaker %s opened (%d failures within %gs); its steps skip for %gs",
                change.breaker,
                policy.failures,
                policy.window,
                policy.cool_down,
            )
        else:
            log.info("breaker %s closed: its trial succeeded", change.breaker)
        observe.breaker(change.breaker, change.state)
        await self.store.count(f"breaker_{change.state}:{change.breaker}")
        if self.broker is None:
            return
        at = self.clock()
        event = BreakerEvent(
            breaker=change.breaker,
            state="open" if change.state == "open" else "closed",
            at=at,
            saga_id=change.saga_id,
            failures=policy.failures,
            window=float(policy.window),
            cool_down=float(policy.cool_down),
        )
        names = self.names
        envelope = Envelope(
            names.events_exchange,
            names.breaker_event_key(change.breaker, change.state),
            encode(event),
            f"breaker:{change.breaker}:{change.state}:{ms(at)}",
            change.saga_id or "",
            "BreakerEvent",
        )
        try:
            await self.broker.publish([envelope])
        except Exception as exc:
            log.warning("publishing that breaker %s %s failed: %r", change.breaker, change.state, exc)

    async def state(self, breaker: str) -> dict[str, str]:
        """A breaker's stored fields as they are (empty: closed, no failures counted), for operators and tests."""
        raw = await self.store.redis.hgetall(self._key(breaker))
        return {
            (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in raw.items()
        }

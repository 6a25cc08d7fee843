"""Test a saga definition without a broker: the same decide(), a virtual clock.

    from statemachines.harness import SagaHarness

    def test_declined_card_releases_stock():
        harness = SagaHarness(order)
        run = harness.start("order", ORDER_DATA)
        run.succeed({"reservation_id": "r-1"})        # reserve_inventory
        run.fail("card_declined")                      # charge_payment
        assert run.sent[-1].command == "release_stock"
        run.succeed()
        assert run.status == "compensated"

Nothing here sleeps: `advance(seconds)` moves the clock and fires every
timeout and retry that falls due on the way, in time order.

Inside a Parallel or ForEach several commands are awaited at once; name the
one a reply answers with `step=`: a branch's step name (`"book_hotel"`, or
`"book.book_hotel"` with its group), a ForEach item's `"<step>-<index>"`
(or `"<group>.<index>"`). `run.signal(name, data)` delivers a signal to an
Await; `harness.open_breaker(key)` / `close_breaker(key)` hold a circuit
breaker open for every saga (keys from `statemachines.dsl.breaker_key`).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from statemachines.decide import Abort, Decision, Due, Event, Resume, Signal, Start, decide
from statemachines.dsl import ForEach, Saga
from statemachines.instance import HistoryEntry, SagaInstance
from statemachines.messages import TERMINAL, Command, ErrorInfo, Reply, SagaEvent


@dataclass(frozen=True)
class Sent:
    """A command the saga sent, and the participant it went to."""

    participant: str
    message: Command

    @property
    def command(self) -> str:
        return self.message.command

    @property
    def step(self) -> str:
        return self.message.step

    @property
    def action(self) -> str:
        return self.message.action

    @property
    def attempt(self) -> int:
        return self.message.attempt

    @property
    def payload(self) -> dict[str, Any]:
        return self.message.payload


class SagaRun:
    """One saga in the harness: feed it replies, read what it did."""

    def __init__(self, harness: SagaHarness, saga: Saga, saga_id: str) -> None:
        self.harness = harness
        self.saga = saga
        self.saga_id = saga_id
        self.instance: SagaInstance | None = None
        self.sent: list[Sent] = []
        self.events: list[SagaEvent] = []
        self.history: list[HistoryEntry] = []
        self._replies = itertools.count(1)
        self._signals = itertools.count(1)
        # (breaker key, success?) as decide reported them, in order.
        self.breaker_results: list[tuple[str, bool]] = []

    # what it is
    @property
    def state(self) -> str:
        return self._instance.state

    @property
    def status(self) -> str:
        return self._instance.status

    @property
    def data(self) -> dict[str, Any]:
        return self._instance.data

    @property
    def error(self) -> ErrorInfo | None:
        return self._instance.error

    @property
    def states(self) -> list[str]:
        """Every state the saga entered, in order, starting with `new`."""
        return ["new"] + [h.dest for h in self.history if h.dest != h.source]

    @property
    def awaited(self) -> list[Sent]:
        """Every command whose reply the saga waits for (several inside a group)."""
        inst = self._instance
        ids = {inst.awaiting} if inst.awaiting is not None else set()
        if inst.status not in TERMINAL:
            ids.update(lane.awaiting for lane in inst.groups.get(inst.step or "", ()) if lane.awaiting is not None)
        return [sent for sent in self.sent if sent.message.message_id in ids]

    @property
    def awaiting(self) -> Sent | None:
        """The command whose reply the saga waits for, if it waits for exactly one."""
        awaited = self.awaited
        return awaited[0] if len(awaited) == 1 else None

    def awaited_step(self, step: str) -> Sent:
        """The awaited command of `step` (see the module's doc for the names it takes)."""
        wanted = {step}
        group, _, rest = step.partition(".")
        if rest:
            wanted.add(rest)
            node = next((n for n in self.saga.steps if n.name == group), None)
            if isinstance(node, ForEach) and rest.isdigit():
                wanted.add(f"{node.step.name}-{rest}")
        for sent in self.awaited:
            if sent.step in wanted:
                return sent
        names = ", ".join(sent.step for sent in self.awaited) or "none"
        raise AssertionError(f"saga {self.saga_id!r} awaits no reply from step {step!r}; it awaits: {names}")

    @property
    def done(self) -> bool:
        return self._instance.status in TERMINAL

    @property
    def _instance(self) -> SagaInstance:
        if self.instance is None:
            raise AssertionError(f"saga {self.saga_id!r} was not started")
        return self.instance

    # what to do to it
    def succeed(self, data: Mapping[str, Any] | None = None, *, step: str | None = None) -> Decision:
        """Answer the awaited command (of `step`) with success, merging `data` into the saga."""
        to = self.awaited_step(step) if step is not None else None
        return self.deliver(self.reply("success", data=data, to=to))

    def fail(self, code: str, message: str = "", *, step: str | None = None) -> Decision:
        """Answer the awaited command (of `step`) with a failure carrying `code`."""
        to = self.awaited_step(step) if step is not None else None
        return self.deliver(self.reply("failure", error=ErrorInfo(code, message), to=to))

    def signal(self, name: str, data: Mapping[str, Any] | None = None, *, signal_id: str | None = None) -> Decision:
        """Deliver the signal `name` (an Await's) with `data`; the same `signal_id` again is a repeat."""
        signal_id = signal_id or f"{self.saga_id}/signal-{next(self._signals)}"
        return self.harness._apply(self, Signal(name=name, signal_id=signal_id, data=dict(data or {})))

    def reply(
        self,
        outcome: str,
        *,
        data: Mapping[str, Any] | None = None,
        error: ErrorInfo | None = None,
        to: Sent | None = None,
    ) -> Reply:
        """Build a reply to `to` (default: the awaited command) without delivering it."""
        target = to or self.awaiting
        if target is None:
            inst = self._instance
            if len(self.awaited) > 1:
                names = ", ".join(sent.step for sent in self.awaited)
                raise AssertionError(f"saga {self.saga_id!r} awaits several replies ({names}): pass step=...")
            raise AssertionError(
                f"saga {self.saga_id!r} awaits no reply (state {inst.state!r}, waiting {inst.waiting!r}); "
                "advance the clock or pass to=run.sent[i]"
            )
        return Reply(
            message_id=f"{target.message.message_id}/reply-{next(self._replies)}",
            in_reply_to=target.message.message_id,
            saga_id=self.saga_id,
            step=target.step,
            action=target.message.action,
            outcome="success" if outcome == "success" else "failure",
            data=dict(data or {}),
            error=error if outcome != "success" else None,
            participant=target.participant,
        )

    def deliver(self, reply: Reply) -> Decision:
        """Deliver any reply, as the broker would: duplicates and late ones too."""
        return self.harness._apply(self, reply)

    def abort(self, reason: str = "compensation forced by a test") -> Decision:
        return self.harness._apply(self, Abort(reason))

    def resume(self) -> Decision:
        return self.harness._apply(self, Resume())

    def __repr__(self) -> str:
        state = self.instance.state if self.instance else "not started"
        return f"<SagaRun {self.saga.name} {self.saga_id} {state}>"


class SagaHarness:
    """Runs sagas through decide() on a virtual clock that starts at `start_time`."""

    def __init__(self, *sagas: Saga, start_time: float = 0.0) -> None:
        if not sagas:
            raise ValueError("SagaHarness needs at least one saga")
        self.sagas = {saga.name: saga for saga in sagas}
        self.now = start_time
        self.runs: dict[str, SagaRun] = {}
        self._ids = itertools.count(1)
        self.open_breakers: set[str] = set()

    def open_breaker(self, key: str) -> None:
        """Hold the breaker `key` open, as the edge would after too many failures."""
        self.open_breakers.add(key)

    def close_breaker(self, key: str) -> None:
        self.open_breakers.discard(key)

    def start(
        self, saga_type: str | None = None, data: Mapping[str, Any] | None = None, *, saga_id: str | None = None
    ) -> SagaRun:
        """Start a saga; with one saga in the harness its type may be left out."""
        if saga_type is None:
            if len(self.sagas) != 1:
                raise ValueError(f"name the saga type, one of {sorted(self.sagas)}")
            saga_type = next(iter(self.sagas))
        if saga_type not in self.sagas:
            raise ValueError(f"unknown saga type {saga_type!r}, one of {sorted(self.sagas)}")
        saga = self.sagas[saga_type]
        saga_id = saga_id or f"{saga_type}-{next(self._ids)}"
        run = self.runs.get(saga_id) or SagaRun(self, saga, saga_id)
        decision = self._apply(run, Start(saga_id=saga_id, data=dict(data or {})))
        if decision.instance is None:
            raise ValueError(decision.note)
        self.runs[saga_id] = run
        return run

    def advance(self, seconds: float) -> None:
        """Move the clock forward, firing what falls due on the way, in time order."""
        if not seconds >= 0:
            raise ValueError(f"the clock only moves forward: advance({seconds!r})")
        until = self.now + seconds
        while True:
            due = [
                (run.instance.wake_at, run.saga_id)
                for run in self.runs.values()
                if run.instance is not None and run.instance.wake_at is not None and run.instance.wake_at <= until
            ]
            if not due:
                break
            at, saga_id = min(due)
            self.now = max(self.now, at)
            decision = self._apply(self.runs[saga_id], Due())
            if not decision.changed:
                # Nothing moved the saga's wake time: firing again would loop forever.
                raise AssertionError(
                    f"saga {saga_id!r} is due at {at:g} but its Due event changed nothing: {decision.note}"
                )
        self.now = until

    def _apply(self, run: SagaRun, event: Event) -> Decision:
        decision = decide(run.saga, run.instance, event, self.now, frozenset(self.open_breakers))
        run.breaker_results.extend(decision.breaker_results)
        if decision.instance is not None:
            run.instance = decision.instance
        run.history.extend(decision.history)
        run.events.extend(decision.events)
        run.sent.extend(Sent(run.saga.step(c.step).participant, c) for c in decision.commands)
        return decision

"""Properties of decide() over random definitions that use every construct.

A definition is 1..4 nodes: plain, guarded (`when`), fallback and
breaker-guarded steps, Parallel groups whose branches are short sequences,
ForEach over 0..3 items and Awaits. A run delivers, in a random order,
successes and failures (business, retriable, outcome_unknown) to any awaited
command, duplicates of earlier replies, clock jumps past timeouts, signals
(right, wrong, repeated) and breaker toggles; then it drains: compensations
succeed or fail, the clock moves, until the saga ends.

Checked: every run ends completed, compensated or stuck; no step's
compensation is started twice; a compensated saga compensated every
compensable step whose action applied (a success was delivered, even late),
and only steps that may have applied; a completed saga compensated nothing;
and a step that began after another one's success is compensated before
that one's compensation is sent (the reverse of what happened).
"""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from statemachines import (
    Await,
    CircuitBreaker,
    ErrorInfo,
    ForEach,
    Parallel,
    Retry,
    Saga,
    SagaHarness,
    Step,
    breaker_key,
)
from statemachines.harness import SagaRun, Sent

PARTICIPANTS = ("pa", "pb", "pc")
FLAGS = ("f0", "f1", "f2")


@st.composite
def steps(
    draw: st.DrawFn, names: itertools.count[int], plain_only: bool = False, undo: bool = True, pivot: bool = False
) -> Step:
    name = f"s{next(names)}"
    options: dict[str, Any] = {
        "participant": draw(st.sampled_from(PARTICIPANTS)),
        "command": f"do_{name}",
        "compensation": f"undo_{name}" if undo and draw(st.integers(0, 9)) < 7 else None,
        "pivot": pivot,
        "timeout": 10.0,
        "retry": Retry(draw(st.integers(1, 2)), backoff=draw(st.sampled_from([0.0, 1.0])), retry_on=["unavailable"]),
        "compensation_retry": Retry(draw(st.integers(1, 2)), backoff=0.0),
    }
    if not plain_only:
        if not pivot and draw(st.integers(0, 9)) < 3:
            options["when"] = draw(st.sampled_from(FLAGS))
        if draw(st.integers(0, 9)) < 3:
            options["fallback"] = draw(steps(names, plain_only=True, undo=undo))
        if draw(st.integers(0, 9)) < 2:
            options["breaker"] = CircuitBreaker()
    return Step(name, **options)


@st.composite
def sagas(draw: st.DrawFn) -> Saga:
    names = itertools.count()
    nodes: list[Any] = []
    count = draw(st.integers(1, 4))
    # A pivot, maybe: nothing after it can be undone.
    pivot = draw(st.none() | st.integers(0, count - 1))
    for index in range(count):
        undoable = pivot is None or index < pivot
        kind = "pivot" if index == pivot else draw(st.sampled_from(["step", "step", "parallel", "foreach", "await"]))
        if kind == "pivot":
            nodes.append(draw(steps(names, undo=True, pivot=True)))
        elif kind == "step":
            nodes.append(draw(steps(names, undo=undoable)))
        elif kind == "parallel":
            branches = [
                [draw(steps(names, undo=undoable)) for _ in range(draw(st.integers(1, 2)))]
                for _ in range(draw(st.integers(2, 3)))
            ]
            nodes.append(Parallel(f"g{index}", branches))
        elif kind == "foreach":
            item = draw(steps(names, undo=undoable))
            nodes.append(ForEach(f"g{index}", items="items", step=item, max_concurrency=draw(st.integers(1, 2))))
        else:
            undo = None
            if undoable and draw(st.booleans()):
                undo = Step(f"s{next(names)}", participant="pa", command="undo_wait", compensation_retry=Retry(1))
            nodes.append(Await(f"g{index}", timeout=50.0, compensation=undo))
    breakers = {"pc": CircuitBreaker()} if draw(st.booleans()) else None
    if breakers and not any(s.participant == "pc" for s in Saga("probe", nodes).all_steps.values()):
        breakers = None
    deadline = draw(st.sampled_from([None, None, 45.0]))
    return Saga("random", nodes, breakers=breakers, deadline=deadline)


def trail(run: SagaRun) -> str:
    return (
        "; ".join(f"{h.event} {h.step} {h.action} {h.source}->{h.dest}" for h in run.history)
        + " | "
        + repr([(n, [getattr(x, "name", x) for x in getattr(n, "branches", [])]) for n in run.saga.steps])
    )


class Ledger:
    """What the participants did, as the test knows it, beside what the saga saw."""

    def __init__(self, run: SagaRun) -> None:
        self.run = run
        self.tick = itertools.count()
        self.applied: dict[str, int] = {}  # wire step -> when its action applied (first)
        self.maybe: set[str] = set()  # wire steps that may have applied
        self.do_sent: dict[str, int] = {}
        self.accepted: dict[str, int] = {}  # wire step -> when the saga took its action's success
        self.undo_sent: dict[str, int] = {}
        self.undo_done: dict[str, int] = {}
        self.undo_starts: list[str] = []
        self.seen = 0
        self.delivered: list[Any] = []
        self.answered: set[str] = set()  # message ids

    def observe(self) -> None:
        for sent in self.run.sent[self.seen :]:
            now = next(self.tick)
            if sent.action == "do":
                self.do_sent.setdefault(sent.step, now)
                self.maybe.add(sent.step)  # sent: the participant may act on it
            else:
                self.undo_sent.setdefault(sent.step, now)
                if sent.attempt == 1:
                    self.undo_starts.append(sent.step)
        self.seen = len(self.run.sent)

    def answer(self, sent: Sent, outcome: str) -> None:
        now = next(self.tick)
        self.answered.add(sent.message.message_id)
        if outcome == "success":
            reply = self.run.reply("success", to=sent)
            if sent.action == "do":
                self.applied.setdefault(sent.step, now)
        else:
            reply = self.run.reply("failure", error=ErrorInfo(outcome), to=sent)
            if outcome == "outcome_unknown" and sent.action == "do":
                self.applied.setdefault(sent.step, now)
        decision = self.run.deliver(reply)
        self.delivered.append(reply)
        if decision.changed and not any(h.event == "ignored_reply" for h in decision.history):
            if outcome == "success" and sent.action == "do":
                self.accepted.setdefault(sent.step, now)
            if outcome == "success" and sent.action == "compensate":
                self.undo_done.setdefault(sent.step, now)
        self.observe()


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(saga=sagas(), flags=st.lists(st.booleans(), min_size=3, max_size=3), items=st.integers(0, 3), data=st.data())
def test_every_construct_compensates_what_applied_once_in_reverse(
    saga: Saga, flags: list[bool], items: int, data: st.DataObject
) -> None:
    harness = SagaHarness(saga)
    start = {**dict(zip(FLAGS, flags, strict=True)), "items": [f"w{i}" for i in range(items)]}
    run = harness.start("random", start)
    ledger = Ledger(run)
    ledger.observe()
    keys = sorted({k for s in saga.all_steps if (k := breaker_key(saga, s)) is not None})
    signals = [n.name for n in saga.steps if isinstance(n, Await)] + ["nobody_sends_this"]
    for _ in range(data.draw(st.integers(0, 40), label="chaos")):
        if run.done:
            break
        move = data.draw(
            st.sampled_from(["reply", "reply", "reply", "dup", "late", "clock", "signal", "breaker", "abort", "resume"])
        )
        awaited = run.awaited
        late = [
            sent
            for sent in run.sent
            if sent.action == "do" and sent not in awaited and sent.message.message_id not in ledger.answered
        ]
        if move == "reply" and awaited:
            sent = data.draw(st.sampled_from(awaited))
            outcome = data.draw(st.sampled_from(["success", "success", "unavailable", "declined", "outcome_unknown"]))
            ledger.answer(sent, outcome)
        elif move == "late" and late:
            # A command the saga stopped waiting for is acted on after all,
            # unless its compensation overtook it (the SDK refuses it then).
            sent = data.draw(st.sampled_from(late))
            ledger.answer(sent, "compensated" if sent.step in ledger.undo_sent else "success")
        elif move == "dup" and ledger.delivered:
            run.deliver(data.draw(st.sampled_from(ledger.delivered)))
            ledger.observe()
        elif move == "clock":
            harness.advance(data.draw(st.sampled_from([1.0, 11.0, 60.0])))
            ledger.observe()
        elif move == "signal":
            name = data.draw(st.sampled_from(signals))
            run.signal(name, {"signalled": True}, signal_id=data.draw(st.sampled_from(["a", "b", None])))
            ledger.observe()
        elif move == "abort" and data.draw(st.integers(0, 3)) == 0:
            run.abort()
            ledger.observe()
        elif move == "resume":
            run.resume()
            ledger.observe()
        elif move == "breaker" and keys:
            key = data.draw(st.sampled_from(keys))
            if key in harness.open_breakers:
                harness.close_breaker(key)
            else:
                harness.open_breaker(key)
    harness.open_breakers.clear()
    for _ in range(300):
        if run.done:
            break
        awaited = run.awaited
        late = [
            sent
            for sent in run.sent
            if sent.action == "do" and sent not in awaited and sent.message.message_id not in ledger.answered
        ]
        if late:
            ledger.answer(late[0], "compensated" if late[0].step in ledger.undo_sent else "success")
        elif awaited:
            sent = awaited[0]
            good = sent.action == "compensate" or data.draw(st.integers(0, 3), label="drain") > 0
            ledger.answer(sent, "success" if good else "declined")
        elif run.instance is not None and run.instance.waiting == "signal":
            run.signal(run.instance.step or "", {})
            ledger.observe()
        else:
            harness.advance(60.0)
            ledger.observe()

    assert run.status in ("completed", "compensated", "stuck"), run.state
    assert len(ledger.undo_starts) == len(set(ledger.undo_starts)), f"compensated twice: {ledger.undo_starts}"

    def compensable(wire: str) -> bool:
        return saga.step(wire).undo_command is not None

    started = set(ledger.undo_starts)
    if run.status == "completed":
        assert not started
    if run.status == "compensated":
        must = {step for step in ledger.applied if compensable(step)}
        assert must <= started, f"applied but never compensated: {sorted(must - started)}"
        may = {step for step in ledger.maybe if compensable(step)}
        # An Await's compensation is not a forward step: it undoes a signal.
        awaits = {n.compensation.name for n in saga.steps if isinstance(n, Await) and n.compensation is not None}
        assert started - awaits <= may, f"compensated but never sent: {sorted(started - awaits - may)}"
    # The reverse of what happened: Y came after X (a later node, or later in
    # the same branch or item) so Y is undone before X's undo is sent.
    # Branches of one group, and items, are concurrent: no order between them.
    lane = lanes_of(saga)
    for x, took in ledger.accepted.items():
        for y, began in ledger.do_sent.items():
            after = lane(y)[0] > lane(x)[0] or (lane(y) == lane(x) and began > took)
            if x != y and after and x in ledger.undo_sent and y in started:
                assert y in ledger.undo_done, f"{x} undone while {y}, which came after it, was not: {trail(run)}"
                assert ledger.undo_done[y] < ledger.undo_sent[x], f"{x} undone before {y}: {trail(run)}"


def lanes_of(saga: Saga) -> Any:
    """A wire step's place: (top-level node index, branch or item)."""
    branch: dict[str, int] = {}
    for node in saga.steps:
        for number, steps in enumerate(getattr(node, "branches", ())):
            for step in steps:
                branch[step.name] = number
                if step.fallback is not None:
                    branch[step.fallback.name] = number

    def place(wire: str) -> tuple[int, int]:
        name, _, item = wire.rpartition("-")
        if item.isdigit():
            return saga.index(name), int(item)
        return saga.index(wire), branch.get(wire, 0)

    return place

"""Properties of decide() over random sagas and random scripts of participant behaviour.

A saga has 1..6 steps, random compensable flags, maybe a pivot (with no
compensable step after it) and 1..3 attempts per step and per compensation.
A script says what happens to each command the saga sends, in order: a
success, a retryable or a final failure, or no reply at all (the harness
clock is moved past the timeout). Between events, duplicate and stale replies
may be injected.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from hypothesis import event, given, settings
from hypothesis import strategies as st

from statemachines import Command, ErrorInfo, Reply, Retry, Saga, SagaHarness, Step

Outcome = Literal["success", "unavailable", "declined", "timeout"]
RETRYABLE = "unavailable"  # in every forward step's retry_on; "declined" is not
OUTCOMES: list[Outcome] = ["success", "unavailable", "declined", "timeout"]
MAX_EVENTS = 200  # far above what any saga here can take: 6 steps x 3 attempts, twice


@st.composite
def sagas(draw: st.DrawFn) -> Saga:
    count = draw(st.integers(1, 6))
    pivot = draw(st.none() | st.integers(0, count - 1))
    steps = []
    for index in range(count):
        compensable = pivot is None or index <= pivot
        compensable = compensable and draw(st.booleans())
        # Backoffs and timeouts are binary fractions, so clock arithmetic is exact.
        backoff = draw(st.sampled_from([0.0, 0.5, 2.0]))
        steps.append(
            Step(
                f"step_{index}",
                participant=f"participant_{index}",
                command=f"do_{index}",
                compensation=f"undo_{index}" if compensable else None,
                timeout=draw(st.sampled_from([1.0, 10.0])),
                retry=Retry(draw(st.integers(1, 3)), backoff=backoff, jitter=0, retry_on=[RETRYABLE]),
                compensation_retry=Retry(draw(st.integers(1, 3)), backoff=backoff, jitter=0),
                pivot=index == pivot,
            )
        )
    return Saga("random", steps)


scripts = st.lists(st.sampled_from(OUTCOMES), max_size=40)
# After each event: nothing, a duplicate of the last reply, or a reply to an
# earlier command (index into the commands sent so far) with either outcome.
noises = st.lists(
    st.one_of(
        st.just(("none", 0, True)),
        st.just(("duplicate", 0, True)),
        st.tuples(st.just("stale"), st.integers(0, 40), st.booleans()),
    ),
    min_size=5,
    max_size=60,
)


@dataclass
class Trace:
    status: str
    state: str
    data: dict[str, Any]
    sent: list[Command]
    # What the saga acted on, in order: (step, action, outcome) per command.
    acted: list[tuple[str, str, Outcome]] = field(default_factory=list)
    injected: int = 0

    def outcome(self) -> tuple[Any, ...]:
        return (self.status, self.state, self.data, self.sent, self.acted)


def drive(saga: Saga, script: list[Outcome], noise: list[tuple[str, int, bool]] | None = None) -> Trace:
    harness = SagaHarness(saga)
    run = harness.start(data={"seed": 1})
    outcomes = iter(script)
    extra = iter(noise or [])
    acted: list[tuple[str, str, Outcome]] = []
    last: Reply | None = None
    injected = 0
    for _ in range(MAX_EVENTS):
        if run.done:
            break
        inst = run.instance
        assert inst is not None and inst.due_at is not None
        if inst.waiting == "backoff":
            harness.advance(inst.due_at - harness.now)
            assert run.instance is not None and run.instance.rev > inst.rev, "the resend did not happen"
        else:
            target = run.awaiting
            assert target is not None
            kind: Outcome = next(outcomes, "success")  # a script that ends lets everything succeed
            if kind == "timeout":
                harness.advance(inst.due_at - harness.now)
                assert run.instance is not None and run.instance.rev > inst.rev, "the timeout did not fire"
            else:
                if kind == "success":
                    last = run.reply("success", data={f"{target.step}_{target.action}": target.attempt})
                else:
                    last = run.reply("failure", error=ErrorInfo(kind, "scripted"))
                assert run.deliver(last).changed
            acted.append((target.step, target.action, kind))
        what, index, success = next(extra, ("none", 0, True))
        if what == "duplicate" and last is not None:
            reply = last
        elif what == "stale" and run.sent:
            to = run.sent[index % len(run.sent)]
            if to == run.awaiting:
                continue  # that would be the real answer, not a stale one
            reply = (
                run.reply("success", data={"stale": True}, to=to)
                if success
                else run.reply("failure", error=ErrorInfo(RETRYABLE), to=to)
            )
        else:
            continue
        before = run.instance
        decision = run.deliver(reply)
        assert not decision.changed, f"{what} reply {reply} changed the saga"
        assert run.instance == before
        assert decision.history[0].event == "ignored_reply"
        injected += 1
    assert run.done, f"not terminal after {MAX_EVENTS} events: {run}"
    assert run.instance is not None
    return Trace(run.status, run.state, run.data, [s.message for s in run.sent], acted, injected)


def reference(saga: Saga, script: list[Outcome]) -> tuple[str, list[tuple[str, str, int]]]:
    """The rules of the issue, written plainly: the final status and every command sent."""
    steps = saga.steps
    outcomes = iter(script)
    sent: list[tuple[str, str, int]] = []
    done: list[int] = []
    for index, step in enumerate(steps):
        attempt, maybe_applied = 1, False
        while True:
            sent.append((step.name, "do", attempt))
            kind = next(outcomes, "success")
            if kind == "success":
                done.append(index)
                break
            maybe_applied = maybe_applied or kind == "timeout"
            if kind in ("timeout", RETRYABLE) and attempt < step.retry.attempts:
                attempt += 1
                continue
            pivot = saga.pivot_index
            if pivot is not None and index > pivot:
                return "stuck", sent
            undo = [j for j in reversed([*done, *([index] if maybe_applied else [])]) if steps[j].compensable]
            for j in undo:
                for attempt in range(1, steps[j].compensation_retry.attempts + 1):
                    sent.append((steps[j].name, "compensate", attempt))
                    if next(outcomes, "success") == "success":
                        break
                else:
                    return "stuck", sent
            return "compensated", sent
    return "completed", sent


def collapse(names: list[str]) -> list[str]:
    return [name for i, name in enumerate(names) if i == 0 or names[i - 1] != name]


@settings(max_examples=600, deadline=None)
@given(saga=sagas(), script=scripts)
def test_runs_end_terminal_and_compensate_exactly_what_may_have_happened(saga: Saga, script: list[Outcome]) -> None:
    trace = drive(saga, script)
    event(trace.status)
    assert trace.status in ("completed", "compensated", "stuck")
    assert trace.state == trace.status

    names = [step.name for step in saga.steps]
    succeeded = [step for step, action, kind in trace.acted if action == "do" and kind == "success"]
    timed_out = {step for step, action, kind in trace.acted if action == "do" and kind == "timeout"}
    expected = [
        step.name
        for step in reversed(saga.steps)
        if step.compensable and (step.name in succeeded or step.name in timed_out)
    ]
    compensate_commands = [c.step for c in trace.sent if c.action == "compensate"]
    compensated = collapse(compensate_commands)
    undone = Counter(step for step, action, kind in trace.acted if action == "compensate" and kind == "success")

    # Each step is compensated in one stretch, never revisited, and only compensable steps are.
    assert len(compensated) == len(set(compensated))
    assert all(saga.step(name).compensable for name in compensated)
    # Forward steps run in order, each in one stretch.
    forward = collapse([c.step for c in trace.sent if c.action == "do"])
    assert forward == names[: len(forward)]

    if trace.status == "compensated":
        assert compensated == expected  # reverse order of the forward steps
        assert undone == Counter(expected)  # each compensation succeeded exactly once
    elif trace.status == "stuck":
        assert compensated == expected[: len(compensated)]
        assert undone == Counter(compensated[:-1])  # the last one is the one stuck
    else:
        assert compensated == []

    if trace.status == "completed":
        assert Counter(succeeded) == Counter(names)  # every step succeeded exactly once
        assert succeeded == names
        assert all(f"{name}_do" in trace.data for name in names)

    pivot = saga.pivot_index
    if pivot is not None and names[pivot] in succeeded:
        assert compensate_commands == []  # nothing before a succeeded pivot is compensated
        assert trace.status != "compensated"


@settings(max_examples=600, deadline=None)
@given(saga=sagas(), script=scripts)
def test_runs_follow_the_plain_rules(saga: Saga, script: list[Outcome]) -> None:
    trace = drive(saga, script)
    status, sent = reference(saga, script)
    assert [(c.step, c.action, c.attempt) for c in trace.sent] == sent
    assert trace.status == status


@settings(max_examples=400, deadline=None)
@given(saga=sagas(), script=scripts, noise=noises)
def test_duplicate_and_stale_replies_never_change_the_outcome(
    saga: Saga, script: list[Outcome], noise: list[tuple[str, int, bool]]
) -> None:
    quiet = drive(saga, script)
    noisy = drive(saga, script, noise)
    assert noisy.outcome() == quiet.outcome()
    event("injected 5+" if noisy.injected >= 5 else f"injected {noisy.injected}")
    assert "stale" not in noisy.data

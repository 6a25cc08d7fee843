"""Compile a `Saga` into one `transitions.Machine` per saga type.

States: `new`, one forward state per node (named after the step or
group), one `compensating_<node>` state per compensable node, and the
terminal states `completed`, `compensated` and `stuck`. A group (Parallel,
ForEach, a step with a `when`, a fallback or a breaker) keeps the progress
of its branches in the instance's lanes (`statemachines.lanes`) and fires
`succeeded` or `failed` on the machine once the group as a whole has an
outcome; an Await leaves its state on `signal`.

Triggers: `start`, `succeeded`, `failed`, `timed_out`, and those the engine
fires for timers, operators and bugs: `resend` (a retry's backoff has
passed), `expired` (the saga's own deadline, only where one is declared),
`abort` (force compensation), `resume` (retry a stuck saga) and `fault` (a
payload could not be built: the saga is stuck until the code is fixed).

The machine's callbacks only record decisions on the model (see
`statemachines.run.Run`); conditions read the model. Nothing here does I/O.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, cast

from transitions import EventData, Machine, State

from statemachines.dsl import Await, Saga, lane_node
from statemachines.messages import Status
from statemachines.run import Run

NEW, COMPLETED, COMPENSATED, STUCK = "new", "completed", "compensated", "stuck"
TRIGGERS = ("start", "succeeded", "signal", "failed", "timed_out", "resend", "expired", "abort", "resume", "fault")
# Triggers that are not part of the saga's business flow; graph export leaves
# them out unless asked.
OPERATOR_TRIGGERS = frozenset({"resend", "abort", "resume", "fault"})


def compensating(step: str) -> str:
    return f"compensating_{step}"


def _run(event: EventData) -> Run:
    return cast(Run, event.model)


@dataclass
class CompiledSaga:
    saga: Saga
    machine: Machine
    # state name -> (step index, action) for every step state
    step_states: dict[str, tuple[int, str]] = field(default_factory=dict)
    status_of: dict[str, Status] = field(default_factory=dict)
    # The breaker keys held open for the decision at hand (decide sets them on a copy).
    open_breakers: frozenset[str] = frozenset()

    def state_for(self, index: int, action: str) -> str:
        name = self.saga.steps[index].name
        return name if action == "do" else compensating(name)


_compiled: weakref.WeakKeyDictionary[Saga, CompiledSaga] = weakref.WeakKeyDictionary()


def compiled(saga: Saga) -> CompiledSaga:
    """The saga's machine, built on first use and kept for the saga's life."""
    if saga not in _compiled:
        _compiled[saga] = compile_saga(saga)
    return _compiled[saga]


def compile_saga(saga: Saga) -> CompiledSaga:
    steps = saga.steps
    pivot = saga.pivot_index
    last_compensable_before = _compensation_targets(saga)

    def undo_from(index: int) -> str:
        """Where compensation starts when the step at `index` did not happen."""
        before = last_compensable_before[index]
        return COMPENSATED if before is None else compensating(steps[before].name)

    states: list[State] = [State(NEW)]
    compiled = CompiledSaga(saga=saga, machine=None)  # type: ignore[arg-type]
    transitions: list[dict[str, Any]] = []

    def add(trigger: str, source: str, dest: str | None, **kwargs: Any) -> None:
        transitions.append({"trigger": trigger, "source": source, "dest": dest, **kwargs})

    def may_retry(event: EventData) -> bool:
        return _run(event).may_retry()

    def uncertain(event: EventData) -> bool:
        return _run(event).inst.maybe_applied

    def in_flight(event: EventData) -> bool:
        inst = _run(event).inst
        return inst.maybe_applied or inst.waiting == "reply"

    def schedule_retry(event: EventData) -> None:
        _run(event).schedule_retry()

    def resend(event: EventData) -> None:
        _run(event).send_again()

    for index, step in enumerate(steps):
        forward = step.name
        after_pivot = pivot is not None and index > pivot
        following = steps[index + 1].name if index + 1 < len(steps) else COMPLETED
        if index == 0:
            add("start", NEW, forward)
        compiled.step_states[forward] = (index, "do")
        compiled.status_of[forward] = "running"
        if step.compensable:
            compiled.step_states[compensating(forward)] = (index, "compensate")
            compiled.status_of[compensating(forward)] = "compensating"

        if isinstance(step, Await) or lane_node(saga, step):
            if isinstance(step, Await):

                def enter_wait(event: EventData, index: int = index) -> None:
                    _run(event).wait_signal(index)

                states.append(State(forward, on_enter=[enter_wait]))
                add("signal", forward, following)
                ends = ("timed_out",)
            else:

                def enter_group(event: EventData, index: int = index) -> None:
                    _run(event).enter_group(index, "do")

                states.append(State(forward, on_enter=[enter_group]))
                add("succeeded", forward, following)
                ends = ("failed",)
            for trigger in ends:
                if after_pivot:
                    add(trigger, forward, STUCK)
                elif step.compensable and not isinstance(step, Await):
                    add(trigger, forward, compensating(forward))
                else:
                    add(trigger, forward, undo_from(index))
            if not after_pivot:
                for trigger in ("abort", "expired") if saga.deadline else ("abort",):
                    add(
                        trigger,
                        forward,
                        compensating(forward) if step.compensable and not isinstance(step, Await) else undo_from(index),
                    )
            if step.compensable:

                def enter_undo(event: EventData, index: int = index) -> None:
                    _run(event).enter_group(index, "compensate")

                states.append(State(compensating(forward), on_enter=[enter_undo]))
                add("succeeded", compensating(forward), undo_from(index))
                add("failed", compensating(forward), STUCK)
            continue

        def enter_forward(event: EventData, index: int = index) -> None:
            _run(event).send(index, "do")

        states.append(State(forward, on_enter=[enter_forward]))
        if step.compensable:
            name = compensating(forward)

            def enter_compensating(event: EventData, index: int = index) -> None:
                _run(event).send(index, "compensate")

            states.append(State(name, on_enter=[enter_compensating]))

        add("succeeded", forward, following)
        add("resend", forward, None, after=[resend])
        for trigger in ("failed", "timed_out"):
            add(trigger, forward, None, conditions=[may_retry], after=[schedule_retry])
            if after_pivot:
                add(trigger, forward, STUCK)
                continue
            if step.compensable:
                add(trigger, forward, compensating(forward), conditions=[uncertain])
            add(trigger, forward, undo_from(index))
        if not after_pivot:
            for trigger in ("abort", "expired") if saga.deadline else ("abort",):
                if step.compensable:
                    add(trigger, forward, compensating(forward), conditions=[in_flight])
                add(trigger, forward, undo_from(index))

        if step.compensable:
            name = compensating(forward)
            add("succeeded", name, undo_from(index))
            add("resend", name, None, after=[resend])
            for trigger in ("failed", "timed_out"):
                add(trigger, name, None, conditions=[may_retry], after=[schedule_retry])
                add(trigger, name, STUCK)

    def finish(event: EventData) -> None:
        _run(event).finish()

    for terminal in (COMPLETED, COMPENSATED, STUCK):
        states.append(State(terminal, on_enter=[finish]))
        compiled.status_of[terminal] = terminal  # type: ignore[assignment]
    compiled.status_of[NEW] = "new"

    # A stuck saga resumes in the step state it was stuck in; stuck in a
    # forward step up to the pivot, it may also be forced to compensate.
    for state, (index, action) in compiled.step_states.items():

        def stuck_in(event: EventData, state: str = state) -> bool:
            return _run(event).resume_state == state

        add("resume", STUCK, state, conditions=[stuck_in])
        add("fault", state, STUCK)
        if action == "do" and (pivot is None or index <= pivot):
            if steps[index].compensable and not isinstance(steps[index], Await):
                add("abort", STUCK, compensating(state), conditions=[stuck_in])
            add("abort", STUCK, undo_from(index), conditions=[stuck_in])

    compiled.machine = Machine(
        model=None,
        states=states,
        transitions=transitions,
        initial=NEW,
        auto_transitions=False,
        send_event=True,
        name=saga.name,
    )
    return compiled


def _compensation_targets(saga: Saga) -> list[int | None]:
    """For each step index, the nearest compensable step before it, if any."""
    found: list[int | None] = []
    last: int | None = None
    for index, step in enumerate(saga.steps):
        found.append(last)
        if step.compensable:
            last = index
    return found

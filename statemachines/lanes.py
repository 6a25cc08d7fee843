"""Lanes: the progress of each branch of a Parallel, each item of a ForEach, and a guarded or fallback step.

A group node has two machine states (`<group>` and `compensating_<group>`);
what happens inside it is kept here, one `Lane` per branch or item, in the
saga instance itself. So a crash mid-group loses nothing: whoever loads the
instance next knows which commands are out, which steps applied (or may
have) and what is left to compensate.

A lane runs its steps in order. Each step is skipped when its `when` does
not hold, goes to its fallback when its attempts run out on a retriable
failure or timeout (or its breaker is open), and is recorded in `applied`
once it succeeded or may have (a timeout, `outcome_unknown`, a command
still in flight when the group fails). Compensation pops `applied`.

Nothing here does I/O; the functions change the `Run`'s instance and record
commands and history on it, like the machine's callbacks do.
"""

from __future__ import annotations

import random
from typing import Any, Literal, Protocol

import msgspec

from statemachines.dsl import Await, ForEach, Node, Parallel, Saga, Step, breaker_key
from statemachines.messages import OUTCOME_UNKNOWN, RETRIED_ALWAYS, Action, Command, ErrorInfo, Reply


class PayloadError(Exception):
    """A step's payload builder (or guard, or items) raised: a bug in the saga definition."""


class Run(Protocol):
    """What lanes need of `statemachines.run.Run` (which imports this module)."""

    saga: Saga
    inst: Any
    now: float
    state: str
    commands: list[Command]
    open_breakers: frozenset[str]
    breaker_results: list[tuple[str, bool]]
    resume_state: str | None
    follow: str | None
    follow_detail: str

    def message_id(self) -> str: ...

    def note(self, event: str, step: str, action: Action, attempt: int, detail: str = "") -> None: ...


LaneState = Literal["pending", "running", "done", "failed", "compensating", "compensated", "stuck"]
# Why a group ended up with no command to send for one of its steps.
BREAKER_OPEN = "breaker_open"
CONFLICTING_RESULT = "conflicting_result"


class Lane(msgspec.Struct, kw_only=True):
    """One branch (or item) of a group: where it is, and what it applied."""

    key: str
    # The declared steps of the branch, in order (one for an item or a guarded step).
    steps: list[str]
    position: int = 0
    # The step being run: the declared one, or its fallback.
    step: str | None = None
    action: Action = "do"
    attempt: int = 0
    awaiting: str | None = None
    waiting: Literal["reply", "backoff"] | None = None
    due_at: float | None = None
    # When its awaited command went out: the step's latency is measured from it.
    sent_at: float | None = None
    maybe_applied: bool = False
    state: LaneState = "pending"
    # Steps that succeeded or may have applied, in the order they did: compensation pops it.
    applied: list[str] = []
    # What this lane's replies set in the saga data (a branch may not overwrite another's).
    data: dict[str, Any] = {}
    error: ErrorInfo | None = None
    # A ForEach item: its index in the list and the element itself.
    index: int | None = None
    item: Any = None


def wire_step(lane: Lane, step: str) -> str:
    """The step name a command carries: a ForEach item's is `<step>-<index>`, one per item."""
    return step if lane.index is None else f"{step}-{lane.index}"


def counted_failure(step: Step, code: str | None) -> bool:
    """Whether a failure says the participant is unwell (a breaker counts it), not that it refused."""
    if code is None or code in RETRIED_ALWAYS:
        return True
    return step.retry.retry_on is not None and code in step.retry.retry_on


def _scope(run: Run, lane: Lane) -> dict[str, Any]:
    data = dict(run.inst.data)
    if lane.index is not None:
        data["item"] = lane.item
        data["index"] = lane.index
    return data


def _entry(run: Run, lane: Lane, event: str, step: str | None = None, detail: str = "") -> None:
    run.note(event, wire_step(lane, step or lane.step or lane.steps[0]), lane.action, lane.attempt, detail)


def _lanes(run: Run, node: Node) -> list[Lane]:
    found: list[Lane] = run.inst.groups[node.name]
    return found


# Entering a group's states


def enter(run: Run, node: Node, action: str) -> None:
    """The machine entered `node`'s forward or compensating state."""
    inst = run.inst
    index = run.saga.steps.index(node)
    inst.step = node.name
    inst.action = "do" if action == "do" else "compensate"
    inst.attempt = 0
    inst.awaiting = inst.waiting = inst.due_at = None
    inst.maybe_applied = False
    pivot = run.saga.pivot_index
    if action != "do" or (pivot is not None and index > pivot):
        inst.deadline = None
    resuming = run.resume_state is not None
    if action == "do":
        if resuming and node.name in inst.groups:
            for lane in _lanes(run, node):
                if lane.state in ("running", "failed") and lane.step is not None:
                    lane.state = "running"
                    lane.error = None
                    _emit(run, node, lane, lane.attempt + 1 if lane.waiting == "reply" else 1)
            pump(run, node)
            return
        if isinstance(node, Parallel):
            lanes = [Lane(key=branch[0].name, steps=[s.name for s in branch]) for branch in node.branches]
        elif isinstance(node, ForEach):
            items = inst.data.get(node.items)
            if not isinstance(items, list):
                raise PayloadError(f"ForEach {node.name!r} needs a list at data[{node.items!r}], got {items!r}")
            lanes = [Lane(key=str(i), steps=[node.step.name], index=i, item=item) for i, item in enumerate(items)]
        else:
            assert isinstance(node, Step)
            lanes = [Lane(key=node.name, steps=[node.name])]
        inst.groups = {**inst.groups, node.name: lanes}
        pump(run, node)
        return
    if isinstance(node, Await):
        # Entered only from a later step's failure, so the signal had arrived.
        assert node.compensation is not None
        name = node.compensation.name
        if not (resuming and node.name in inst.groups):
            inst.groups = {**inst.groups, node.name: [Lane(key=name, steps=[name], applied=[name], state="done")]}
    for lane in _lanes(run, node):
        if resuming and lane.state in ("compensating", "stuck") and lane.step is not None:
            lane.state = "compensating"
            lane.error = None
            _emit(run, node, lane, 1)
        elif lane.action == "do":
            _begin_undo(run, node, lane)
    settle(run, node)


def pump(run: Run, node: Node) -> None:
    """Start pending lanes while the group's concurrency allows, then see whether it ended."""
    lanes = _lanes(run, node)
    limit = node.max_concurrency if isinstance(node, ForEach) else len(lanes)
    for lane in lanes:
        if not _failed(lanes) and lane.state == "pending" and sum(x.state == "running" for x in lanes) < limit:
            lane.state = "running"
            _advance(run, node, lane)
    settle(run, node)


def _failed(lanes: list[Lane]) -> bool:
    return any(lane.state == "failed" for lane in lanes)


def settle(run: Run, node: Node) -> None:
    """Fire the group's outcome on the machine once every lane has one."""
    inst = run.inst
    lanes = _lanes(run, node)
    if inst.action == "do":
        failed = [lane for lane in lanes if lane.state == "failed"]
        if failed:
            inst.error = failed[0].error
            run.follow = "failed"
            run.follow_detail = f"{failed[0].error.code}: {failed[0].error.message}" if failed[0].error else ""
        elif all(lane.state == "done" for lane in lanes):
            if isinstance(node, ForEach):
                inst.data = {**inst.data, node.name: [lane.data for lane in lanes]}
            inst.error = None
            run.follow = "succeeded"
    else:
        stuck = [lane for lane in lanes if lane.state == "stuck"]
        if stuck:
            # Stuck means nothing more is sent: keep each lane's place for a resume.
            if all(lane.state in ("stuck", "compensated") for lane in lanes):
                inst.error = stuck[0].error or inst.error
                run.follow = "failed"
        elif all(lane.state == "compensated" for lane in lanes):
            run.follow = "succeeded"


# One lane


def _advance(run: Run, node: Node, lane: Lane) -> None:
    """Run the lane's next step whose `when` holds; past the last, the lane is done."""
    while lane.position < len(lane.steps):
        step = run.saga.step(lane.steps[lane.position])
        try:
            runs = step.runs(_scope(run, lane))
        except Exception as exc:
            raise PayloadError(f"when of step {step.name!r} could not be evaluated: {exc!r}") from exc
        if runs:
            _start(run, node, lane, step)
            return
        _entry(run, lane, "skipped", step.name, f"when {step.guard_label} does not hold")
        lane.position += 1
    lane.state = "done"
    lane.step = None
    lane.awaiting = lane.waiting = lane.due_at = None


def _start(run: Run, node: Node, lane: Lane, step: Step) -> None:
    key = breaker_key(run.saga, step.name)
    lane.step = step.name
    lane.action = "do"
    lane.maybe_applied = False
    if key is not None and key in run.open_breakers:
        fallback = step.fallback
        _entry(run, lane, "breaker_open", step.name, f"{key} is open")
        if fallback is not None:
            _start(run, node, lane, fallback)
            return
        _fail(run, lane, ErrorInfo(BREAKER_OPEN, f"circuit breaker {key} is open"))
        return
    _emit(run, node, lane, 1)


def _emit(run: Run, node: Node, lane: Lane, attempt: int) -> None:
    assert lane.step is not None
    step = run.saga.step(lane.step)
    lane.attempt = attempt
    try:
        payload = step.build_payload(_scope(run, lane))
    except Exception as exc:
        raise PayloadError(f"payload of step {step.name!r} could not be built: {exc!r}") from exc
    command = step.command if lane.action == "do" else step.undo_command
    assert command is not None
    lane.awaiting = run.message_id()
    lane.waiting = "reply"
    lane.sent_at = run.now
    lane.due_at = run.now + step.timeout
    run.commands.append(
        Command(
            message_id=lane.awaiting,
            saga_id=run.inst.saga_id,
            saga_type=run.inst.saga_type,
            step=wire_step(lane, step.name),
            action=lane.action,
            command=command,
            attempt=attempt,
            payload=payload,
            reply_to="",
            deadline=lane.due_at,
        )
    )


def _fail(run: Run, lane: Lane, error: ErrorInfo) -> None:
    lane.state = "failed"
    lane.error = error
    lane.awaiting = lane.waiting = lane.due_at = None


def _begin_undo(run: Run, node: Node, lane: Lane) -> None:
    """Turn a lane around: what it applied, may have, or has in flight is compensated, latest first."""
    # Still in flight, or an attempt timed out: it may have applied. A
    # compensation that overtakes its action is answered by the SDK.
    in_flight = lane.state == "running" and lane.action == "do" and (lane.waiting == "reply" or lane.maybe_applied)
    if in_flight and lane.step is not None and lane.applied[-1:] != [lane.step]:
        lane.applied.append(lane.step)
    lane.awaiting = lane.waiting = lane.due_at = None
    lane.action = "compensate"
    _next_undo(run, node, lane)


def _next_undo(run: Run, node: Node, lane: Lane) -> None:
    while lane.applied:
        name = lane.applied.pop()
        if run.saga.step(name).undo_command is not None:
            lane.step = name
            lane.state = "compensating"
            _emit(run, node, lane, 1)
            return
    lane.state = "compensated"
    lane.step = None
    lane.awaiting = lane.waiting = lane.due_at = None


def _policy_retries(run: Run, lane: Lane, step: Step, code: str | None) -> bool:
    policy = step.retry if lane.action == "do" else step.compensation_retry
    if not policy.retries(lane.attempt, code):
        return False
    spread = random.Random(f"{run.inst.saga_id}:{lane.key}:{lane.step}:{lane.action}:{lane.attempt}").random()
    delay = policy.delay(lane.attempt, spread)
    if delay <= 0:
        lane.awaiting = None
        return True
    lane.awaiting = None
    lane.waiting = "backoff"
    lane.due_at = run.now + delay
    return True


def _failure(run: Run, node: Node, lane: Lane, error: ErrorInfo, code: str | None, event: str) -> None:
    """The lane's step failed (code) or timed out (code None): retry, fall back, or fail the lane."""
    assert lane.step is not None
    step = run.saga.step(lane.step)
    _entry(run, lane, event, detail=f"{error.code}: {error.message}")
    if _policy_retries(run, lane, step, code):
        if lane.waiting != "backoff":
            _emit(run, node, lane, lane.attempt + 1)
        return
    if lane.action == "compensate":
        lane.state = "stuck"
        lane.error = error
        lane.awaiting = lane.waiting = lane.due_at = None
        settle(run, node)
        return
    if lane.maybe_applied:
        lane.applied.append(step.name)
    primary = run.saga.step(lane.steps[lane.position])
    if step is primary and step.fallback is not None and counted_failure(step, code):
        _entry(run, lane, "fallback", step.fallback.name, f"{step.name} gave up ({error.code})")
        _start(run, node, lane, step.fallback)
        if lane.state == "failed":
            settle(run, node)
        return
    _fail(run, lane, error)
    settle(run, node)


def on_reply(run: Run, node: Node, lane: Lane, reply: Reply) -> None:
    assert lane.step is not None
    step = run.saga.step(lane.step)
    key = breaker_key(run.saga, step.name) if lane.action == "do" else None
    if reply.outcome == "success":
        if key is not None:
            run.breaker_results.append((key, True))
        _entry(run, lane, "succeeded")
        lane.awaiting = lane.waiting = lane.due_at = None
        if lane.action == "compensate":
            _next_undo(run, node, lane)
            settle(run, node)
            return
        lane.applied.append(step.name)
        lane.maybe_applied = False
        # decide checked the reply data may be taken (Step.merge) before it got here.
        if isinstance(node, ForEach):
            lane.data = step.merge(lane.data, reply.data)
        else:
            clash = _clash(run, node, lane, reply.data)
            if clash is not None:
                _fail(run, lane, ErrorInfo(CONFLICTING_RESULT, clash))
                settle(run, node)
                return
            run.inst.data = step.merge(run.inst.data, reply.data)
            lane.data = {**lane.data, **{key: run.inst.data[key] for key in reply.data}}
        lane.position += 1
        _advance(run, node, lane)
        pump(run, node)
        return
    error = reply.error or ErrorInfo("unknown")
    if key is not None and counted_failure(step, error.code):
        run.breaker_results.append((key, False))
    if lane.action == "do" and error.code == OUTCOME_UNKNOWN:
        lane.maybe_applied = True
    _failure(run, node, lane, error, error.code, "failed")


def _clash(run: Run, node: Node, lane: Lane, data: dict[str, Any]) -> str | None:
    for other in _lanes(run, node):
        if other is lane:
            continue
        for key, value in data.items():
            if key in other.data and other.data[key] != value:
                return f"branch {lane.key!r} returned {key!r}, which branch {other.key!r} set to another value"
    return None


def on_due(run: Run, node: Node, lane: Lane) -> None:
    """The lane's timer fired: a backoff ends (resend) or the awaited reply timed out."""
    assert lane.step is not None
    step = run.saga.step(lane.step)
    if lane.waiting == "backoff":
        _entry(run, lane, "resend")
        _emit(run, node, lane, lane.attempt + 1)
        return
    if lane.action == "do":
        lane.maybe_applied = True
        key = breaker_key(run.saga, step.name)
        if key is not None:
            run.breaker_results.append((key, False))
    error = ErrorInfo(
        "timeout", f"no reply to attempt {lane.attempt} of {wire_step(lane, step.name)} within {step.timeout:g}s"
    )
    _failure(run, node, lane, error, None, "timed_out")

"""decide(): one event applied to one saga, with no I/O and no clock.

(saga definition, stored instance, event, now) -> Decision: the new
instance, the commands to send, the lifecycle events to publish and the
history to append. The orchestrator and the test harness both call it; the
first persists and publishes what it returns, the second keeps it in memory.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from transitions import MachineError

from statemachines import lanes
from statemachines.compiler import CompiledSaga, compiled
from statemachines.dsl import Await, ForEach, ReplyDataError, Saga, lane_node
from statemachines.instance import HistoryEntry, SagaInstance
from statemachines.messages import (
    FINAL,
    OUTCOME_UNKNOWN,
    TERMINAL,
    UNPUBLISHABLE,
    Command,
    ErrorInfo,
    Reply,
    SagaEvent,
    start_digest,
)
from statemachines.run import PayloadError, Run


class Start(msgspec.Struct, kw_only=True):
    saga_id: str
    # None: the start carried no data, refused if the saga declares a data type.
    data: dict[str, Any] | None = {}
    reply_to: str | None = None
    # The type the start named (None: the saga's own); an id that exists as
    # another type, or with other data, is a conflict.
    saga_type: str | None = None


class Due(msgspec.Struct):
    """A deadline of the saga has (perhaps) passed; decide checks against `now`."""


class Resume(msgspec.Struct):
    """An operator retries a stuck saga from the step it is stuck in."""


class Abort(msgspec.Struct):
    """An operator forces a running saga to compensate."""

    reason: str = "compensation forced by an operator"


class RefusedReply(msgspec.Struct):
    """A reply for the saga could not be accepted (it was dead-lettered): say why in its history."""

    reason: str
    # The command it claimed to answer, where that could be read.
    in_reply_to: str | None = None


class Signal(msgspec.Struct, kw_only=True):
    """An outside event for a saga parked in `Await(name)`; `signal_id` makes it idempotent."""

    name: str
    signal_id: str
    data: dict[str, Any] = {}


class Unpublishable(msgspec.Struct):
    """The saga's outbox can never be published (the broker or the client refuses it for good): park it."""

    reason: str


Event = Start | Reply | Due | Resume | Abort | RefusedReply | Signal | Unpublishable


@dataclass
class Decision:
    instance: SagaInstance | None
    commands: list[Command] = field(default_factory=list)
    events: list[SagaEvent] = field(default_factory=list)
    history: list[HistoryEntry] = field(default_factory=list)
    # False when the event changed nothing (a duplicate, a stale reply...).
    changed: bool = False
    # Why nothing changed, in words for logs and operators.
    note: str = ""
    # The start was refused (its data does not fit, its id is taken): the
    # code and reason the sender is told.
    refusal: ErrorInfo | None = None
    # Only a note on the saga changed, not where it is: its outbox and
    # deadline stay as they are.
    keeps_outbox: bool = False
    # For the edge's circuit breakers: each key that saw a success (True) or
    # a counted failure (False: a timeout or a retriable failure).
    breaker_results: list[tuple[str, bool]] = field(default_factory=list)
    # A signal was not applied: "not_waiting", "unknown_signal" or "finished".
    signal_refusal: str | None = None
    # A reply was refused (its data may not be taken, it names another
    # participant): the reason it is dead-lettered with.
    reply_refusal: str | None = None


def new_instance(saga: Saga, saga_id: str) -> SagaInstance:
    return SagaInstance(saga_id=saga_id, saga_type=saga.name, definition_version=saga.version)


def decide(
    saga: Saga,
    instance: SagaInstance | None,
    event: Event,
    now: float,
    open_breakers: frozenset[str] = frozenset(),
) -> Decision:
    """Apply `event` to `instance` (None: the saga does not exist yet) at time `now`.

    `open_breakers` are the breaker keys (see `dsl.breaker_key`) the edge
    holds open: a step behind one is not sent, it goes to its fallback or
    fails fast. A half-open trial is the edge's: it leaves the key out.
    """
    flow = compiled(saga)
    if open_breakers:
        flow = dataclasses.replace(flow, open_breakers=frozenset(open_breakers))
    if isinstance(event, Start):
        digest = start_digest(event.saga_type or saga.name, event.data)
        if instance is not None:
            return _repeated_start(instance, event, digest, now)
        if event.data is None and saga.data is not None:
            why = f"saga {saga.name!r} takes data ({saga.data.__name__}) and the start carries none"
            return Decision(None, note=why, refusal=ErrorInfo("invalid_data", why))
        data = event.data or {}
        if saga.data is not None:
            try:
                data = msgspec.to_builtins(msgspec.convert(data, saga.data))
            except msgspec.ValidationError as exc:
                why = f"data does not fit saga {saga.name!r}: {exc}"
                return Decision(None, note=why, refusal=ErrorInfo("invalid_data", why))
        instance = new_instance(saga, event.saga_id)
        instance.data = dict(data)
        instance.reply_to = event.reply_to
        instance.start_digest = digest
        instance.created_at = now
        instance.deadline = now + saga.deadline if saga.deadline else None
        return _fire(flow, instance, "start", now)
    if instance is None:
        return Decision(None, note="unknown saga")
    if isinstance(event, Signal):
        return _apply_signal(flow, instance, event, now)
    if isinstance(event, Reply):
        return _apply_reply(flow, instance, event, now)
    if isinstance(event, Due):
        return _apply_due(flow, instance, now)
    if isinstance(event, RefusedReply):
        return _refused_reply(instance, event, now)
    if isinstance(event, Unpublishable):
        return _unpublishable(flow, instance, event, now)
    if isinstance(event, Resume):
        if instance.status != "stuck":
            return Decision(instance, note=f"saga is {instance.status}, not stuck: nothing to resume")
        return _fire(flow, instance, "resume", now)
    if instance.status == "running" or (instance.status == "stuck" and instance.action == "do"):
        # The reason travels with the compensating/compensated events, like a
        # failure's error does; a refused abort leaves the instance as it was.
        aborted = msgspec.structs.replace(instance, error=ErrorInfo("aborted", event.reason))
        decision = _fire(flow, aborted, "abort", now, detail=event.reason)
        if decision.changed:
            return decision
        # Abort applies in every forward state up to the pivot; refused, the saga is past it.
        pivot = saga.pivot_index
        if pivot is None:
            return Decision(instance, note=decision.note)
        return Decision(
            instance,
            note=f"saga is past its pivot {saga.steps[pivot].name!r}: it only moves forward, so abort cannot "
            "compensate it",
        )
    return Decision(instance, note=f"saga is {instance.status}: nothing to compensate")


def _repeated_start(inst: SagaInstance, start: Start, digest: str, now: float) -> Decision:
    """The same start again is the same saga (an idempotency key); other data under its id is a conflict."""
    if not inst.start_digest or inst.start_digest == digest:
        if start.reply_to and start.reply_to != inst.reply_to and inst.status not in TERMINAL:
            # Its sender is back with a new reply queue (the old one went with its connection).
            moved = msgspec.structs.replace(inst, rev=inst.rev + 1, updated_at=now, reply_to=start.reply_to)
            return Decision(
                moved, changed=True, keeps_outbox=True, note="duplicate start: its outcome goes to the new reply_to"
            )
        return Decision(inst, note="duplicate start: the saga exists already")
    other_type = start.saga_type is not None and start.saga_type != inst.saga_type
    how = f"as a {inst.saga_type!r} saga" if other_type else "with other data"
    why = f"saga {inst.saga_id!r} exists already, started {how}: start a different saga under a new id"
    decision = _unchanged(inst, now, "refused_start", why)
    decision.refusal = ErrorInfo("conflict", why)
    return decision


def _refused_reply(inst: SagaInstance, refused: RefusedReply, now: float) -> Decision:
    """A refused reply goes into the history; if it answered the awaited command, its timeout will say so."""
    decision = _unchanged(inst, now, "refused_reply", refused.reason)
    if inst.awaiting is not None and refused.in_reply_to in (None, inst.awaiting):
        decision.instance = msgspec.structs.replace(
            inst, rev=inst.rev + 1, updated_at=now, refused_reply=refused.reason
        )
        decision.changed = decision.keeps_outbox = True
    return decision


def _refuse_reply(inst: SagaInstance, reply: Reply, why: str, now: float) -> Decision:
    """A reply the saga may not take: the history says why, and it is dead-lettered like a malformed one."""
    reason = f"reply from {reply.participant or 'a participant'} refused: {why}"
    decision = _refused_reply(inst, RefusedReply(reason, reply.in_reply_to), now)
    decision.reply_refusal = reason
    return decision


def _reply_problem(flow: CompiledSaga, reply: Reply, data: dict[str, Any]) -> str | None:
    """Why the awaited `reply` may not be taken into `data` (None: it may)."""
    try:
        step = flow.saga.step(reply.step)
    except KeyError:
        return None
    if reply.participant != step.participant:
        return f"step {reply.step!r} is answered by {step.participant!r}, not by {reply.participant or 'no name'!r}"
    if reply.outcome == "success":
        try:
            step.merge(data, reply.data)
        except ReplyDataError as exc:
            return exc.reason
    return None


def _unpublishable(flow: CompiledSaga, inst: SagaInstance, event: Unpublishable, now: float) -> Decision:
    """A running saga whose messages cannot be sent goes stuck with the reason; a finished one keeps a note."""
    why = f"its messages cannot be published: {event.reason}"
    if inst.status not in TERMINAL and inst.status != "new":
        stuck = msgspec.structs.replace(inst, error=ErrorInfo(UNPUBLISHABLE, why))
        decision = _fire(flow, stuck, "fault", now, detail=why)
        if decision.changed:
            return decision
    return _unchanged(inst, now, "parked_outbox", why)


def _in_group(flow: CompiledSaga, inst: SagaInstance) -> bool:
    """Whether the saga is in a group node's state, where lanes take the replies and timers."""
    if inst.step is None or inst.status in TERMINAL or inst.status == "new":
        return False
    return inst.step in inst.groups or any(
        node.name == inst.step and lane_node(flow.saga, node) for node in flow.saga.steps
    )


def _group_reply(flow: CompiledSaga, inst: SagaInstance, reply: Reply, now: float) -> Decision:
    lane = next((lane for lane in inst.groups.get(inst.step or "", ()) if lane.awaiting == reply.in_reply_to), None)
    if lane is None or lanes.wire_step(lane, lane.step or "") != reply.step or reply.action != lane.action:
        return _unchanged(
            inst, now, "ignored_reply", f"{reply.outcome} reply to {reply.in_reply_to}: duplicate or late"
        )
    node = flow.saga.node(inst.step or "")
    key = lane.key
    if isinstance(node, ForEach):
        base = lane.data
    else:
        # What other branches set is the clash check's to judge (CONFLICTING_RESULT).
        others = {k for other in inst.groups.get(node.name, ()) if other is not lane for k in other.data}
        base = {k: v for k, v in inst.data.items() if k not in others}
    problem = _reply_problem(flow, reply, base)
    if problem is not None:
        return _refuse_reply(inst, reply, problem, now)

    def work(run: Run) -> None:
        found = next(x for x in run.inst.groups[node.name] if x.key == key)
        lanes.on_reply(run, node, found, reply)

    return _fire(flow, inst, None, now, work=work)


def _apply_signal(flow: CompiledSaga, inst: SagaInstance, signal: Signal, now: float) -> Decision:
    awaits = {node.name for node in flow.saga.steps if isinstance(node, Await)}
    if signal.signal_id in inst.signals:
        return Decision(inst, note=f"signal {signal.signal_id!r} was applied already")
    refusal = None
    if inst.status in FINAL:
        refusal = "finished"
    elif signal.name not in awaits:
        refusal = "unknown_signal"
    elif inst.step != signal.name or inst.waiting != "signal" or inst.status != "running":
        refusal = "not_waiting"
    if refusal is not None:
        why = {
            "finished": f"the saga is {inst.status}",
            "unknown_signal": f"saga type {flow.saga.name!r} awaits no signal {signal.name!r}",
            "not_waiting": f"the saga is at {inst.state!r}, not waiting for {signal.name!r}",
        }[refusal]
        decision = _unchanged(inst, now, "refused_signal", f"signal {signal.name!r} ({signal.signal_id}): {why}")
        decision.signal_refusal = refusal
        return decision
    merged = msgspec.structs.replace(
        inst, data={**inst.data, **signal.data}, signals=[*inst.signals, signal.signal_id][-100:]
    )
    return _fire(flow, merged, "signal", now, detail=f"signal {signal.signal_id}")


def _apply_reply(flow: CompiledSaga, inst: SagaInstance, reply: Reply, now: float) -> Decision:
    if _in_group(flow, inst):
        return _group_reply(flow, inst, reply, now)
    if reply.in_reply_to != inst.awaiting or reply.step != inst.step or reply.action != inst.action:
        why = "duplicate or late" if inst.awaiting is None else f"the saga awaits {inst.awaiting}"
        return _unchanged(inst, now, "ignored_reply", f"{reply.outcome} reply to {reply.in_reply_to}: {why}")
    problem = _reply_problem(flow, reply, inst.data)
    if problem is not None:
        return _refuse_reply(inst, reply, problem, now)
    if reply.outcome == "success":
        # A step that finally succeeded leaves no error behind; a compensation
        # keeps the error that made the saga compensate.
        error = None if inst.action == "do" else inst.error
        data = flow.saga.step(reply.step).merge(inst.data, reply.data)
        inst = msgspec.structs.replace(inst, data=data, error=error)
        return _fire(flow, inst, "succeeded", now)
    error = reply.error or ErrorInfo("unknown")
    uncertain = inst.maybe_applied or (error.code == OUTCOME_UNKNOWN and inst.action == "do")
    inst = msgspec.structs.replace(inst, error=error, maybe_applied=uncertain)
    return _fire(flow, inst, "failed", now, code=error.code, detail=f"{error.code}: {error.message}")


def _apply_due(flow: CompiledSaga, inst: SagaInstance, now: float) -> Decision:
    if inst.status in TERMINAL:
        return Decision(inst, note=f"saga is {inst.status}")
    if inst.deadline is not None and now >= inst.deadline and inst.status == "running":
        error = ErrorInfo("expired", f"saga deadline passed at step {inst.step!r}")
        inst = msgspec.structs.replace(inst, error=error)
        return _fire(flow, inst, "expired", now, detail=error.message)
    if _in_group(flow, inst):
        due = [
            lane.key for lane in inst.groups.get(inst.step or "", ()) if lane.due_at is not None and lane.due_at <= now
        ]
        if not due:
            return Decision(inst, note="nothing is due yet")
        node = flow.saga.node(inst.step or "")
        group_state = inst.state

        def work(run: Run) -> None:
            for key in due:
                if run.follow is not None or run.state != group_state:
                    break
                lane = next(x for x in run.inst.groups[node.name] if x.key == key)
                if lane.due_at is not None and lane.due_at <= now:
                    lanes.on_due(run, node, lane)

        return _fire(flow, inst, None, now, work=work)
    if inst.due_at is None or now < inst.due_at:
        return Decision(inst, note="nothing is due yet")
    if inst.waiting == "signal":
        node = flow.saga.node(inst.step or "")
        assert isinstance(node, Await)
        error = ErrorInfo("timeout", f"no signal {node.name!r} within {node.timeout:g}s")
        inst = msgspec.structs.replace(inst, error=error)
        return _fire(flow, inst, "timed_out", now, detail=error.message)
    if inst.waiting == "backoff":
        return _fire(flow, inst, "resend", now)
    step = flow.saga.step(inst.step or "")
    message = f"no reply to attempt {inst.attempt} within {step.timeout:g}s"
    if inst.refused_reply:
        message += f"; a reply to it was refused ({inst.refused_reply})"
    error = ErrorInfo("timeout", message)
    inst = msgspec.structs.replace(inst, error=error, maybe_applied=inst.maybe_applied or inst.action == "do")
    return _fire(flow, inst, "timed_out", now, detail=error.message)


def _unchanged(inst: SagaInstance, now: float, event: str, detail: str) -> Decision:
    entry = HistoryEntry(
        at=now,
        event=event,
        source=inst.state,
        dest=inst.state,
        step=inst.step,
        action=inst.action,
        attempt=inst.attempt,
        detail=detail,
    )
    return Decision(inst, history=[entry], note=detail)


# The groups are copied through JSON, as they are stored: thirty times cheaper than copy.deepcopy.
_groups_json = msgspec.json.Encoder()
_groups = msgspec.json.Decoder(dict[str, list[lanes.Lane]])


def _copy_groups(groups: dict[str, list[lanes.Lane]]) -> dict[str, list[lanes.Lane]]:
    try:
        return _groups.decode(_groups_json.encode(groups))
    except (TypeError, ValueError, msgspec.EncodeError, msgspec.DecodeError):
        return copy.deepcopy(groups)  # data a test harness holds that JSON cannot (Redis only ever holds JSON)


def _fire(
    flow: CompiledSaga,
    old: SagaInstance,
    trigger: str | None,
    now: float,
    code: str | None = None,
    detail: str = "",
    work: Callable[[Run], None] | None = None,
) -> Decision:
    """Fire `trigger` on the machine (or do `work` inside the current group), then what follows from it."""
    inst = msgspec.structs.replace(
        old, rev=old.rev + 1, updated_at=now, groups=_copy_groups(old.groups) if old.groups else {}
    )
    run = Run(flow.saga, inst, now, code, flow.open_breakers)
    if old.status == "stuck":
        assert inst.step is not None
        run.resume_state = flow.state_for(flow.saga.index(inst.step), inst.action)
    # The model is fired through the machine's Event directly: add_model would
    # bind every trigger and state helper onto it for one use (most of
    # decide's cost), and nothing here needs those helpers.
    events = flow.machine.events
    history: list[HistoryEntry] = []

    def fire(trigger: str, detail: str) -> bool:
        before = (inst.step, inst.action, inst.attempt, run.state)
        mark = len(run.history)
        if not events[trigger].trigger(run):
            return False
        # The entry names the step the event was about: a reply's or a timeout's
        # is the step the saga was in; a (re)send's is the step it sends to.
        step, action, attempt = (
            (inst.step, inst.action, inst.attempt) if trigger in ("start", "resend", "resume", "fault") else before[:3]
        )
        entry = HistoryEntry(
            at=now,
            event=trigger,
            source=before[3],
            dest=run.state,
            step=step,
            action=action,
            attempt=attempt,
            detail=detail,
        )
        run.history.insert(mark, entry)
        return True

    def cascade() -> None:
        # A group that ended inside a callback (all skipped, nothing to
        # compensate, a breaker failing fast) moves the machine on here.
        for _ in range(4 * len(flow.saga.steps) + 8):
            if run.follow is None:
                return
            follow, why = run.follow, run.follow_detail
            run.follow, run.follow_detail = None, ""
            run.resume_state = None
            fire(follow, why)
        raise AssertionError("a group kept ending without the machine moving")

    try:
        if work is not None:
            run.state = inst.state
            work(run)
            fired = True
        else:
            assert trigger is not None
            fired = fire(trigger, detail)
        if fired:
            cascade()
    except MachineError:
        return Decision(old, note=f"{trigger!r} does not apply in state {old.state!r}")
    except PayloadError as exc:
        inst.error = ErrorInfo("payload_error", str(exc))
        run.commands.clear()
        run.follow = None
        run.resume_state = None
        fired = fire("fault", str(exc))
    if not fired:
        return Decision(old, note=f"no transition for {trigger!r} in state {old.state!r}")
    history = run.history
    inst.state = run.state
    inst.status = flow.status_of[run.state]
    lifecycle = []
    if inst.status != old.status:
        status = "running" if inst.status == "new" else inst.status
        error = inst.error if inst.status in ("stuck", "compensating", "compensated") else None
        lifecycle.append(
            SagaEvent(
                saga_id=inst.saga_id,
                saga_type=inst.saga_type,
                status=status,
                state=inst.state,
                at=now,
                data=inst.data if inst.status in TERMINAL else {},
                step=inst.step,
                error=error,
            )
        )
    return Decision(
        inst,
        commands=run.commands,
        events=lifecycle,
        history=history,
        changed=True,
        breaker_results=run.breaker_results,
    )

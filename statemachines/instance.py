"""What is stored of one running saga, and one line of its history."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from statemachines.lanes import Lane
from statemachines.messages import TERMINAL, Action, ErrorInfo, SagaEvent, Status

# "signal": parked in an Await until its signal or its timeout.
Waiting = Literal["reply", "backoff", "signal"]


class SagaInstance(msgspec.Struct, kw_only=True):
    saga_id: str
    saga_type: str
    definition_version: int
    state: str = "new"
    status: Status = "new"
    # Bumped by every transition; the store writes only over the rev it read.
    rev: int = 0
    data: dict[str, Any] = {}
    step: str | None = None
    action: Action = "do"
    attempt: int = 0
    # message_id of the command whose reply the saga waits for; any other
    # reply is a duplicate, stale or late, and changes nothing.
    awaiting: str | None = None
    waiting: Waiting | None = None
    # When the awaited reply times out, or the backoff before a resend ends.
    due_at: float | None = None
    # An attempt of the current step timed out, so its action may have
    # happened anyway: the step is compensated if the saga compensates.
    maybe_applied: bool = False
    # Whole-saga deadline, until the pivot succeeds.
    deadline: float | None = None
    error: ErrorInfo | None = None
    reply_to: str | None = None
    # What a repeated start must match to be this saga's (messages.start_digest); "" for sagas stored before.
    start_digest: str = ""
    # A reply to the awaited command was refused (dead-lettered) for this
    # reason: the timeout that follows says so.
    refused_reply: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    # The W3C traceparent of the saga's own span, when tracing is on: every
    # later span of the saga joins its trace, in whichever process.
    trace: str | None = None
    # Per group node (Parallel, ForEach, a guarded or fallback step): its
    # lanes, kept until the saga ends since a later failure compensates them.
    groups: dict[str, list[Lane]] = {}
    # Ids of the signals applied: a repeat is acknowledged, not applied again.
    signals: list[str] = []

    @property
    def wake_at(self) -> float | None:
        """The earliest time the saga needs a `Due` event, if any."""
        times = [t for t in (self.due_at, self.deadline) if t is not None]
        if self.step in self.groups and self.status not in TERMINAL:
            times.extend(lane.due_at for lane in self.groups[self.step] if lane.due_at is not None)
        return min(times) if times else None


def outcome_of(inst: SagaInstance) -> SagaEvent:
    """The event that tells where the saga stands now (its outcome, once it ended)."""
    return SagaEvent(
        saga_id=inst.saga_id,
        saga_type=inst.saga_type,
        status=inst.status,
        state=inst.state,
        at=inst.updated_at,
        data=inst.data,
        step=inst.step,
        error=inst.error,
    )


class HistoryEntry(msgspec.Struct, kw_only=True):
    at: float
    event: str
    source: str
    dest: str
    step: str | None = None
    action: Action | None = None
    attempt: int = 0
    detail: str = ""

"""The model a trigger is fired on: one saga instance, and what the machine's callbacks decide for it.

The compiled machine's callbacks call these methods; they change the
instance and record the commands to send, and never do I/O.
"""

from __future__ import annotations

import random

from statemachines import lanes
from statemachines.dsl import Await, Retry, Saga, Step
from statemachines.instance import HistoryEntry, SagaInstance
from statemachines.lanes import PayloadError
from statemachines.messages import Action, Command

__all__ = ["PayloadError", "Run"]


class Run:
    """The model a trigger is fired on: the instance plus what callbacks decide."""

    def __init__(
        self,
        saga: Saga,
        inst: SagaInstance,
        now: float,
        code: str | None = None,
        open_breakers: frozenset[str] = frozenset(),
    ) -> None:
        self.saga = saga
        self.inst = inst
        self.now = now
        # The failure code of the event being applied; None for a timeout.
        self.code = code
        self.commands: list[Command] = []
        self.resume_state: str | None = None
        self.state: str = inst.state
        self.open_breakers = open_breakers
        # (breaker key, success?) for each reply or timeout a breaker counts.
        self.breaker_results: list[tuple[str, bool]] = []
        # What happened inside a group (a branch's reply, a skipped step...):
        # history entries that do not move the machine.
        self.history: list[HistoryEntry] = []
        # A trigger a callback wants fired next: a group that has ended.
        self.follow: str | None = None
        self.follow_detail = ""
        self._sent = 0

    def message_id(self) -> str:
        """A unique id per command: the rev, and a counter when one decision sends several."""
        self._sent += 1
        base = f"{self.inst.saga_id}:{self.inst.rev}"
        return base if self._sent == 1 else f"{base}.{self._sent}"

    def note(self, event: str, step: str, action: Action, attempt: int, detail: str = "") -> None:
        self.history.append(
            HistoryEntry(
                at=self.now,
                event=event,
                source=self.state,
                dest=self.state,
                step=step,
                action=action,
                attempt=attempt,
                detail=detail,
            )
        )

    def enter_group(self, index: int, action: str) -> None:
        lanes.enter(self, self.saga.steps[index], action)

    def wait_signal(self, index: int) -> None:
        """Enter an Await: park until its signal, or its timeout."""
        node = self.saga.steps[index]
        assert isinstance(node, Await) and node.timeout is not None
        inst = self.inst
        inst.step = node.name
        inst.action = "do"
        inst.attempt = 0
        inst.awaiting = None
        inst.maybe_applied = False
        inst.waiting = "signal"
        inst.due_at = self.now + node.timeout
        pivot = self.saga.pivot_index
        if pivot is not None and index > pivot:
            inst.deadline = None

    def _step(self) -> Step:
        assert self.inst.step is not None
        return self.saga.step(self.inst.step)

    def _policy(self) -> Retry:
        step = self._step()
        return step.retry if self.inst.action == "do" else step.compensation_retry

    def may_retry(self) -> bool:
        return self._policy().retries(self.inst.attempt, self.code)

    def send(self, index: int, action: str) -> None:
        """Enter a step state: the first attempt of its command."""
        inst = self.inst
        inst.step = self.saga.steps[index].name
        inst.action = "do" if action == "do" else "compensate"
        inst.attempt = 1
        # Resuming a stuck step keeps what is known of its earlier attempts:
        # one that timed out may still have happened.
        if self.resume_state is None:
            inst.maybe_applied = False
        pivot = self.saga.pivot_index
        if action != "do" or (pivot is not None and index > pivot):
            inst.deadline = None
        self._emit()

    def send_again(self) -> None:
        self.inst.attempt += 1
        self._emit()

    def _emit(self) -> None:
        inst = self.inst
        step = self._step()
        try:
            payload = step.build_payload(inst.data)
        except Exception as exc:
            raise PayloadError(f"payload of step {step.name!r} could not be built: {exc!r}") from exc
        command = step.command if inst.action == "do" else step.compensation
        assert command is not None
        inst.awaiting = self.message_id()
        inst.refused_reply = None
        inst.waiting = "reply"
        inst.due_at = self.now + step.timeout
        self.commands.append(
            Command(
                message_id=inst.awaiting,
                saga_id=inst.saga_id,
                saga_type=inst.saga_type,
                step=step.name,
                action=inst.action,
                command=command,
                attempt=inst.attempt,
                payload=payload,
                reply_to="",  # the engine knows the reply queue; decide does not
                deadline=inst.due_at,
            )
        )

    def schedule_retry(self) -> None:
        inst = self.inst
        # Seeded by the attempt itself, so the jitter is random across sagas
        # yet decide stays a pure function.
        spread = random.Random(f"{inst.saga_id}:{inst.step}:{inst.action}:{inst.attempt}").random()
        delay = self._policy().delay(inst.attempt, spread)
        if delay <= 0:
            self.send_again()
            return
        inst.awaiting = None
        inst.waiting = "backoff"
        inst.due_at = self.now + delay

    def finish(self) -> None:
        inst = self.inst
        inst.awaiting = inst.waiting = inst.due_at = inst.deadline = None

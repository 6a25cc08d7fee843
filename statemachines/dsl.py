"""The saga DSL: a saga is a name, a version and an ordered list of steps.

Declarations are checked when they are made, so a typo fails at import time
with one `SagaDefinitionError` naming the saga, the step and the problem,
never later inside a running orchestrator.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from statemachines.messages import RETRIED_ALWAYS
from statemachines.names import name_problem

Payload = Callable[[Mapping[str, Any]], Mapping[str, Any]]

# Saga and step names become routing keys and Redis keys: bounded (names.MAX_NAME).
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")
# Forward states are named after their step, so a step may not take the name
# of a state the compiler makes itself.
RESERVED_NAMES = frozenset({"new", "completed", "compensated", "stuck"})


def _real(value: Any) -> bool:
    """A number that can be compared: not a bool, a string or NaN."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _positive(value: Any) -> bool:
    return _real(value) and value > 0


def _object_type(kind: Any) -> bool:
    """Whether saga data converted to `kind` comes back as a JSON object."""
    try:
        info = msgspec.inspect.type_info(kind)
    except TypeError:
        return False
    if isinstance(info, msgspec.inspect.StructType):
        return not info.array_like
    return isinstance(info, (msgspec.inspect.DictType, msgspec.inspect.TypedDictType, msgspec.inspect.DataclassType))


class SagaDefinitionError(ValueError):
    """A saga declaration is invalid; the message names saga, step and problem."""

    def __init__(self, saga: str, step: str | None, problem: str) -> None:
        self.saga = saga
        self.step = step
        self.problem = problem
        where = f"saga {saga!r}" + (f", step {step!r}" if step is not None else "")
        super().__init__(f"{where}: {problem}")


class Retry:
    """How often a command is sent again, and how long to wait in between.

    The wait before attempt n+1 is `backoff * multiplier**(n-1)`, spread by
    +/- `jitter` (a fraction) and capped at `max_backoff` seconds. A failure
    reply is retried when its error code is in `retry_on` (None: any code);
    a timeout, a failure whose outcome is unknown, or one refused because the
    command's deadline had passed, is always retried while attempts are left,
    because it says nothing about the participant's answer.
    """

    def __init__(
        self,
        attempts: int = 3,
        *,
        backoff: float = 0.5,
        multiplier: float = 2.0,
        max_backoff: float = 30.0,
        jitter: float = 0.1,
        retry_on: Iterable[str] | None = None,
        **unknown: Any,
    ) -> None:
        self.attempts = attempts
        self.backoff = backoff
        self.multiplier = multiplier
        self.max_backoff = max_backoff
        self.jitter = jitter
        # A string is iterable too: retry_on="unavailable" would silently
        # mean the codes "u", "n", "a"... so anything but a collection of
        # codes is kept aside and reported when the saga is declared.
        self.retry_on: frozenset[str] | None = None
        self._bad_retry_on: Any = None
        if retry_on is not None:
            codes = (
                list(retry_on) if isinstance(retry_on, Iterable) and not isinstance(retry_on, (str, bytes)) else None
            )
            if codes is not None and all(isinstance(code, str) and code for code in codes):
                self.retry_on = frozenset(codes)
            else:
                self._bad_retry_on = retry_on
        self.unknown = unknown

    def problems(self) -> list[str]:
        found = [f"unknown retry option {name!r}" for name in sorted(self.unknown)]
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            found.append(f"retry attempts must be an integer of at least 1, got {self.attempts!r}")
        for label, value in (("backoff", self.backoff), ("max_backoff", self.max_backoff)):
            if not _real(value) or value < 0:
                found.append(f"retry {label} must be a number of seconds, not negative, got {value!r}")
        if not _real(self.multiplier) or self.multiplier < 1:
            found.append(f"retry multiplier must be a number of at least 1, got {self.multiplier!r}")
        if not _real(self.jitter) or not 0 <= self.jitter <= 1:
            found.append(f"retry jitter must be a number between 0 and 1, got {self.jitter!r}")
        if self._bad_retry_on is not None:
            found.append(f"retry_on must be a list of error codes, got {self._bad_retry_on!r}")
        return found

    def retries(self, attempt: int, code: str | None) -> bool:
        """Whether attempt number `attempt` may be followed by another one."""
        if attempt >= self.attempts:
            return False
        return code is None or code in RETRIED_ALWAYS or self.retry_on is None or code in self.retry_on

    def delay(self, attempt: int, spread: float) -> float:
        """Seconds to wait after attempt `attempt`; `spread` in [0, 1) places the jitter."""
        base = self.backoff * self.multiplier ** (attempt - 1)
        return max(0.0, min(self.max_backoff, base * (1 + self.jitter * (2 * spread - 1))))

    def __repr__(self) -> str:
        return (
            f"Retry(attempts={self.attempts}, backoff={self.backoff}, multiplier={self.multiplier}, "
            f"max_backoff={self.max_backoff}, jitter={self.jitter}, retry_on={self.retry_on})"
        )


class Step:
    """One step: a command to a participant and, optionally, its compensation.

    `payload` builds the command's payload from the saga data (default: all of
    it). `timeout` is per attempt, in seconds. A step without `compensation`
    cannot be undone; after a succeeded `pivot` the saga only moves forward.
    """

    def __init__(
        self,
        name: str,
        *,
        participant: str,
        command: str,
        compensation: str | None = None,
        payload: Payload | Sequence[str] | None = None,
        timeout: float = 30.0,
        retry: Retry | None = None,
        compensation_retry: Retry | None = None,
        pivot: bool = False,
        **unknown: Any,
    ) -> None:
        self.name = name
        self.participant = participant
        self.command = command
        self.compensation = compensation
        self.payload = payload
        self.timeout = timeout
        self.retry = retry if retry is not None else Retry()
        # Compensations must eventually succeed, so they get a longer budget.
        self.compensation_retry = compensation_retry if compensation_retry is not None else Retry(10, max_backoff=60.0)
        self.pivot = pivot
        self.unknown = unknown

    @property
    def compensable(self) -> bool:
        return self.compensation is not None

    def build_payload(self, data: Mapping[str, Any]) -> dict[str, Any]:
        if self.payload is None:
            return dict(data)
        if callable(self.payload):
            return dict(self.payload(data))
        return {key: data[key] for key in self.payload if key in data}

    def problems(self) -> list[str]:
        found = [f"unknown option {name!r}" for name in sorted(self.unknown)]
        for field in ("participant", "command"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value:
                found.append(f"{field} must be a non-empty string, got {value!r}")
        # The participant names a queue and is a routing key.
        bounds = name_problem(self.participant, "a participant name") if isinstance(self.participant, str) else None
        if self.participant and bounds is not None:
            found.append(bounds)
        if self.compensation is not None and (not isinstance(self.compensation, str) or not self.compensation):
            found.append(f"compensation must be a non-empty string or None, got {self.compensation!r}")
        if not _positive(self.timeout):
            found.append(f"timeout must be a positive number of seconds, got {self.timeout!r}")
        if (
            self.payload is not None
            and not callable(self.payload)
            and (
                isinstance(self.payload, str)
                or not isinstance(self.payload, Iterable)
                or not all(isinstance(k, str) for k in self.payload)
            )
        ):
            found.append("payload must be a callable or a list of data keys")
        for label, policy in (("retry", self.retry), ("compensation_retry", self.compensation_retry)):
            if not isinstance(policy, Retry):
                found.append(f"{label} must be a Retry, got {policy!r}")
            else:
                found.extend(f"{label}: {p}" if not p.startswith("unknown") else p for p in policy.problems())
        return found

    def __repr__(self) -> str:
        return f"Step({self.name!r}, participant={self.participant!r}, command={self.command!r})"


class Saga:
    """A named, versioned, ordered list of steps.

    `data` may be a msgspec Struct type: a start whose data does not convert
    to it is refused. `deadline` (seconds) bounds the whole saga up to its
    pivot: once passed, the saga compensates.
    """

    def __init__(
        self,
        name: str,
        steps: Sequence[Step],
        *,
        version: int = 1,
        data: type | None = None,
        deadline: float | None = None,
        **unknown: Any,
    ) -> None:
        self.name = name
        self.version = version
        self.steps: tuple[Step, ...] = tuple(steps)
        self.data = data
        self.deadline = deadline
        self._validate(unknown)

    def _validate(self, unknown: Mapping[str, Any]) -> None:
        name = self.name if isinstance(self.name, str) else repr(self.name)

        def fail(problem: str, step: str | None = None) -> SagaDefinitionError:
            return SagaDefinitionError(name, step, problem)

        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise fail("a saga name is lower_snake_case letters, digits and underscores, up to 64")
        if unknown:
            raise fail(f"unknown option {sorted(unknown)[0]!r}")
        if isinstance(self.version, bool) or not isinstance(self.version, int) or self.version < 1:
            raise fail(f"version must be a positive integer, got {self.version!r}")
        if self.deadline is not None and not _positive(self.deadline):
            raise fail(f"deadline must be a positive number of seconds, got {self.deadline!r}")
        if self.data is not None and not _object_type(self.data):
            raise fail(f"data must be a type msgspec converts a JSON object to (a Struct, say), got {self.data!r}")
        if not self.steps:
            raise fail("a saga needs at least one step")
        seen: set[str] = set()
        pivot: str | None = None
        for step in self.steps:
            if not isinstance(step, Step):
                raise fail(f"steps must be Step objects, got {step!r}")
            label = step.name if isinstance(step.name, str) else repr(step.name)
            if not isinstance(step.name, str) or not _NAME.fullmatch(step.name):
                raise fail("a step name is lower_snake_case letters, digits and underscores, up to 64", label)
            if step.name in RESERVED_NAMES or step.name.startswith("compensating_"):
                raise fail("this name is taken by a state the compiler makes", label)
            if step.name in seen:
                raise fail("duplicate step name", label)
            seen.add(step.name)
            problems = step.problems()
            if problems:
                raise fail(problems[0], label)
            if step.pivot:
                if pivot is not None:
                    raise fail(f"only one step can be the pivot, {pivot!r} already is", label)
                pivot = step.name
            elif pivot is not None and step.compensable:
                raise fail(f"a step after the pivot {pivot!r} cannot have a compensation", label)

    @property
    def pivot_index(self) -> int | None:
        """Index of the pivot step, or None when the saga has no pivot."""
        for index, step in enumerate(self.steps):
            if step.pivot:
                return index
        return None

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(f"saga {self.name!r} has no step {name!r}")

    def index(self, name: str) -> int:
        return self.steps.index(self.step(name))

    def __repr__(self) -> str:
        return f"Saga({self.name!r}, version={self.version}, steps={[s.name for s in self.steps]})"

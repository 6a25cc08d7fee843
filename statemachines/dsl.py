"""The saga DSL: a saga is a name, a version and an ordered list of nodes.

A node is a `Step`, a `Parallel` group of branches, a `ForEach` (one
command per item of a list in the saga data) or an `Await` (the saga parks
until a signal arrives). A step may carry a `when` guard, a `fallback` and
a `CircuitBreaker`.

Declarations are checked when they are made, so a typo fails at import time
with one `SagaDefinitionError` naming the saga, the step and the problem,
never later inside a running orchestrator.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec

from statemachines.expr import Evaluate, ExpressionError, compile_expression
from statemachines.messages import RETRIED_ALWAYS
from statemachines.names import name_problem

Payload = Callable[[Mapping[str, Any]], Mapping[str, Any]]
Guard = Callable[[Mapping[str, Any]], Any]

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


class ReplyDataError(ValueError):
    """A reply's data may not be taken into the saga: `reason` says which key and why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


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
        when: str | Guard | None = None,
        fallback: Step | None = None,
        breaker: CircuitBreaker | None = None,
        results: Sequence[str] | None = None,
        returns: type[msgspec.Struct] | Sequence[str] | None = None,
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
        self.when = when
        self.fallback = fallback
        self.breaker = breaker
        # The keys its reply may set: declared, two parallel branches that
        # set the same key are refused when the saga is declared.
        self.results = tuple(results) if isinstance(results, (list, tuple)) else results
        # What its reply may set, overwriting the saga data: a Struct's fields
        # (validated) or a list of keys. Undeclared, a reply may only add keys,
        # so a participant cannot rewrite what the saga was started with.
        self.returns: type[msgspec.Struct] | tuple[str, ...] | None = (
            tuple(returns) if isinstance(returns, (list, tuple)) else returns  # type: ignore[assignment]
        )
        self.unknown = unknown
        # Await's compensation is a step whose *command* undoes the wait.
        self.undo_by_command = False
        self._guard: Evaluate | None = None
        self._guard_problem: str | None = None
        if isinstance(when, str):
            try:
                self._guard = compile_expression(when)
            except ExpressionError as exc:
                self._guard_problem = f"when {when!r} does not parse: {exc}"
        elif callable(when):
            guard = when
            self._guard = lambda data: bool(guard(data))
        elif when is not None:
            self._guard_problem = f"when must be an expression string or a callable, got {when!r}"

    @property
    def compensable(self) -> bool:
        return self.compensation is not None or (self.fallback is not None and self.fallback.compensable)

    @property
    def undo_command(self) -> str | None:
        """The command that undoes this step: its compensation (or, for an Await's, its command)."""
        return self.command if self.undo_by_command else self.compensation

    @property
    def guard_label(self) -> str | None:
        """The `when` guard in words: the expression, or the predicate's name."""
        if self.when is None:
            return None
        if isinstance(self.when, str):
            return " ".join(self.when.split())
        return getattr(self.when, "__name__", repr(self.when))

    def runs(self, data: Mapping[str, Any]) -> bool:
        """Whether the step's `when` holds for `data` (no guard: always)."""
        return self._guard is None or self._guard(data)

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
        if self._guard_problem is not None:
            found.append(self._guard_problem)
        if self.fallback is not None and not isinstance(self.fallback, Step):
            found.append(f"fallback must be a Step, got {self.fallback!r}")
        if self.breaker is not None:
            if not isinstance(self.breaker, CircuitBreaker):
                found.append(f"breaker must be a CircuitBreaker, got {self.breaker!r}")
            else:
                found.extend(self.breaker.problems())
        if self.results is not None and (
            not isinstance(self.results, tuple) or not all(isinstance(k, str) and k for k in self.results)
        ):
            found.append("results must be a list of data keys")
        returns = self.returns
        if returns is not None and not (
            (isinstance(returns, type) and issubclass(returns, msgspec.Struct))
            or (isinstance(returns, tuple) and returns and all(isinstance(k, str) and k for k in returns))
        ):
            found.append("returns must be a msgspec Struct or a list of data keys")
        return found

    def returned_keys(self) -> tuple[str, ...] | None:
        """The keys a reply may set (None: any new key, none overwritten)."""
        if self.returns is None:
            return None
        if isinstance(self.returns, tuple):
            return self.returns
        return tuple(self.returns.__struct_fields__)

    def merge(self, data: Mapping[str, Any], reply_data: Mapping[str, Any]) -> dict[str, Any]:
        """The saga data once this step's reply data is taken; ReplyDataError if the reply may not set it.

        Undeclared, a reply may add keys but not change one the data has. With
        `returns`, it may set exactly the declared keys (a Struct's are validated).
        """
        declared = self.returned_keys()
        if declared is None:
            for key, value in reply_data.items():
                if key in data and data[key] != value:
                    raise ReplyDataError(
                        f"step {self.name!r} may not change data key {key!r} (declare it in returns=[...])"
                    )
            return {**data, **reply_data}
        extra = sorted(set(reply_data) - set(declared))
        if extra:
            raise ReplyDataError(f"step {self.name!r} returns only {list(declared)}, not {extra[0]!r}")
        taken = dict(reply_data)
        if isinstance(self.returns, type):
            try:
                valid = msgspec.to_builtins(msgspec.convert(taken, self.returns))
            except msgspec.ValidationError as exc:
                raise ReplyDataError(
                    f"step {self.name!r}'s reply data does not fit {self.returns.__name__}: {exc}"
                ) from None
            taken = {key: valid[key] for key in taken}
        return {**data, **taken}

    def __repr__(self) -> str:
        return f"Step({self.name!r}, participant={self.participant!r}, command={self.command!r})"


class CircuitBreaker:
    """Stop sending a step's commands while its participant keeps failing.

    `failures` counted failures (timeouts and retriable failures, never a
    business refusal) within `window` seconds open the breaker; while open,
    the step goes straight to its fallback, or fails fast into compensation.
    After `cool_down` seconds one trial goes through (half-open): its success
    closes the breaker, its failure opens it again. The counting and the
    shared state are the edge's (Redis); decide only reads which keys are open.
    """

    def __init__(self, failures: int = 5, window: float = 30.0, cool_down: float = 60.0, **unknown: Any) -> None:
        self.failures = failures
        self.window = window
        self.cool_down = cool_down
        self.unknown = unknown

    def problems(self) -> list[str]:
        found = [f"unknown breaker option {name!r}" for name in sorted(self.unknown)]
        if isinstance(self.failures, bool) or not isinstance(self.failures, int) or self.failures < 1:
            found.append(f"breaker failures must be an integer of at least 1, got {self.failures!r}")
        for label, value in (("window", self.window), ("cool_down", self.cool_down)):
            if not _positive(value):
                found.append(f"breaker {label} must be a positive number of seconds, got {value!r}")
        return found

    def __repr__(self) -> str:
        return f"CircuitBreaker(failures={self.failures}, window={self.window}, cool_down={self.cool_down})"


class Parallel:
    """Branches that run at once; a branch is a Step or a short list of Steps run in order.

    The group succeeds when every branch has. When one fails for good, every
    branch that succeeded, may have applied or is still in flight is
    compensated (each in reverse), then the steps before the group.
    """

    def __init__(self, name: str, branches: Sequence[Step | Sequence[Step]], **unknown: Any) -> None:
        self.name = name
        self.branches: tuple[tuple[Step, ...], ...] = tuple(
            (b,) if isinstance(b, Step) else tuple(b) if isinstance(b, (list, tuple)) else (b,)
            for b in (branches if isinstance(branches, (list, tuple)) else ())
        )
        self._bad = not isinstance(branches, (list, tuple))
        self.unknown = unknown

    @property
    def steps(self) -> tuple[Step, ...]:
        return tuple(step for branch in self.branches for step in branch)

    @property
    def compensable(self) -> bool:
        return any(step.compensable for step in self.steps)

    def branch_name(self, branch: Sequence[Step]) -> str:
        """A branch is named after its first step."""
        return branch[0].name

    def __repr__(self) -> str:
        return f"Parallel({self.name!r}, {[[s.name for s in b] for b in self.branches]})"


class ForEach:
    """One command per element of the list `data[items]`, at most `max_concurrency` in flight.

    Each item's payload is built from the saga data plus `item` (the element)
    and `index`; the items' reply data is collected in order, as a list under
    the ForEach's name. When an item fails for good, the items that
    succeeded, may have applied or are in flight are compensated, then the
    steps before.
    """

    def __init__(self, name: str, *, items: str = "items", step: Step, max_concurrency: int = 10, **unknown: Any):
        self.name = name
        self.items = items
        self.step = step
        self.max_concurrency = max_concurrency
        self.unknown = unknown

    @property
    def steps(self) -> tuple[Step, ...]:
        return (self.step,)

    @property
    def compensable(self) -> bool:
        return isinstance(self.step, Step) and self.step.compensable

    def __repr__(self) -> str:
        return f"ForEach({self.name!r}, items={self.items!r}, step={self.step!r})"


class Await:
    """The saga parks until the signal `name` arrives; its data is merged into the saga data.

    Past `timeout` seconds the saga compensates the steps before. If the saga
    compensates after the signal arrived, `compensation` (a Step, whose
    command is sent) undoes what the signal stood for.
    """

    def __init__(
        self, name: str, *, timeout: float | None = None, compensation: Step | None = None, **unknown: Any
    ) -> None:
        self.name = name
        self.timeout = timeout
        self.compensation = compensation
        if isinstance(compensation, Step):
            compensation.undo_by_command = True
        self.unknown = unknown

    @property
    def steps(self) -> tuple[Step, ...]:
        return (self.compensation,) if self.compensation is not None else ()

    @property
    def compensable(self) -> bool:
        return self.compensation is not None

    def __repr__(self) -> str:
        return f"Await({self.name!r}, timeout={self.timeout!r})"


Node = Step | Parallel | ForEach | Await


class Saga:
    """A named, versioned, ordered list of nodes (steps and groups).

    `data` may be a msgspec Struct type: a start whose data does not convert
    to it is refused. `deadline` (seconds) bounds the whole saga up to its
    pivot: once passed, the saga compensates. `breakers` gives a
    CircuitBreaker per participant (a step's own `breaker` wins).
    """

    def __init__(
        self,
        name: str,
        steps: Sequence[Node],
        *,
        version: int = 1,
        data: type | None = None,
        deadline: float | None = None,
        breakers: Mapping[str, CircuitBreaker] | None = None,
        **unknown: Any,
    ) -> None:
        self.name = name
        self.version = version
        # The top-level nodes, in order (plain steps for a straight-line saga).
        self.steps: tuple[Node, ...] = tuple(steps) if isinstance(steps, (list, tuple)) else ()
        self.data = data
        self.deadline = deadline
        self.breakers: dict[str, CircuitBreaker] = dict(breakers) if isinstance(breakers, Mapping) else {}
        self._bad_breakers = breakers is not None and not isinstance(breakers, Mapping)
        # Every step by name (branches, items, fallbacks, an Await's
        # compensation), and the index of the top-level node holding it.
        self._steps: dict[str, Step] = {}
        self._where: dict[str, int] = {}
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

        def check_name(value: Any) -> str:
            label = value if isinstance(value, str) else repr(value)
            if not isinstance(value, str) or not _NAME.fullmatch(value):
                raise fail("a step name is lower_snake_case letters, digits and underscores, up to 64", label)
            if value in RESERVED_NAMES or value.startswith("compensating_"):
                raise fail("this name is taken by a state the compiler makes", label)
            if value in seen:
                raise fail("duplicate step name", label)
            seen.add(value)
            return value

        def check_step(step: Any, index: int, where: str | None, after_pivot: bool) -> Step:
            if not isinstance(step, Step):
                raise fail(f"steps must be Step, Parallel, ForEach or Await objects, got {step!r}")
            label = check_name(step.name)
            problems = step.problems()
            if problems:
                raise fail(problems[0], label)
            if step.pivot and where is not None:
                raise fail(f"a pivot cannot be inside {where}: it must be the one point of no return", label)
            if step.pivot and step.when is not None:
                raise fail("a pivot cannot have a when: the point of no return must be reached", label)
            self._steps[label] = step
            self._where[label] = index
            if step.fallback is not None:
                fallback = step.fallback
                check_step(fallback, index, "a fallback", after_pivot)
                if fallback.fallback is not None:
                    raise fail("a fallback cannot have a fallback of its own", fallback.name)
                if fallback.when is not None:
                    raise fail("a fallback cannot have a when: it runs in its step's place", fallback.name)
                if after_pivot and fallback.compensable:
                    raise fail(f"a fallback after the pivot {pivot!r} cannot have a compensation", fallback.name)
            return step

        for index, node in enumerate(self.steps):
            after_pivot = pivot is not None
            if isinstance(node, Step):
                step = check_step(node, index, None, after_pivot)
                if step.pivot:
                    if pivot is not None:
                        raise fail(f"only one step can be the pivot, {pivot!r} already is", step.name)
                    pivot = step.name
                elif after_pivot and step.compensation is not None:
                    raise fail(f"a step after the pivot {pivot!r} cannot have a compensation", step.name)
                continue
            label = node.name if isinstance(getattr(node, "name", None), str) else None
            if isinstance(node, (Parallel, ForEach, Await)):
                label = check_name(node.name)
                if node.unknown:
                    raise fail(f"unknown option {sorted(node.unknown)[0]!r}", label)
            if isinstance(node, Parallel):
                if node._bad or len(node.branches) < 2:
                    raise fail("a Parallel needs a list of at least two branches", label)
                claimed: dict[str, str] = {}
                for branch in node.branches:
                    if not branch:
                        raise fail("a branch needs at least one step", label)
                    keys: set[str] = set()
                    for step in branch:
                        step = check_step(step, index, "a Parallel", after_pivot)
                        if after_pivot and step.compensable:
                            raise fail(f"a step after the pivot {pivot!r} cannot have a compensation", step.name)
                        for s in (step, step.fallback):
                            if s is not None:
                                keys.update(s.results or (), s.returned_keys() or ())
                    for key in sorted(keys):
                        other = claimed.setdefault(key, branch[0].name)
                        if other != branch[0].name:
                            raise fail(
                                f"branches {other!r} and {branch[0].name!r} both declare result {key!r}: one "
                                "would overwrite the other",
                                label,
                            )
            elif isinstance(node, ForEach):
                if not isinstance(node.items, str) or not node.items:
                    raise fail(f"items must name a list in the saga data, got {node.items!r}", label)
                mc = node.max_concurrency
                if isinstance(mc, bool) or not isinstance(mc, int) or mc < 1:
                    raise fail(f"max_concurrency must be an integer of at least 1, got {mc!r}", label)
                step = check_step(node.step, index, "a ForEach", after_pivot)
                if after_pivot and step.compensable:
                    raise fail(f"a step after the pivot {pivot!r} cannot have a compensation", step.name)
            elif isinstance(node, Await):
                if node.timeout is None:
                    raise fail("an Await needs a timeout: a signal that never comes would park the saga forever", label)
                if not _positive(node.timeout):
                    raise fail(f"timeout must be a positive number of seconds, got {node.timeout!r}", label)
                if node.compensation is not None:
                    if not isinstance(node.compensation, Step):
                        raise fail(f"compensation must be a Step, got {node.compensation!r}", label)
                    if after_pivot:
                        raise fail(f"an Await after the pivot {pivot!r} cannot have a compensation", label)
                    check_step(node.compensation, index, "an Await", after_pivot)
            else:
                raise fail(f"steps must be Step, Parallel, ForEach or Await objects, got {node!r}")
        if self._bad_breakers:
            raise fail("breakers must map participant names to CircuitBreaker objects")
        participants = self.participants
        for participant, breaker in self.breakers.items():
            if participant not in participants:
                raise fail(f"breakers names {participant!r}, which no step of the saga sends to")
            if not isinstance(breaker, CircuitBreaker):
                raise fail(f"breakers[{participant!r}] must be a CircuitBreaker, got {breaker!r}")
            problems = breaker.problems()
            if problems:
                raise fail(f"breakers[{participant!r}]: {problems[0]}")

    @property
    def pivot_index(self) -> int | None:
        """Index of the pivot node, or None when the saga has no pivot."""
        for index, node in enumerate(self.steps):
            if isinstance(node, Step) and node.pivot:
                return index
        return None

    @property
    def participants(self) -> set[str]:
        """Every participant a command of the saga may go to."""
        return {step.participant for step in self._steps.values()}

    @property
    def all_steps(self) -> dict[str, Step]:
        """Every step by name: top-level, in branches and ForEach, fallbacks, an Await's compensation."""
        return self._steps

    def step(self, name: str) -> Step:
        """A step by name; a ForEach item's command step `<step>-<n>` is its step."""
        found = self._steps.get(name)
        if found is None and "-" in name:
            base, _, number = name.rpartition("-")
            if number.isdigit():
                found = self._steps.get(base)
        if found is None:
            raise KeyError(f"saga {self.name!r} has no step {name!r}")
        return found

    def node(self, name: str) -> Node:
        """A top-level node by its name."""
        for node in self.steps:
            if node.name == name:
                return node
        raise KeyError(f"saga {self.name!r} has no node {name!r}")

    def index(self, name: str) -> int:
        """The index of the top-level node that is, or holds, `name`."""
        for index, node in enumerate(self.steps):
            if node.name == name:
                return index
        if name in self._where:
            return self._where[name]
        return self._where[self.step(name).name]

    def __repr__(self) -> str:
        return f"Saga({self.name!r}, version={self.version}, steps={[s.name for s in self.steps]})"


def breaker_key(saga: Saga, step: str) -> str | None:
    """The key of the breaker guarding `step`: `step:<saga>.<step>`, `participant:<name>`, or None."""
    found = saga.step(step)
    if found.breaker is not None:
        return f"step:{saga.name}.{found.name}"
    if found.participant in saga.breakers:
        return f"participant:{found.participant}"
    return None


def breaker_of(saga: Saga, key: str) -> CircuitBreaker | None:
    """The CircuitBreaker behind a key breaker_key gave."""
    kind, _, rest = key.partition(":")
    if kind == "participant":
        return saga.breakers.get(rest)
    if kind == "step" and rest.startswith(f"{saga.name}."):
        step = saga.all_steps.get(rest[len(saga.name) + 1 :])
        return step.breaker if step is not None else None
    return None


def lane_node(saga: Saga, node: Node) -> bool:
    """Whether a node runs through lanes (statemachines.lanes) rather than as one plain step."""
    if isinstance(node, (Parallel, ForEach)):
        return True
    if isinstance(node, Await):
        return False
    return node.when is not None or node.fallback is not None or breaker_key(saga, node.name) is not None

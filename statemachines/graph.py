"""Draw a compiled saga as Mermaid (`stateDiagram-v2`) or Graphviz DOT text.

Both read the compiled `transitions.Machine`, not the DSL, so the picture is
the flow that actually runs. Transitions that differ only in their trigger are
merged into one edge, and a `path` (the states one saga went through) is
highlighted. Mermaid state diagrams cannot style a transition, so there only
the visited states are marked; DOT marks the walked edges too.

    from statemachines.graph import mermaid
    print(mermaid(order, path=run.states))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from statemachines.compiler import NEW, OPERATOR_TRIGGERS, TRIGGERS, compiled
from statemachines.dsl import Await, ForEach, Parallel, Saga, Step
from statemachines.messages import TERMINAL

GUARDS = {
    "may_retry": "attempts left",
    "uncertain": "may have applied",
    "in_flight": "in flight",
    "stuck_in": "where it was stuck",
}
# Words the Mermaid state diagram lexer takes as keywords, even as a state id.
_MERMAID_KEYWORDS = frozenset(
    {"accdescr", "acctitle", "class", "classdef", "click", "default", "note", "scale", "state", "statediagram", "style"}
)
_HIGHLIGHT = "#b45309"
_HIGHLIGHT_FILL = "#fde68a"


@dataclass(frozen=True)
class _Edge:
    source: str
    dest: str
    guard: str
    triggers: tuple[str, ...]

    @property
    def label(self) -> str:
        triggers = ", ".join(self.triggers)
        return f"{triggers} [{self.guard}]" if self.guard else triggers


@dataclass(frozen=True)
class _Graph:
    states: list[str]
    initial: str
    terminal: list[str]
    edges: list[_Edge]
    visited: set[str]
    walked: set[tuple[str, str]]


def mermaid(saga: Saga, *, path: Sequence[str] | None = None, operator_triggers: bool = False) -> str:
    """The saga as a Mermaid `stateDiagram-v2`; `path` highlights the states a saga went through."""
    graph = _graph(saga, path, operator_triggers)
    ids = _mermaid_ids(graph.states)
    lines = ["stateDiagram-v2"]
    for state in graph.states:
        label = "<br/>".join(_mermaid_text(line) for line in _label(saga, state))
        lines.append(f'    state "{label}" as {ids[state]}')
    lines.append(f"    [*] --> {ids[graph.initial]}")
    lines.extend(f"    {ids[e.source]} --> {ids[e.dest]} : {_mermaid_text(e.label)}" for e in graph.edges)
    lines.extend(f"    {ids[state]} --> [*]" for state in graph.terminal)
    if graph.visited:
        lines.append(f"    classDef visited fill:{_HIGHLIGHT_FILL},stroke:{_HIGHLIGHT},stroke-width:3px")
        lines.append(f"    class {','.join(ids[s] for s in graph.states if s in graph.visited)} visited")
    return "\n".join(lines) + "\n"


def dot(saga: Saga, *, path: Sequence[str] | None = None, operator_triggers: bool = False) -> str:
    """The saga as Graphviz DOT; `path` highlights the states and edges a saga went through."""
    graph = _graph(saga, path, operator_triggers)
    lines = [
        f"digraph {_dot_id(saga.name)} {{",
        '    node [shape=box, style=rounded, fontname="Helvetica"];',
        '    edge [fontname="Helvetica", fontsize=10];',
    ]
    for state in graph.states:
        attrs = {"label": "\\n".join(_dot_escape(line) for line in _label(saga, state))}
        if state == graph.initial:
            attrs["shape"] = "circle"
        elif state in graph.terminal:
            attrs["shape"] = "doublecircle"
        if state in graph.visited:
            boxed = "shape" not in attrs
            attrs.update(
                style="rounded,filled" if boxed else "filled",
                fillcolor=_HIGHLIGHT_FILL,
                color=_HIGHLIGHT,
                penwidth="3",
            )
        lines.append(f"    {_dot_id(state)} [{_dot_attrs(attrs)}];")
    for edge in graph.edges:
        attrs = {"label": _dot_escape(edge.label)}
        if (edge.source, edge.dest) in graph.walked:
            attrs.update(color=_HIGHLIGHT, fontcolor=_HIGHLIGHT, penwidth="3")
        lines.append(f"    {_dot_id(edge.source)} -> {_dot_id(edge.dest)} [{_dot_attrs(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _graph(saga: Saga, path: Sequence[str] | None, operator_triggers: bool) -> _Graph:
    machine = compiled(saga).machine
    states = list(machine.states)
    visits = list(path or ())
    unknown = sorted(set(visits) - set(states))
    if unknown:
        raise ValueError(f"the path names states saga {saga.name!r} does not have: {', '.join(unknown)}")
    walked = set(pairwise(visits))

    merged: dict[tuple[str, str, str], list[str]] = {}
    for trigger, event in machine.events.items():
        for source, transitions in event.transitions.items():
            guarded_before = False
            for transition in transitions:
                # dest None is an internal transition: the saga stays put (a retry).
                dest = source if transition.dest is None else transition.dest
                guard = " and ".join(_guard(condition) for condition in transition.conditions)
                # The machine takes the first transition whose guard holds, so an
                # unguarded one after guarded ones is only the fallback.
                if not guard and guarded_before:
                    guard = "otherwise"
                guarded_before = guarded_before or bool(guard)
                merged.setdefault((source, dest, guard), []).append(trigger)

    edges = []
    for (source, dest, guard), triggers in merged.items():
        shown = [t for t in triggers if operator_triggers or t not in OPERATOR_TRIGGERS]
        if shown:
            edges.append(_Edge(source, dest, guard, _in_order(shown)))
    # A path that went through an operator's action (abort, resume, fault)
    # would show a gap without it, so that edge is drawn anyway.
    drawn = {(e.source, e.dest) for e in edges}
    for (source, dest, guard), triggers in merged.items():
        if (source, dest) in walked - drawn:
            edges.append(_Edge(source, dest, guard, _in_order(triggers)))

    # Within a source the edges keep the machine's order, which is the order
    # its guards are tried in.
    order = {state: index for index, state in enumerate(states)}
    edges.sort(key=lambda e: order[e.source])
    status = compiled(saga).status_of
    return _Graph(
        states=states,
        initial=machine.initial or NEW,
        terminal=[s for s in states if status.get(s) in TERMINAL],
        edges=edges,
        visited=set(visits),
        walked=walked,
    )


def _guard(condition: Any) -> str:
    name = getattr(condition.func, "__name__", str(condition.func))
    word = GUARDS.get(name, name)
    return word if condition.target else f"not {word}"


def _in_order(triggers: list[str]) -> tuple[str, ...]:
    return tuple(sorted(set(triggers), key=lambda t: (TRIGGERS.index(t) if t in TRIGGERS else len(TRIGGERS), t)))


def _label(saga: Saga, state: str) -> list[str]:
    """Lines describing a state: the step or group, who does what, its guard, fallback and time budget."""
    if state not in compiled(saga).step_states:
        return [state]
    index, action = compiled(saga).step_states[state]
    node = saga.steps[index]
    if isinstance(node, Parallel):
        branches = " | ".join(" then ".join(s.name for s in branch) for branch in node.branches)
        return [f"{state} (parallel)", f"branches: {branches}"]
    if isinstance(node, ForEach):
        return [
            f"{state} (for each of {node.items}, {node.max_concurrency} at once)",
            *_step_lines(node.step, action),
        ]
    if isinstance(node, Await):
        if action == "do":
            return [f"{state} (await signal)", f"timeout {node.timeout:g}s"]
        assert node.compensation is not None
        return [state, f"{node.compensation.participant}: {node.compensation.command}"]
    title = f"{state} (pivot)" if node.pivot and action == "do" else state
    lines = [title, *_step_lines(node, action)]
    if node.when is not None and action == "do":
        lines.insert(1, f"when {node.guard_label}, else skipped")
    if node.fallback is not None:
        lines.append(f"fallback {node.fallback.name}: {' '.join(_step_lines(node.fallback, action)[:1])}")
    return lines


def _step_lines(step: Step, action: str) -> list[str]:
    if action == "do":
        command, retry = step.command, step.retry
    else:
        command, retry = step.undo_command or "", step.compensation_retry
    attempts = "1 attempt" if retry.attempts == 1 else f"up to {retry.attempts} attempts"
    lines = [f"{step.participant}: {command}", f"timeout {step.timeout:g}s, {attempts}"]
    if step.breaker is not None:
        lines.append(f"breaker {step.breaker.failures} failures/{step.breaker.window:g}s")
    return lines


def _mermaid_ids(states: list[str]) -> dict[str, str]:
    """State ids for Mermaid: a keyword gets underscores until it names no other state."""
    ids = {state: state for state in states}
    taken = set(states)
    for state in states:
        if state in _MERMAID_KEYWORDS:
            while ids[state] in taken:
                ids[state] += "_"
            taken.add(ids[state])
    return ids


_MERMAID_ESCAPES = {"#": "#35;", '"': "#quot;", "<": "#lt;", ">": "#gt;", ";": "#59;", "%": "#37;"}


def _mermaid_text(text: str) -> str:
    # Mermaid decodes `#name;` entities itself, so they carry the characters its parser would trip on.
    return "".join(_MERMAID_ESCAPES.get(char, char) for char in " ".join(text.split()))


def _dot_escape(text: str) -> str:
    return " ".join(text.split()).replace("\\", "\\\\").replace('"', '\\"')


def _dot_id(text: str) -> str:
    return f'"{_dot_escape(text)}"'


def _dot_attrs(attrs: dict[str, str]) -> str:
    """Values are escaped already: a label's line breaks are DOT's own `\\n`."""
    return ", ".join(f'{key}="{value}"' for key, value in attrs.items())

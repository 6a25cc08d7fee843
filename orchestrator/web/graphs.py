"""A saga type's graph as SVG for the web view, one saga's path highlighted.

Graphviz `dot` draws it where it is installed; otherwise a plain SVG of our
own shows the states in columns (steps, their compensations, the outcomes)
and the path as arrows. Nothing is loaded from elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from itertools import pairwise

from orchestrator import graphviz
from statemachines import graph
from statemachines.compiler import compiled
from statemachines.dsl import Saga
from statemachines.messages import TERMINAL

HIGHLIGHT, HIGHLIGHT_FILL = "#b45309", "#fde68a"
BOX_W, BOX_H, GAP_X, GAP_Y = 220, 36, 60, 26


def svg(saga: Saga, path: Sequence[str] | None = None) -> bytes:
    """The graph as SVG: Graphviz's where `dot` is installed, else our own."""
    try:
        return graphviz.render(graph.dot(saga, path=path), "svg")
    except graphviz.GraphvizMissing:
        return plain_svg(saga, path)


def plain_svg(saga: Saga, path: Sequence[str] | None = None) -> bytes:
    """States in three columns (steps, compensations, outcomes), the path as arrows."""
    flow = compiled(saga)
    places: dict[str, tuple[int, int]] = {"new": (0, 0)}
    for state, (index, action) in flow.step_states.items():
        places[state] = (0 if action == "do" else 1, index + 1)
    outcomes = [s for s in flow.machine.states if flow.status_of.get(s) in TERMINAL]
    for row, state in enumerate(outcomes):
        places[state] = (2, row + 1)
    visited = set(path or ())
    width = 3 * BOX_W + 4 * GAP_X
    height = (max(row for _, row in places.values()) + 1) * (BOX_H + GAP_Y) + GAP_Y
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, sans-serif" font-size="12">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" '
        f'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="{HIGHLIGHT}"/></marker></defs>',
    ]

    def centre(state: str) -> tuple[float, float]:
        column, row = places[state]
        return GAP_X + column * (BOX_W + GAP_X) + BOX_W / 2, GAP_Y + row * (BOX_H + GAP_Y) + BOX_H / 2

    for state in places:
        x, y = centre(state)
        fill, stroke, pen = (HIGHLIGHT_FILL, HIGHLIGHT, 3) if state in visited else ("#ffffff", "#555555", 1)
        parts.append(
            f'<g class="node"><title>{escape(state)}</title>'
            f'<rect x="{x - BOX_W / 2}" y="{y - BOX_H / 2}" width="{BOX_W}" height="{BOX_H}" rx="8" '
            f'fill="{fill}" stroke="{stroke}" stroke-width="{pen}"/>'
            f'<text x="{x}" y="{y + 4}" text-anchor="middle">{escape(state)}</text></g>'
        )
    for source, dest in pairwise(path or ()):
        if source == dest or source not in places or dest not in places:
            continue
        (x1, y1), (x2, y2) = centre(source), centre(dest)
        y1, y2 = (y1 + BOX_H / 2, y2 - BOX_H / 2) if y2 > y1 else (y1, y2)
        parts.append(
            f'<g class="edge"><line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{HIGHLIGHT}" '
            'stroke-width="2" marker-end="url(#arrow)"/></g>'
        )
    parts.append("</svg>")
    return "\n".join(parts).encode()

"""The web view's own SVG, drawn where Graphviz is not installed, and the resume points of a saga's stream."""

from __future__ import annotations

import re

from orchestrator.progress import _resume_point, progress_id
from orchestrator.store import HISTORY_CAP
from orchestrator.web.graphs import HIGHLIGHT_FILL, plain_svg
from statemachines.instance import HistoryEntry
from statemachines.sagas import order


def test_the_plain_svg_marks_the_states_on_the_path_and_no_others() -> None:
    path = ["new", "reserve_inventory", "charge_payment", "compensating_reserve_inventory", "compensated"]
    svg = plain_svg(order, path).decode()
    nodes = dict(re.findall(r'<g class="node"><title>([^<]+)</title><rect [^>]*fill="([^"]+)"', svg))
    assert {state for state, fill in nodes.items() if fill == HIGHLIGHT_FILL} == set(path)
    assert {"create_shipment", "completed", "stuck", "compensating_charge_payment"} <= set(nodes)
    assert svg.count('<g class="edge">') == len(path) - 1
    assert "http" not in svg.replace('xmlns="http://www.w3.org/2000/svg"', "")


def _entries(count: int, start: float = 100.0) -> list[HistoryEntry]:
    return [HistoryEntry(at=start + n, event="e", source="a", dest="b") for n in range(count)]


def test_a_stream_resumes_after_the_entry_it_last_gave() -> None:
    history = _entries(5)
    assert _resume_point(history, None) == (0, 1)
    assert _resume_point(history, progress_id(3, history[2])) == (3, 4)
    assert _resume_point(history, progress_id(5, history[4])) == (5, 6)
    assert _resume_point(history, "garbage") == (0, 1)


def test_a_trimmed_history_is_resumed_by_the_time_of_the_last_entry() -> None:
    full = _entries(HISTORY_CAP + 10)
    kept = full[-HISTORY_CAP:]
    last = HISTORY_CAP + 5  # the place of the last entry given, 5 from the end of what is kept
    assert _resume_point(kept, progress_id(last, full[last - 1])) == (HISTORY_CAP - 5, last + 1)

"""Graph export: Mermaid and DOT text from the compiled machine, pictures via Graphviz.

The shipped sagas are compared with the snapshots in `snapshots/`. After a
deliberate change to the graph, rewrite them and review the diff:

    UPDATE_SNAPSHOTS=1 python -m pytest tests/unit/test_graph.py
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path

import pytest

from orchestrator.graphviz import GraphvizError, GraphvizMissing, render
from statemachines.compiler import compiled
from statemachines.dsl import Saga, Step
from statemachines.graph import dot, mermaid
from statemachines.harness import SagaHarness
from statemachines.sagas import order, trip

SNAPSHOTS = Path(__file__).parent / "snapshots"
EXPORTS: dict[str, Callable[..., str]] = {"mmd": mermaid, "dot": dot}
ORDER_DATA = {"order_id": "o-1", "customer_id": "c-1", "items": [{"sku": "s-1", "qty": 1}], "amount": 100}


@pytest.mark.parametrize("saga", [order, trip], ids=lambda s: s.name)
@pytest.mark.parametrize("ext", sorted(EXPORTS))
def test_shipped_sagas_match_their_snapshots(saga: Saga, ext: str) -> None:
    text = EXPORTS[ext](saga)
    snapshot = SNAPSHOTS / f"{saga.name}.{ext}"
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        snapshot.parent.mkdir(exist_ok=True)
        snapshot.write_text(text, encoding="utf-8")
    assert snapshot.exists(), f"no snapshot {snapshot.name}; run with UPDATE_SNAPSHOTS=1 to write it"
    assert text == snapshot.read_text(encoding="utf-8")


def mermaid_labels(text: str) -> dict[str, str]:
    """state id -> its description, from `state "..." as id` lines."""
    return {m[2]: m[1] for m in re.finditer(r'^    state "(.*)" as (\w+)$', text, re.M)}


def dot_nodes(text: str) -> dict[str, str]:
    """node -> its attribute list."""
    return {m[1]: m[2] for m in re.finditer(r'^    "(\w+)" \[(.*)\];$', text, re.M)}


def dot_edges(text: str) -> dict[tuple[str, str, str], str]:
    """(source, dest, label) -> the edge's attribute list."""
    found = re.finditer(r'^    "(\w+)" -> "(\w+)" \[label="([^"]*)"(.*)\];$', text, re.M)
    return {(m[1], m[2], m[3]): m[4] for m in found}


@pytest.mark.parametrize("saga", [order, trip], ids=lambda s: s.name)
def test_every_state_appears_in_both_outputs(saga: Saga) -> None:
    states = set(compiled(saga).machine.states)
    assert set(mermaid_labels(mermaid(saga))) == states
    assert set(dot_nodes(dot(saga))) == states


def test_order_labels_show_participant_command_compensation_timeout_and_pivot() -> None:
    for labels in (mermaid_labels(mermaid(order)), dot_nodes(dot(order))):
        assert "inventory: reserve_stock" in labels["reserve_inventory"]
        assert "timeout 10s" in labels["reserve_inventory"]
        assert "inventory: release_stock" in labels["compensating_reserve_inventory"]
        assert "create_shipment (pivot)" in labels["create_shipment"]
        assert "pivot" not in labels["charge_payment"]


def test_retries_are_self_loops_with_readable_guards() -> None:
    text = mermaid(order)
    assert "    reserve_inventory --> reserve_inventory : failed, timed_out [attempts left]\n" in text
    assert "    reserve_inventory --> compensating_reserve_inventory : failed, timed_out [may have applied]\n" in text
    assert "    completed --> [*]\n" in text
    assert '"completed" [label="completed", shape="doublecircle"]' in dot(order)


def test_a_path_highlights_exactly_the_states_and_steps_a_saga_went_through() -> None:
    run = SagaHarness(order).start("order", ORDER_DATA)
    run.succeed()
    run.fail("card_declined")
    run.succeed()
    path = run.states
    # The fraud check is skipped (a small amount) and the declined charge left nothing to refund.
    assert path == [
        "new",
        "reserve_inventory",
        "check_fraud",
        "charge_payment",
        "compensating_charge_payment",
        "compensating_reserve_inventory",
        "compensated",
    ]

    highlighted = re.findall(r"^    class (\S+) visited$", mermaid(order, path=path), re.M)
    assert highlighted == [",".join(s for s in compiled(order).machine.states if s in path)]
    assert "classDef" not in mermaid(order)

    text = dot(order, path=path)
    assert {node for node, attrs in dot_nodes(text).items() if "penwidth" in attrs} == set(path)
    walked = {(source, dest) for (source, dest, _), attrs in dot_edges(text).items() if "penwidth" in attrs}
    assert walked == set(pairwise(path))
    assert "penwidth" not in dot(order)


def test_a_path_through_an_operator_action_draws_that_edge() -> None:
    path = ["new", "reserve_inventory", "charge_payment", "stuck", "charge_payment", "create_shipment"]
    edges = dot_edges(dot(order, path=path))
    assert "penwidth" in edges[("stuck", "charge_payment", "resume [where it was stuck]")]
    assert "penwidth" in edges[("charge_payment", "stuck", "fault")]
    assert ("stuck", "create_shipment", "resume [where it was stuck]") not in edges


def test_a_path_with_a_state_the_saga_lacks_is_refused() -> None:
    with pytest.raises(ValueError, match="does not have: shipping_label"):
        mermaid(order, path=["new", "shipping_label"])


@pytest.mark.parametrize("export", EXPORTS.values(), ids=EXPORTS.keys())
def test_operator_triggers_are_left_out_unless_asked(export: Callable[..., str]) -> None:
    operator = re.compile(r"\b(resend|abort|resume|fault)\b")
    assert not operator.search(export(order))
    assert {m[1] for m in operator.finditer(export(order, operator_triggers=True))} == {
        "resend",
        "abort",
        "resume",
        "fault",
    }


def test_awkward_names_and_text_do_not_break_mermaid_or_dot() -> None:
    saga = Saga(
        "awkward",
        # A participant name is a queue name, bounded; a command may say anything.
        [Step("note", participant="speaker", command='say "hi" a<b>#1;', compensation="undo\\it")],
    )
    text = mermaid(saga)
    assert 'state "note<br/>speaker: say #quot;hi#quot; a#lt;b#gt;#35;1#59;<br/>' in text
    assert "[*] --> new\n    new --> note_ : start" in text
    assert 'speaker: say \\"hi\\" a<b>#1;' in dot(saga)
    assert "undo\\\\it" in dot(saga)


def fake_dot(folder: Path, script: str) -> None:
    binary = folder / "dot"
    binary.write_text(f"#!/bin/sh\n{script}\n")
    binary.chmod(0o755)


def test_render_pipes_the_dot_text_to_graphviz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dot(tmp_path, 'printf "fake dot %s\\n" "$*"; cat')
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    assert render("digraph {}", "svg") == b"fake dot -Tsvg\ndigraph {}"
    assert render("digraph {}", "png").startswith(b"fake dot -Tpng\n")


def test_render_reports_what_graphviz_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dot(tmp_path, 'echo "syntax error in line 1" >&2; exit 1')
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(GraphvizError, match="syntax error in line 1"):
        render("digraph {", "svg")


def test_render_without_graphviz_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(GraphvizMissing) as missing:
        render(dot(order), "svg")
    message = str(missing.value)
    assert "Graphviz is not installed" in message
    assert "apt install graphviz" in message
    assert "--format mermaid" in message


def test_render_refuses_an_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown picture format 'gif'"):
        render(dot(order), "gif")

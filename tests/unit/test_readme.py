"""The README's harness example is code a user will paste: it must run and pass."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_harness_example_passes() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    [example] = [block for block in blocks if "SagaHarness(" in block]
    namespace: dict[str, Any] = {}
    exec(compile(example, "README.md", "exec"), namespace)
    tests = [value for name, value in namespace.items() if name.startswith("test_")]
    assert len(tests) == 2
    for test in tests:
        test()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_saga_declaration_runs() -> None:
    [example] = [block for block in _blocks("python") if "order = Saga(" in block]
    namespace: dict[str, Any] = {}
    exec(compile(example, "README.md", "exec"), namespace)
    saga = namespace["order"]
    assert [step.name for step in saga.steps] == ["reserve_inventory", "charge_payment", "create_shipment"]


def test_the_readme_mermaid_block_is_the_real_output() -> None:
    from statemachines import graph
    from statemachines.sagas import order, trip

    shop, travel = _blocks("mermaid")
    assert shop == graph.mermaid(order), "paste the output of `saga graph order` into the README"
    assert travel == graph.mermaid(trip), "paste the output of `saga graph trip` into the README"

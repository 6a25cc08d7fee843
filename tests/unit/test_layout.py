"""The rooms keep to the import rules ARCHITECTURE.md states, and the README's imports work."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = ("statemachines", "orchestrator", "participants")


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Every module of ours and the modules of ours it imports (TYPE_CHECKING ones too)."""
    found: dict[str, set[str]] = {}
    for package in OURS:
        for path in (ROOT / package).rglob("*.py"):
            deps: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in OURS:
                    deps.add(node.module)
                    # `from package import module` imports the module.
                    deps |= {f"{node.module}.{alias.name}" for alias in node.names}
                elif isinstance(node, ast.Import):
                    deps |= {alias.name for alias in node.names if alias.name.split(".")[0] in OURS}
            found[_module(path)] = deps
    return {module: {d for d in deps if d in found and d != module} for module, deps in found.items()}


IMPORTS = _imports()


def _within(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


@pytest.mark.parametrize(
    ("room", "may_import"),
    [
        ("statemachines", ("statemachines",)),
        ("participants.edge", ("statemachines", "participants.edge")),
        ("participants", ("statemachines", "participants")),
    ],
)
def test_a_room_imports_only_the_rooms_below_it(room: str, may_import: tuple[str, ...]) -> None:
    wrong = {
        (module, dep)
        for module, deps in IMPORTS.items()
        if _within(module, room)
        for dep in deps
        if not any(_within(dep, allowed) for allowed in may_import)
    }
    assert not wrong


def test_the_runtime_never_imports_its_cli_tools_or_web_view() -> None:
    above = ("orchestrator.cli", "orchestrator.tools", "orchestrator.web")
    runtime = [m for m in IMPORTS if _within(m, "orchestrator") and not any(_within(m, room) for room in above)]
    wrong = {(m, d) for m in runtime for d in IMPORTS[m] if any(_within(d, room) for room in above)}
    assert not wrong


def test_no_modules_import_each_other_in_a_circle() -> None:
    # A package's __init__ re-exporting its modules is not a circle of theirs.
    edges = {m: {d for d in deps if not _within(m, d)} for m, deps in IMPORTS.items()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError(" -> ".join([*path[path.index(module) :], module]))
        if module in done:
            return
        for dep in sorted(edges[module]):
            visit(dep, [*path, module])
        done.add(module)

    for module in sorted(edges):
        visit(module, [])


@pytest.mark.parametrize(
    "name",
    [
        "statemachines:Saga",
        "statemachines:Step",
        "statemachines:Retry",
        "statemachines:SagaHarness",
        "statemachines:compiled",
        "statemachines.sagas:order",
        "participants.worker:Worker",
        "participants.worker:Context",
        "participants.worker:Failure",
        "orchestrator.client:SagaClient",
        "orchestrator.config:Settings",
    ],
)
def test_the_names_the_readme_imports_are_there(name: str) -> None:
    module, _, attribute = name.partition(":")
    assert getattr(importlib.import_module(module), attribute) is not None
    assert f"from {module} import" in (ROOT / "README.md").read_text()

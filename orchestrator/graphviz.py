"""Render DOT text to SVG or PNG with Graphviz's `dot` binary.

Only pictures need Graphviz; Mermaid and DOT text come from
`statemachines.graph` with nothing installed.
"""

from __future__ import annotations

import shutil
import subprocess

FORMATS = ("svg", "png")


class GraphvizError(Exception):
    """Graphviz could not render the graph."""


class GraphvizMissing(GraphvizError):
    """The `dot` binary is not on PATH."""

    def __init__(self) -> None:
        super().__init__(
            "Graphviz is not installed (no `dot` on PATH): install it with `apt install graphviz` "
            "or `brew install graphviz`, or use `--format mermaid` or `--format dot`, which need nothing."
        )


def render(dot_text: str, fmt: str) -> bytes:
    """Run `dot -T<fmt>` on `dot_text` and return the picture."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown picture format {fmt!r}: Graphviz renders {' or '.join(FORMATS)}")
    binary = shutil.which("dot")
    if binary is None:
        raise GraphvizMissing()
    result = subprocess.run([binary, f"-T{fmt}"], input=dot_text.encode(), capture_output=True, check=False)
    if result.returncode != 0:
        problem = result.stderr.decode(errors="replace").strip() or f"exit status {result.returncode}"
        raise GraphvizError(f"Graphviz could not render the graph: {problem}")
    return result.stdout

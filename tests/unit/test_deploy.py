"""deploy/: the dashboard and the alert rules name only metrics the processes serve, and the rules do what they say."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from participants.edge.metrics import Metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SUFFIXES = ("_total", "_bucket", "_count", "_sum")


def served() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        names |= {sample.name for sample in family.samples} | {family.name}
    return names | {family.name + suffix for family in Metrics().registry.collect() for suffix in SUFFIXES}


def named(text: str) -> set[str]:
    """Metric names in a PromQL expression (label names such as saga_type are followed by `=` or sit in by (...))."""
    found = set(re.findall(r"\b((?:saga|process)_[a-z_]+)\b(?!\s*[=~!])", text))
    return found - {"saga_type"}


def test_the_dashboard_and_the_rules_name_served_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana/dashboards/saga-orchestrator.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    exprs += [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    used = set().union(*(named(e) for e in exprs))
    assert used and used <= served(), used - served()
    assert {rule["alert"] for group in rules["groups"] for rule in group["rules"]} >= {
        "SagaStuck",
        "SagaStuckForgotten",
        "SagaCompensationsHigh",
        "SagaDeadLetters",
        "SagaDeadlinesLate",
    }


def test_the_alert_rules_pass_their_promtool_tests() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian's prometheus package)")
    result = subprocess.run(
        [promtool, "test", "rules", "alerts_test.yml"], cwd=DEPLOY / "prometheus", capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr

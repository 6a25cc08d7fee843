"""One saga's trace across real processes: the starter, the orchestrator and three participants."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from participants.edge import tracing
from participants.edge.settings import Settings
from tests.integration import traced
from tests.integration.conftest import remove_namespace
from tests.integration.test_end_to_end import order

PARTICIPANTS = ("inventory", "payment", "shipping")


@pytest.fixture
def starter_traced() -> Iterator[InMemorySpanExporter]:
    """This process traces too, through a provider of its own (the global one stays unset for other tests)."""
    exporter = InMemorySpanExporter()
    tracing._tracer = traced.provider(exporter).get_tracer("test")
    yield exporter
    tracing.reset()


async def test_one_saga_is_one_trace_across_processes(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, starter_traced: InMemorySpanExporter
) -> None:
    from orchestrator.client import SagaClient
    from orchestrator.tools.fleet import Fleet

    spans_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv("SAGA_TEST_SPANS", str(spans_file))
    fleet = Fleet(settings)
    try:
        fleet.orchestrator("orchestrator", "--sagas", "tests.integration.traced")
        for name in PARTICIPANTS:
            fleet.participant(name, f"tests.integration.traced:{name}")
        names = settings.names
        await fleet.ready([names.start_queue, names.reply_queue, *(names.participant_queue(p) for p in PARTICIPANTS)])
        async with await SagaClient.connect(settings) as client:
            outcome = await client.start("order", order(), wait=True, timeout=30)
        assert outcome.status == "completed"
    finally:
        codes = fleet.stop()
        await remove_namespace(settings, set(PARTICIPANTS))
    assert set(codes.values()) == {0}

    spans: list[dict[str, Any]] = [json.loads(line) for line in spans_file.read_text().splitlines()]
    spans += [traced.as_dict(span) for span in starter_traced.get_finished_spans()]
    mine = [s for s in spans if s["attributes"].get("saga.id") == outcome.saga_id]
    by_id = {s["span_id"]: s for s in mine}

    def one(name: str) -> dict[str, Any]:
        found = [s for s in mine if s["name"] == name]
        assert len(found) == 1, (name, [s["name"] for s in mine])
        return found[0]

    def parent(span: dict[str, Any]) -> dict[str, Any]:
        return by_id[span["parent_id"]]

    assert len({s["trace_id"] for s in mine}) == 1, "one trace per saga"
    start = one("start order")
    root = one("saga order")
    assert start["parent_id"] is None and parent(root) is start
    steps = {"reserve_inventory": ("inventory", "reserve_stock"), "charge_payment": ("payment", "charge")}
    steps["create_shipment"] = ("shipping", "create_shipment")
    processes = {start["pid"], root["pid"]}
    for step, (participant, command) in steps.items():
        sent = one(f"{step} do #1")
        handler = one(f"{participant} {command}")
        applied = one(f"succeeded {step}")
        assert parent(sent) is root and sent["kind"] == "PRODUCER"
        assert parent(handler) is sent and handler["kind"] == "CONSUMER"
        assert parent(applied) is sent, "the reply's traceparent names the command it answers"
        assert handler["attributes"]["saga.participant"] == participant
        assert sent["pid"] == applied["pid"] == root["pid"] != handler["pid"]
        processes.add(handler["pid"])
    assert len(processes) == 5  # the starter, the orchestrator, three participants

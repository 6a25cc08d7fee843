"""The shipped sagas and example workers, with an OpenTelemetry SDK that keeps its spans in memory.

`saga orchestrator --sagas tests.integration.traced` and
`saga participant tests.integration.traced:inventory` load it; at exit each
process appends its finished spans, one JSON object per line, to the file
named by SAGA_TEST_SPANS. The trace test reads them back.
"""

from __future__ import annotations

import atexit
import json
import os

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from participants.examples.inventory import worker as inventory
from participants.examples.payment import worker as payment
from participants.examples.shipping import worker as shipping
from statemachines.sagas import order, trip

__all__ = ["inventory", "order", "payment", "shipping", "trip"]

exporter = InMemorySpanExporter()


def provider(into: InMemorySpanExporter = exporter) -> TracerProvider:
    made = TracerProvider()
    made.add_span_processor(SimpleSpanProcessor(into))
    return made


def as_dict(span: ReadableSpan) -> dict[str, object]:
    context = span.get_span_context()
    assert context is not None
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}",
        "span_id": f"{context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
        "kind": span.kind.name,
        "attributes": dict(span.attributes or {}),
        "pid": os.getpid(),
    }


def _dump() -> None:
    with open(os.environ["SAGA_TEST_SPANS"], "a") as out:
        for span in exporter.get_finished_spans():
            out.write(json.dumps(as_dict(span)) + "\n")


if os.environ.get("SAGA_TEST_SPANS"):
    trace.set_tracer_provider(provider())
    atexit.register(_dump)

"""OpenTelemetry traces: one trace per saga, W3C `traceparent` in the AMQP headers of starts, commands and replies.

Only opentelemetry-api is imported (the `tracing` extra), and only once a
tracer provider is there: one a program set itself (`trace.set_tracer_provider`),
or the SDK configured from the standard environment (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_TRACES_EXPORTER`, `OTEL_SERVICE_NAME`) by `configure_from_env`. Until
then every hook returns at its first line.

The shape of a saga's trace, whichever processes it crosses:

    saga order                        the start (child of the starter's span, if it sent one)
      reserve_inventory do #1         a command sent (producer); its traceparent travels with it
        inventory reserve_stock       the participant's handler (consumer), in the worker
        succeeded reserve_inventory   the reply applied, in whichever orchestrator took it
      charge_payment do #1
        ...
      timed_out charge_payment        a deadline fired by the timer loop

The saga's own span context is kept on the instance (`trace`), so that
every later span of the saga, in any process, joins the same trace.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from statemachines.decide import Decision, Event
    from statemachines.instance import SagaInstance
    from statemachines.messages import Command, Reply

log = logging.getLogger("saga.tracing")
TRACEPARENT = "traceparent"
# Variables that ask for traces to be exported (the SDK's own names).
_WANTED = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER")


class TracingMissing(RuntimeError):
    """The environment asks for traces, but the OpenTelemetry SDK is not installed."""


# None: not looked yet; False: off; else the tracer.
_tracer: Any = None


def _wanted() -> bool:
    return any(os.environ.get(name) for name in _WANTED) and os.environ.get("OTEL_TRACES_EXPORTER") != "none"


def configure_from_env(service: str) -> None:
    """Set up the SDK from OTEL_* variables, if they ask for traces; a plain error if the SDK is missing."""
    if not _wanted():
        return
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError:
        raise TracingMissing(
            "OTEL_* variables ask for traces, but the OpenTelemetry SDK is not installed: "
            "pip install 'saga-orchestrator[tracing]' opentelemetry-sdk opentelemetry-exporter-otlp"
        ) from None
    exporter: SpanExporter
    if os.environ.get("OTEL_TRACES_EXPORTER") == "console":
        exporter = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise TracingMissing(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set, but the OTLP exporter is not installed: "
                "pip install opentelemetry-exporter-otlp-proto-http (or set OTEL_TRACES_EXPORTER=console)"
            ) from None
        exporter = OTLPSpanExporter()
    name = os.environ.get("OTEL_SERVICE_NAME") or f"saga-{service}"
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)


def tracer() -> Any:
    """The tracer, or False while no tracer provider is set (looked up once)."""
    global _tracer
    if _tracer is None:
        _tracer = False
        try:
            from opentelemetry import trace
        except ImportError:
            return False
        provider = trace.get_tracer_provider()
        if type(provider).__name__ in ("ProxyTracerProvider", "NoOpTracerProvider"):
            return False
        _tracer = provider.get_tracer("saga-orchestrator")
    return _tracer


def reset() -> None:
    """Look for a tracer provider again at the next hook (a test that sets one)."""
    global _tracer
    _tracer = None


def _inject(ctx: Any = None) -> dict[str, str]:
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    return carrier


def _saga_context(inst: SagaInstance) -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    return TraceContextTextMapPropagator().extract({TRACEPARENT: inst.trace or ""})


def _attributes(inst: SagaInstance, step: str | None, action: str | None, attempt: int) -> dict[str, Any]:
    attributes: dict[str, Any] = {"saga.id": inst.saga_id, "saga.type": inst.saga_type}
    if step is not None:
        attributes.update({"saga.step": step, "saga.action": action or "do", "saga.attempt": attempt})
    return attributes


# Hooks, called by the runtime.


def start_headers(saga_type: str, saga_id: str) -> dict[str, str] | None:
    """A starter's span; its traceparent goes in the StartSaga's headers."""
    t = tracer()
    if t is False:
        return None
    from opentelemetry.trace import SpanKind

    with t.start_as_current_span(
        f"start {saga_type}", kind=SpanKind.PRODUCER, attributes={"saga.id": saga_id, "saga.type": saga_type}
    ):
        return _inject()


def consuming(headers: Mapping[str, Any] | None) -> Any:
    """Make the incoming message's trace context the current one; returns a token for `consumed`."""
    if _tracer is False or not headers or TRACEPARENT not in headers or tracer() is False:
        return None
    from opentelemetry import context, propagate

    carrier = {
        k: v.decode() if isinstance(v, bytes) else str(v) for k, v in headers.items() if isinstance(v, str | bytes)
    }
    return context.attach(propagate.extract(carrier))


def consumed(token: Any) -> None:
    if token is not None:
        from opentelemetry import context

        context.detach(token)


def command_headers(inst: SagaInstance, command: Command) -> dict[str, str] | None:
    """A span for a command sent; its traceparent travels in the command's headers.

    The first command of a saga opens the saga's own span, kept on the instance.
    """
    t = tracer()
    if t is False:
        return None
    from opentelemetry.trace import SpanKind

    if inst.trace is None:
        with t.start_as_current_span(f"saga {inst.saga_type}", attributes=_attributes(inst, None, None, 0)):
            inst.trace = _inject()[TRACEPARENT]
    name = f"{command.step} {command.action} #{command.attempt}"
    attributes = _attributes(inst, command.step, command.action, command.attempt)
    attributes["saga.command"] = command.command
    span = t.start_span(name, context=_saga_context(inst), kind=SpanKind.PRODUCER, attributes=attributes)
    try:
        from opentelemetry.trace import set_span_in_context

        return _inject(set_span_in_context(span))
    finally:
        span.end()


def committed(old: SagaInstance | None, event: Event, decision: Decision) -> None:
    """A span for what a reply, a deadline or an operator did to the saga."""
    t = tracer()
    new = decision.instance
    if t is False or new is None or new.trace is None or not decision.history or old is None:
        return
    from opentelemetry import context
    from opentelemetry.trace import SpanKind, Status, StatusCode, get_current_span

    entry = decision.history[0]
    # A reply carries the context of the command it answers: its span goes beside the handler's.
    current = get_current_span().get_span_context()
    parent = context.get_current() if current.is_valid else _saga_context(new)
    attributes = _attributes(new, entry.step, entry.action, entry.attempt)
    attributes.update({"saga.event": entry.event, "saga.state": new.state, "saga.status": new.status})
    kind = SpanKind.CONSUMER if current.is_valid else SpanKind.INTERNAL
    with t.start_as_current_span(f"{entry.event} {entry.step or new.state}", context=parent, kind=kind) as span:
        span.set_attributes(attributes)
        if entry.event in ("failed", "timed_out", "expired", "fault") or new.status == "stuck":
            span.set_status(Status(StatusCode.ERROR, entry.detail or new.status))


class _Handler:
    """The span of a participant's handler, child of the command's."""

    __slots__ = ("_manager", "_span")

    def __init__(self, participant: str, command: Command) -> None:
        from opentelemetry.trace import SpanKind

        attributes = {
            "saga.id": command.saga_id,
            "saga.type": command.saga_type,
            "saga.step": command.step,
            "saga.action": command.action,
            "saga.attempt": command.attempt,
            "saga.participant": participant,
        }
        self._manager = tracer().start_as_current_span(
            f"{participant} {command.command}", kind=SpanKind.CONSUMER, attributes=attributes
        )

    def __enter__(self) -> _Handler:
        self._span = self._manager.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._manager.__exit__(*exc)

    def answered(self, reply: Reply) -> None:
        from opentelemetry.trace import Status, StatusCode

        if reply.error is not None:
            self._span.set_attribute("saga.error", reply.error.code)
            self._span.set_status(Status(StatusCode.ERROR, reply.error.code))


def handler(participant: str, command: Command) -> _Handler | None:
    """Open a participant handler's span (None while tracing is off)."""
    return None if tracer() is False else _Handler(participant, command)


def headers() -> dict[str, str] | None:
    """The current trace context as AMQP headers (a worker's reply)."""
    return None if tracer() is False else _inject()

"""The pure core of Saga Orchestrator: the DSL, its compiler, decide() and the test harness.

Nothing in this package does I/O or reads the clock.
"""

from statemachines.compiler import CompiledSaga, compiled
from statemachines.decide import Abort, Decision, Due, Event, Resume, Signal, Start, decide
from statemachines.dsl import (
    Await,
    CircuitBreaker,
    ForEach,
    Parallel,
    ReplyDataError,
    Retry,
    Saga,
    SagaDefinitionError,
    Step,
    breaker_key,
)
from statemachines.harness import SagaHarness, SagaRun
from statemachines.instance import HistoryEntry, SagaInstance
from statemachines.messages import Command, ErrorInfo, Reply, SagaEvent, StartSaga
from statemachines.names import Names

__all__ = [
    "Abort",
    "Await",
    "CircuitBreaker",
    "Command",
    "CompiledSaga",
    "Decision",
    "Due",
    "ErrorInfo",
    "Event",
    "ForEach",
    "HistoryEntry",
    "Names",
    "Parallel",
    "Reply",
    "ReplyDataError",
    "Resume",
    "Retry",
    "Saga",
    "SagaDefinitionError",
    "SagaEvent",
    "SagaHarness",
    "SagaInstance",
    "SagaRun",
    "Signal",
    "Start",
    "StartSaga",
    "Step",
    "breaker_key",
    "compiled",
    "decide",
]

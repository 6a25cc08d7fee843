"""The pure core of Saga Orchestrator: the DSL, its compiler, decide() and the test harness.

Nothing in this package does I/O or reads the clock.
"""

from statemachines.compiler import CompiledSaga, compiled
from statemachines.decide import Abort, Decision, Due, Event, Resume, Start, decide
from statemachines.dsl import Retry, Saga, SagaDefinitionError, Step
from statemachines.harness import SagaHarness, SagaRun
from statemachines.instance import HistoryEntry, SagaInstance
from statemachines.messages import Command, ErrorInfo, Reply, SagaEvent, StartSaga
from statemachines.names import Names

__all__ = [
    "Abort",
    "Command",
    "CompiledSaga",
    "Decision",
    "Due",
    "ErrorInfo",
    "Event",
    "HistoryEntry",
    "Names",
    "Reply",
    "Resume",
    "Retry",
    "Saga",
    "SagaDefinitionError",
    "SagaEvent",
    "SagaHarness",
    "SagaInstance",
    "SagaRun",
    "Start",
    "StartSaga",
    "Step",
    "compiled",
    "decide",
]

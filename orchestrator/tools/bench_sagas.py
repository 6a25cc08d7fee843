"""The sagas `saga bench` runs: the shipped order saga, and one that parks.

A `parked` saga sends one command to the `parking` participant, which no
process serves during the scale run, and gives up after its timeout: it
stands for any saga waiting on a participant that is down or slow.
"""

from statemachines.dsl import Retry, Saga, Step
from statemachines.sagas import order

parked = Saga(
    "parked",
    [Step("park", participant="parking", command="park", timeout=1.0, retry=Retry(1))],
)

__all__ = ["order", "parked"]

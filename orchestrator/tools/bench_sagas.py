"""The sagas `saga bench` runs: the shipped order and trip sagas, the trip in line, and one that parks.

A `parked` saga sends one command to the `parking` participant, which no
process serves during the scale run, and gives up after its timeout: it
stands for any saga waiting on a participant that is down or slow.

`trip_in_line` is the shipped trip with its bookings one after the other
instead of at once: the same participants, commands and payloads, so that
`saga bench --parallel` measures what running them in parallel gains.
"""

from statemachines.dsl import Retry, Saga, Step
from statemachines.sagas import order, trip


def in_line(saga: Saga, name: str) -> Saga:
    """`saga` with every group's steps run one after the other, in their declared order."""
    steps: list[Step] = []
    for node in saga.steps:
        steps.extend([node] if isinstance(node, Step) else node.steps)  # type: ignore[attr-defined,unused-ignore]
    return Saga(name, steps=steps, version=saga.version, data=saga.data)


parked = Saga(
    "parked",
    [Step("park", participant="parking", command="park", timeout=1.0, retry=Retry(1))],
)
trip_in_line = in_line(trip, "trip_in_line")

__all__ = ["order", "parked", "trip", "trip_in_line"]

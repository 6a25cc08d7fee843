"""The sagas `saga bench` runs: the shipped order and trip sagas, the trip in line, and one that parks.

A `parked` saga sends one command to the `parking` participant, which no
process serves during the scale run, and gives up after its timeout: it
stands for any saga waiting on a participant that is down or slow.

`trip` books the shipped trip's flight, hotel and car in one Parallel group,
and `trip_in_line` books them one after the other: the same participants,
commands and payloads, so that `saga bench --parallel` measures what
running them in parallel gains.
"""

from statemachines import Parallel
from statemachines.dsl import Retry, Saga, Step
from statemachines.sagas import order
from statemachines.sagas import trip as shipped_trip


def bookings(saga: Saga) -> list[Step]:
    """Every step of `saga`, groups' steps in their declared order."""
    steps: list[Step] = []
    for node in saga.steps:
        steps.extend([node] if isinstance(node, Step) else node.steps)
    return steps


def in_line(saga: Saga, name: str) -> Saga:
    """`saga` with every group's steps run one after the other, in their declared order."""
    return Saga(name, steps=bookings(saga), version=saga.version, data=saga.data)


parked = Saga(
    "parked",
    [Step("park", participant="parking", command="park", timeout=1.0, retry=Retry(1))],
)
trip_in_line = in_line(shipped_trip, "trip_in_line")
trip = Saga(
    "trip",
    steps=[Parallel("book", bookings(shipped_trip))],
    version=shipped_trip.version,
    data=shipped_trip.data,
)

__all__ = ["order", "parked", "trip", "trip_in_line"]

"""The trip saga with its three bookings in one Parallel group, for the crash test of a parallel group.

The same steps, participants and payloads as the shipped trip (it is the
one `saga bench --parallel` runs), so the example participants and the
chaos audit know them.
"""

from orchestrator.tools.bench_sagas import trip

__all__ = ["trip"]

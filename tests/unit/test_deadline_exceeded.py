"""A `deadline_exceeded` refusal is retried like a timeout, whatever `retry_on` says, and did not happen."""

from __future__ import annotations

from statemachines import Retry, Saga, SagaHarness, Step

ONLY_UNAVAILABLE = Retry(3, backoff=0.1, jitter=0, retry_on={"unavailable"})
trip = Saga(
    "trip",
    [
        Step("ride", participant="taxi", command="ride", compensation="unride", retry=ONLY_UNAVAILABLE),
        Step("fly", participant="plane", command="fly", compensation="unfly", retry=ONLY_UNAVAILABLE),
    ],
)


def test_a_refusal_past_the_deadline_is_retried_though_retry_on_does_not_name_it() -> None:
    harness = SagaHarness(trip)
    run = harness.start("trip", {})
    run.succeed()  # ride
    run.fail("deadline_exceeded", "arrived 0.2s past its deadline; not started")
    harness.advance(1)
    assert [(s.command, s.attempt) for s in run.sent] == [("ride", 1), ("fly", 1), ("fly", 2)]
    run.succeed()
    assert run.status == "completed"


def test_a_step_refused_past_its_deadline_every_time_is_not_compensated() -> None:
    harness = SagaHarness(trip)
    run = harness.start("trip", {})
    run.succeed()  # ride
    for _ in range(3):
        run.fail("deadline_exceeded")
        harness.advance(1)
    # The flight never happened: only the ride is undone.
    assert [s.command for s in run.sent] == ["ride", "fly", "fly", "fly", "unride"]
    run.succeed()
    assert run.status == "compensated"
    assert run.events[-1].error is not None and run.events[-1].error.code == "deadline_exceeded"


def test_a_business_refusal_is_not_retried_where_retry_on_does_not_name_it() -> None:
    harness = SagaHarness(trip)
    run = harness.start("trip", {})
    run.succeed()
    run.fail("no_seat")
    assert [s.command for s in run.sent] == ["ride", "fly", "unride"]

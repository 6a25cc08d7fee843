"""The worker SDK's promises that only a real broker and Redis can show."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from participants.edge.settings import Settings
from participants.worker import Context, Worker
from statemachines.dsl import Retry, Saga, Step
from tests.integration.conftest import running

QUICK = Retry(2, backoff=0.05, jitter=0)
trip = Saga(
    "wkr_trip",
    [
        Step("ride", participant="wkr_taxi", command="ride", compensation="unride", timeout=5.0, retry=QUICK),
        Step("fly", participant="wkr_plane", command="fly", compensation="unfly", timeout=5.0, retry=QUICK),
        Step("sleep", participant="wkr_plane", command="sleep", timeout=5.0, retry=QUICK),
    ],
)


def workers(log: list[str]) -> list[Worker]:
    taxi = Worker("wkr_taxi", transient_backoff=0.01)
    plane = Worker("wkr_plane", transient_backoff=0.01)

    async def ride(ctx: Context) -> dict[str, Any]:
        log.append("ride")
        return {"taxi": "t-1"}

    async def unride(ctx: Context) -> None:
        log.append("unride")

    async def fly(ctx: Context) -> None:
        log.append("fly")  # the seat is sold, then the process loses its database
        raise ConnectionError("lost the seat database half-way")

    async def unfly(ctx: Context) -> None:
        log.append("unfly")

    taxi.handler("ride")(ride)
    taxi.handler("unride")(unride)
    plane.handler("fly")(fly)
    plane.handler("unfly")(unfly)
    return [taxi, plane]


async def test_a_handler_that_keeps_crashing_is_compensated_as_if_it_had_acted(settings: Settings) -> None:
    log: list[str] = []
    async with running(settings, sagas=[trip], workers=workers(log)) as stack:
        outcome = await stack.run("wkr_trip", {})
    assert outcome.status == "compensated"
    assert outcome.error is not None and outcome.error.code == "outcome_unknown"
    # Each saga attempt retried the crashing handler 3 times in the worker, twice over.
    assert log.count("fly") == 6
    # The seat may have been sold: its undo runs, then the taxi's, in reverse order.
    assert log[-2:] == ["unfly", "unride"]


broken = Saga("wkr_broken", [Step("book", participant="wkr_desk", command="book", timeout=5.0, retry=QUICK)])


async def test_a_handler_bug_is_logged_once_per_failure_with_its_traceback_and_shown_in_the_saga(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    desk = Worker("wkr_desk", transient_backoff=0.01)

    async def book(ctx: Context) -> None:
        return undefined_helper(ctx)  # type: ignore[name-defined]  # noqa: F821  # the bug

    desk.handler("book")(book)
    caplog.set_level(logging.INFO, logger="saga.participant")
    async with running(settings, sagas=[broken], workers=[desk]) as stack:
        outcome = await stack.run("wkr_broken", {})
        store = stack.orchestrators[0].engine.store  # type: ignore[union-attr]
        inst = await store.load(outcome.saga_id)
    # Two attempts of the saga, three calls each in the worker: two tracebacks, not six.
    tracebacks = [r for r in caplog.records if r.name == "saga.participant" and r.exc_info]
    assert len(tracebacks) == 2
    assert all(r.exc_info and r.exc_info[0] is NameError for r in tracebacks)
    assert "book (saga " in tracebacks[0].getMessage() and "raised 3 times" in tracebacks[0].getMessage()
    assert "Traceback" in caplog.text and "undefined_helper(ctx)" in caplog.text
    # What `saga show` prints as the step's error: the exception's type and message.
    assert inst is not None and inst.error is not None
    assert (inst.error.code, inst.error.message) == (
        "outcome_unknown",
        "NameError: name 'undefined_helper' is not defined",
    )

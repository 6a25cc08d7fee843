"""A saga declaration is checked when it is made: one SagaDefinitionError naming saga, step and problem."""

from __future__ import annotations

import dataclasses
from typing import Any, TypedDict

import msgspec
import pytest
from transitions import Machine

from statemachines import Retry, Saga, SagaDefinitionError, Step, compiled
from statemachines.sagas import order


def step(name: str = "reserve", **options: Any) -> Step:
    options.setdefault("participant", "inventory")
    options.setdefault("command", "reserve_stock")
    return Step(name, **options)


def refused(saga: str | None, step_name: str | None, *words: str, **saga_options: Any) -> SagaDefinitionError:
    """Declare a saga named `saga` with `saga_options` and return the error, checking where it points."""
    steps = saga_options.pop("steps", [step()])
    with pytest.raises(SagaDefinitionError) as caught:
        Saga(saga, steps, **saga_options)  # type: ignore[arg-type]
    error = caught.value
    assert isinstance(error, ValueError)
    message = str(error)
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    if step_name is None:
        assert error.step is None
        assert "step" not in message.split(":")[0]
    else:
        assert error.step == step_name
        assert f"step {step_name!r}" in message
    assert error.problem in message
    return error


# The list


def test_duplicate_step_names() -> None:
    error = refused("order", "reserve", "duplicate step name", steps=[step(), step("charge"), step()])
    assert error.saga == "order"
    assert str(error) == "saga 'order', step 'reserve': duplicate step name"


def test_compensable_step_after_the_pivot() -> None:
    steps = [
        step("reserve", compensation="release_stock"),
        step("ship", pivot=True),
        step("notify", compensation="unsend"),
    ]
    error = refused("order", "notify", "after the pivot 'ship'", "cannot have a compensation", steps=steps)
    assert error.saga == "order"


def test_a_compensable_pivot_and_plain_steps_after_it_are_fine() -> None:
    saga = Saga(
        "order", [step("reserve", compensation="release"), step("ship", pivot=True, compensation="x"), step("n")]
    )
    assert saga.pivot_index == 1


def test_empty_saga() -> None:
    error = refused("order", None, "at least one step", steps=[])
    assert error.saga == "order"
    assert str(error) == "saga 'order': a saga needs at least one step"


@pytest.mark.parametrize("timeout", [0, -1, -0.5, float("nan"), "10", True, None])
def test_timeout_must_be_positive(timeout: Any) -> None:
    error = refused(
        "order", "charge", "timeout must be a positive number", repr(timeout), steps=[step("charge", timeout=timeout)]
    )
    assert error.saga == "order"


def test_unknown_saga_option() -> None:
    error = refused("order", None, "unknown option 'retries'", retries=3)
    assert error.saga == "order"


def test_unknown_step_option() -> None:
    error = refused("order", "reserve", "unknown option 'timout'", steps=[step(timout=5)])
    assert error.saga == "order"


def test_unknown_retry_option() -> None:
    refused("order", "reserve", "unknown retry option 'atempts'", steps=[step(retry=Retry(atempts=3))])


def test_unknown_compensation_retry_option() -> None:
    policy = Retry(backof=1)
    refused(
        "order", "reserve", "unknown retry option 'backof'", steps=[step(compensation="x", compensation_retry=policy)]
    )


# The other checks the DSL makes


@pytest.mark.parametrize("name", ["Order", "order-v2", "", "2order", "_order", "order\n", "ordér", 5, None])
def test_saga_name_must_be_snake_case(name: Any) -> None:
    error = refused(name, None, "lower_snake_case")
    assert error.saga == (name if isinstance(name, str) else repr(name))


@pytest.mark.parametrize("name", ["Reserve", "reserve-stock", "", "1st", "reserve\n", "reserve stock"])
def test_step_name_must_be_snake_case(name: str) -> None:
    refused("order", name, "lower_snake_case", steps=[step(name)])


def test_step_name_that_is_not_a_string() -> None:
    refused("order", "7", "lower_snake_case", steps=[step(7)])  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["new", "completed", "compensated", "stuck", "compensating_reserve"])
def test_step_name_taken_by_a_compiler_state(name: str) -> None:
    refused("order", name, "taken by a state the compiler makes", steps=[step("reserve"), step(name)])


def test_two_pivots() -> None:
    steps = [step("reserve"), step("charge", pivot=True), step("ship", pivot=True)]
    refused("order", "ship", "only one step can be the pivot", "'charge' already is", steps=steps)


def test_steps_must_be_step_objects() -> None:
    refused("order", None, "steps must be Step, Parallel, ForEach or Await objects", steps=[step(), "charge"])


@pytest.mark.parametrize(
    ("policy", "words"),
    [
        (Retry(0), ["retry: retry attempts must be an integer of at least 1", "got 0"]),
        (Retry(-2), ["retry attempts must be an integer", "got -2"]),
        (Retry(1.5), ["retry attempts must be an integer", "got 1.5"]),  # type: ignore[arg-type]
        (Retry(True), ["retry attempts must be an integer", "got True"]),
        (Retry(backoff=-1), ["retry backoff must be a number of seconds, not negative", "got -1"]),
        (Retry(backoff="fast"), ["retry backoff must be a number", "got 'fast'"]),  # type: ignore[arg-type]
        (Retry(max_backoff=-0.1), ["retry max_backoff must be a number of seconds", "got -0.1"]),
        (Retry(max_backoff=float("nan")), ["retry max_backoff must be a number", "got nan"]),
        (Retry(multiplier=0.5), ["retry multiplier must be a number of at least 1", "got 0.5"]),
        (Retry(multiplier=None), ["retry multiplier must be a number", "got None"]),  # type: ignore[arg-type]
        (Retry(jitter=1.5), ["retry jitter must be a number between 0 and 1", "got 1.5"]),
        (Retry(jitter=-0.1), ["retry jitter must be a number between 0 and 1", "got -0.1"]),
        (Retry(retry_on="unavailable"), ["retry_on must be a list of error codes", "got 'unavailable'"]),
        (Retry(retry_on=5), ["retry_on must be a list of error codes", "got 5"]),  # type: ignore[arg-type]
        (Retry(retry_on=["unavailable", 503]), ["retry_on must be a list of error codes"]),  # type: ignore[list-item]
        (Retry(retry_on=[""]), ["retry_on must be a list of error codes"]),
    ],
)
def test_bad_retry_values(policy: Retry, words: list[str]) -> None:
    refused("order", "charge", *words, steps=[step("reserve"), step("charge", retry=policy)])


def test_bad_compensation_retry_is_named_as_such() -> None:
    bad = step("charge", compensation="refund", compensation_retry=Retry(0))
    refused("order", "charge", "compensation_retry: retry attempts must be an integer", steps=[bad])


def test_retry_must_be_a_retry() -> None:
    refused("order", "charge", "retry must be a Retry, got 3", steps=[step("charge", retry=3)])


def test_valid_retry_values_are_kept() -> None:
    policy = Retry(5, backoff=0, multiplier=1, max_backoff=0, jitter=1, retry_on=("unavailable", "busy"))
    saga = Saga("order", [step(retry=policy)])
    assert saga.steps[0].retry.retry_on == frozenset({"unavailable", "busy"})
    assert Retry(retry_on=[]).retry_on == frozenset()
    assert Retry().retry_on is None


@pytest.mark.parametrize("payload", ["order_id", ["order_id", 1], 42, b"order_id"])
def test_bad_payload(payload: Any) -> None:
    refused("order", "reserve", "payload must be a callable or a list of data keys", steps=[step(payload=payload)])


@pytest.mark.parametrize("field", ["participant", "command"])
@pytest.mark.parametrize("value", ["", None, 3])
def test_participant_and_command_must_be_named(field: str, value: Any) -> None:
    refused("order", "reserve", f"{field} must be a non-empty string", steps=[step(**{field: value})])


@pytest.mark.parametrize("value", ["", 3])
def test_compensation_must_be_a_name(value: Any) -> None:
    refused("order", "reserve", "compensation must be a non-empty string or None", steps=[step(compensation=value)])


@pytest.mark.parametrize("version", [0, -1, "1", True, 1.5, None])
def test_bad_version(version: Any) -> None:
    refused("order", None, "version must be a positive integer", repr(version), version=version)


@pytest.mark.parametrize("deadline", [0, -5, float("nan"), "10", True])
def test_bad_deadline(deadline: Any) -> None:
    refused("order", None, "deadline must be a positive number of seconds", repr(deadline), deadline=deadline)


class ArrayData(msgspec.Struct, array_like=True):
    order_id: str


@pytest.mark.parametrize("data", [123, "OrderData", int, list[str], ArrayData])
def test_data_must_be_an_object_type(data: Any) -> None:
    refused("order", None, "data must be a type msgspec converts a JSON object to", data=data)


class StructData(msgspec.Struct):
    order_id: str


class DictData(TypedDict):
    order_id: str


@dataclasses.dataclass
class ClassData:
    order_id: str


@pytest.mark.parametrize("data", [StructData, DictData, ClassData, dict, dict[str, int]])
def test_data_object_types_are_accepted(data: Any) -> None:
    assert Saga("order", [step()], data=data).data is data


def test_the_first_problem_is_reported_alone() -> None:
    with pytest.raises(SagaDefinitionError) as caught:
        Saga("order", [step("reserve", timeout=0, participant="")])
    # One exception, one problem, in declaration order of the checks.
    assert caught.value.problem == "participant must be a non-empty string, got ''"


# A valid saga


def shop(**options: Any) -> Saga:
    return Saga(
        "shop",
        [
            step("reserve", compensation="release_stock"),
            step("charge", participant="payment", command="charge", compensation="refund"),
            step("ship", participant="shipping", command="ship", pivot=True),
            step("notify", participant="mail", command="send_mail"),
        ],
        **options,
    )


def test_a_valid_saga_compiles_to_a_transitions_machine() -> None:
    saga = shop()
    machine = compiled(saga).machine
    assert isinstance(machine, Machine)
    assert compiled(saga) is compiled(saga)  # built once
    assert set(machine.states) == {
        "new",
        "reserve",
        "compensating_reserve",
        "charge",
        "compensating_charge",
        "ship",
        "notify",
        "completed",
        "compensated",
        "stuck",
    }
    assert machine.initial == "new"


def test_the_machine_has_no_auto_transitions() -> None:
    machine = compiled(shop()).machine
    assert machine.auto_transitions is False
    assert not [name for name in machine.events if name.startswith("to_")]
    assert set(machine.events) == {"start", "succeeded", "failed", "timed_out", "resend", "abort", "resume", "fault"}


def test_expired_is_a_trigger_only_when_a_deadline_is_declared() -> None:
    assert "expired" not in compiled(shop()).machine.events
    assert "expired" in compiled(shop(deadline=60)).machine.events


def test_the_shipped_order_saga_compiles() -> None:
    machine = compiled(order)
    assert set(machine.machine.states) == {
        "new",
        "reserve_inventory",
        "compensating_reserve_inventory",
        "check_fraud",
        "charge_payment",
        "compensating_charge_payment",
        "create_shipment",
        "completed",
        "compensated",
        "stuck",
    }
    assert machine.step_states["compensating_charge_payment"] == (2, "compensate")
    assert machine.status_of["create_shipment"] == "running"
    assert machine.status_of["compensating_reserve_inventory"] == "compensating"

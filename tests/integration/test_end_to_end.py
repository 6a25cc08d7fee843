"""Both shipped sagas over real RabbitMQ and Redis, checked against the participants' own state."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from participants.examples import bookings, inventory, payment
from tests.integration.conftest import Stack

ORDER_STEPS = ["reserve_inventory", "charge_payment", "create_shipment"]
TRIP_STEPS = ["book_flight", "book_hotel", "rent_car"]


def order(**extra: Any) -> dict[str, Any]:
    return {
        "order_id": f"o-{uuid.uuid4().hex[:6]}",
        "customer_id": "c-1",
        "items": [{"sku": "sku-1", "qty": 2}, {"sku": "sku-2", "qty": 1}],
        "amount": 4200,
        **extra,
    }


def trip(**extra: Any) -> dict[str, Any]:
    return {"trip_id": f"t-{uuid.uuid4().hex[:6]}", "customer_id": "c-1", "destination": "rome", "nights": 3, **extra}


async def stock_levels(stack: Stack) -> dict[str, int]:
    redis = stack.workers[0].redis
    assert redis is not None
    return {sku: await inventory.stock.level(redis, stack.names, sku) for sku in ("sku-1", "sku-2")}


async def ledger(stack: Stack, saga_id: str) -> tuple[int, int]:
    """(charged, refunded) for one saga, from the payment participant's own records."""
    redis = stack.workers[0].redis
    assert redis is not None
    key = f"{saga_id}:charge_payment"
    taken = await payment.credit.taken(redis, stack.names)
    charged = sum(taken[key].values()) if key in taken else 0
    refunded = charged if key in await payment.credit.returned(redis, stack.names) else 0
    return charged, refunded


async def test_order_completes_and_each_participant_acted_once(stack: Stack) -> None:
    before = await stock_levels(stack)
    outcome = await stack.run("order", order())
    assert outcome.status == "completed"
    assert outcome.data["shipment_id"].endswith(":create_shipment")
    assert await stock_levels(stack) == {"sku-1": before["sku-1"] - 2, "sku-2": before["sku-2"] - 1}
    assert await ledger(stack, outcome.saga_id) == (4200, 0)
    inst = await stack.client.status(outcome.saga_id)
    assert inst is not None and inst.state == "completed"


async def test_trip_completes(stack: Stack) -> None:
    outcome = await stack.run("trip", trip())
    assert outcome.status == "completed"
    assert {"flight_booking", "hotel_booking", "car_booking"} <= set(outcome.data)


@pytest.mark.parametrize("failing", ORDER_STEPS)
async def test_order_failure_compensates_exactly_the_completed_steps(stack: Stack, failing: str) -> None:
    before = await stock_levels(stack)
    outcome = await stack.run("order", order(fail_at=[failing]))
    assert outcome.status == "compensated"
    assert outcome.error is not None and outcome.error.code == "asked_to_fail"
    assert await stock_levels(stack) == before, "stock is restored"
    charged, refunded = await ledger(stack, outcome.saga_id)
    assert charged == refunded, "the ledger is balanced"
    assert charged == (4200 if failing == "create_shipment" else 0)
    history = await stack.orchestrators[0].engine.store.history(outcome.saga_id)  # type: ignore[union-attr]
    # The compensations that went out as commands (a failed step's own group state undoes nothing).
    compensated = [h.step for h in history if h.action == "compensate" and h.attempt >= 1 and h.event == "succeeded"]
    completed = ORDER_STEPS[: ORDER_STEPS.index(failing)]
    assert compensated == list(reversed(completed))


@pytest.mark.parametrize("failing", TRIP_STEPS)
async def test_trip_failure_cancels_the_bookings_made(stack: Stack, failing: str) -> None:
    outcome = await stack.run("trip", trip(fail_at=[failing]))
    assert outcome.status == "compensated"
    redis = stack.workers[0].redis
    assert redis is not None
    for participant, step in (("flight", "book_flight"), ("hotel", "book_hotel"), ("car", "rent_car")):
        what = {"flight": "seats", "hotel": "rooms", "car": "cars"}[participant]
        capacity = bookings.Stock(participant, what)
        key = f"{outcome.saga_id}:{step}"
        booked = key in await capacity.taken(redis, stack.names)
        cancelled = key in await capacity.returned(redis, stack.names)
        # The bookings go out at once: all but the failing one may have been made, and each made is cancelled.
        if step == failing:
            assert not booked, f"{step} was refused"
        else:
            assert cancelled or not booked, f"{step} was booked, so it is cancelled"


async def test_realistic_refusals_compensate(stack: Stack) -> None:
    out_of_stock = await stack.run("order", order(items=[{"sku": "sku-rare", "qty": 50}]))
    assert out_of_stock.status == "compensated"
    assert out_of_stock.error is not None and out_of_stock.error.code == "out_of_stock"
    # Above the fraud check's limit: refused before any charge is tried.
    declined = await stack.run("order", order(amount=10**12))
    assert declined.error is not None and declined.error.code == "fraud_suspected"
    assert await ledger(stack, declined.saga_id) == (0, 0)
    no_room = await stack.run("trip", trip(destination="atlantis"))
    assert no_room.status == "compensated" and no_room.error is not None
    # The three bookings go out at once: whichever refusal is applied first is the saga's error.
    assert no_room.error.code in ("no_seat", "no_room", "no_car")


async def test_starting_the_same_id_twice_starts_one_saga(stack: Stack) -> None:
    before = await stock_levels(stack)
    saga_id = f"dup-{uuid.uuid4().hex[:6]}"
    data = order()
    first = await stack.run("order", data, saga_id=saga_id)
    second = await stack.run("order", data, saga_id=saga_id)
    assert first.status == second.status == "completed"
    assert await stock_levels(stack) == {"sku-1": before["sku-1"] - 2, "sku-2": before["sku-2"] - 1}
    assert await ledger(stack, saga_id) == (4200, 0)
    history = await stack.orchestrators[0].engine.store.history(saga_id)  # type: ignore[union-attr]
    assert [h.event for h in history].count("start") == 1

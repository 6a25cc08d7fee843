"""The sagas that ship with the project: an order and a trip booking.

The order checks for fraud above 1000.00 (a guarded step) and pays through
a backup processor when the first is down (a fallback behind a circuit
breaker); the trip books its flight, hotel and car at once (a Parallel).

The orchestrator runs these when `--sagas` is not given; the example
participants in `participants.examples` answer their commands.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from statemachines.dsl import CircuitBreaker, Parallel, Retry, Saga, Step

# The data types say what a start may carry; one that does not fit is refused
# with the reason before any participant sees it (a negative amount would
# credit a card, a quantity of 0 reserve nothing).
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Quantity = Annotated[int, msgspec.Meta(ge=1, le=10_000)]
Cents = Annotated[int, msgspec.Meta(ge=1, le=1_000_000_000_000)]
Nights = Annotated[int, msgspec.Meta(ge=1, le=90)]
StepNames = Annotated[list[str], msgspec.Meta(max_length=10)]


class Item(msgspec.Struct):
    sku: Key
    qty: Quantity


class OrderData(msgspec.Struct):
    order_id: Key
    customer_id: Key
    items: Annotated[list[Item], msgspec.Meta(min_length=1, max_length=100)]
    amount: Cents
    # Step names whose participant should fail, so that every path can be
    # reached by hand; see participants.examples.
    fail_at: StepNames = []


class TripData(msgspec.Struct):
    trip_id: Key
    customer_id: Key
    destination: Key
    nights: Nights = 1
    fail_at: StepNames = []


# Business refusals (out of stock, card declined) are final; only a
# participant being briefly unable to answer is worth another attempt.
TRANSIENT = ("unavailable",)

PAYMENT = ("order_id", "customer_id", "amount", "fail_at")

order = Saga(
    "order",
    # 2: the fraud check and the backup payment.
    version=2,
    data=OrderData,
    # Five timeouts or `unavailable` within 30 s and payment is not tried for
    # a minute: orders go straight to the backup processor instead.
    breakers={"payment": CircuitBreaker(failures=5, window=30, cool_down=60)},
    steps=[
        Step(
            "reserve_inventory",
            participant="inventory",
            command="reserve_stock",
            compensation="release_stock",
            payload=("order_id", "items", "fail_at"),
            timeout=10.0,
            retry=Retry(3, backoff=0.2, retry_on=TRANSIENT),
        ),
        Step(
            "check_fraud",
            participant="fraud",
            command="check_fraud",
            when="amount > 100000",
            payload=PAYMENT,
            timeout=10.0,
            retry=Retry(3, backoff=0.2, retry_on=TRANSIENT),
        ),
        Step(
            "charge_payment",
            participant="payment",
            command="charge",
            compensation="refund",
            payload=PAYMENT,
            timeout=10.0,
            retry=Retry(3, backoff=0.2, retry_on=TRANSIENT),
            fallback=Step(
                "charge_backup",
                participant="backup_payment",
                command="charge",
                compensation="refund",
                payload=PAYMENT,
                timeout=10.0,
                retry=Retry(3, backoff=0.2, retry_on=TRANSIENT),
            ),
        ),
        Step(
            "create_shipment",
            participant="shipping",
            command="create_shipment",
            payload=("order_id", "customer_id", "items", "fail_at"),
            timeout=10.0,
            retry=Retry(3, backoff=0.2, retry_on=TRANSIENT),
            pivot=True,
        ),
    ],
)

BOOKING = ("trip_id", "customer_id", "destination", "nights", "fail_at")

trip = Saga(
    "trip",
    # 2: the bookings go out at once.
    version=2,
    data=TripData,
    steps=[
        Parallel(
            "book",
            [
                Step(
                    "book_flight",
                    participant="flight",
                    command="book_flight",
                    compensation="cancel_flight",
                    payload=("trip_id", "customer_id", "destination", "fail_at"),
                    timeout=10.0,
                    retry=Retry(3, backoff=0.2, retry_on=TRANSIENT),
                ),
                Step(
                    "book_hotel",
                    participant="hotel",
                    command="book_hotel",
                    compensation="cancel_hotel",
                    payload=BOOKING,
                    timeout=10.0,
                    retry=Retry(3, backoff=0.2, retry_on=TRANSIENT),
                ),
                Step(
                    "rent_car",
                    participant="car",
                    command="rent_car",
                    compensation="return_car",
                    payload=BOOKING,
                    timeout=10.0,
                    retry=Retry(3, backoff=0.2, retry_on=TRANSIENT),
                ),
            ],
        ),
    ],
)

SAGAS = [order, trip]

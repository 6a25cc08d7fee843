"""The order saga as a Python team would write it with Celery: the yardstick of `saga bench --against celery`.

Three tasks in a chain, `chain(reserve, charge, ship).apply_async(link_error=compensate)`,
on a RabbitMQ broker with a Redis result backend, served by a prefork
worker of 2 (`saga bench` starts it as a child process). Each step makes
one Redis write, as each of our participants records its step; a step in
the order's `fail_at` raises, and the errback undoes the steps before it,
one Redis write each, as our compensations do. The saga's end (completed
or compensated) is pushed to a Redis list the driver waits on: the
counterpart of our lifecycle event.

Celery's defaults stand (they are what a team gets): classic durable
queues, persistent messages, acks after the task returns
(`task_acks_late`, the closest to our manual acks), no publisher
confirms. Everything lives under the bench's namespace: the queue, its
exchange and every Redis key, so the bench removes it whole.

Settings come from the environment, as for every `saga` process
(SAGA_AMQP_URL, SAGA_REDIS_URL, SAGA_NAMESPACE).
"""

from __future__ import annotations

import json
from typing import Any

from celery import Celery, chain
from celery.canvas import Signature
from redis import Redis

from participants.edge.settings import Settings

STEPS = ("reserve_inventory", "charge_payment", "create_shipment")
settings = Settings.from_env()


def queue_name(namespace: str) -> str:
    return f"{namespace}.celery"


def done_key(namespace: str) -> str:
    """The Redis list each finished saga's (id, status) is pushed to."""
    return f"{namespace}:celery:done"


def _broker_url(amqp_url: str) -> str:
    # kombu's py-amqp transport: Celery's default for RabbitMQ.
    return "py" + amqp_url if amqp_url.startswith("amqp") else amqp_url


def _conf(settings: Settings) -> dict[str, Any]:
    namespace = settings.namespace
    return {
        "broker_url": _broker_url(settings.amqp_url),
        "result_backend": settings.redis_url,
        "task_default_queue": queue_name(namespace),
        "task_default_exchange": queue_name(namespace),
        "task_default_routing_key": queue_name(namespace),
        "task_acks_late": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_expires": 600,
        "result_backend_transport_options": {"global_keyprefix": f"{namespace}:celery:"},
        "worker_concurrency": 2,
        "worker_hijack_root_logger": False,
        "worker_enable_remote_control": False,  # no pidbox queues outside the namespace
        "worker_send_task_events": False,
        "broker_connection_retry_on_startup": True,
    }


app = Celery("saga_bench")
app.conf.update(_conf(settings))


def configure(chosen: Settings) -> None:
    """Point the driver's side at `chosen` (the bench's namespace), before it first sends."""
    global settings
    settings = chosen
    app.conf.update(_conf(chosen))


_redis: Redis | None = None


def _store() -> Redis:
    global _redis  # one connection per worker process, made after the fork
    if _redis is None:
        _redis = Redis.from_url(settings.redis_url)
    return _redis


def _step(order: dict[str, Any], step: str) -> dict[str, Any]:
    if step in order.get("fail_at", ()):
        raise RuntimeError(f"{step} refused by design")
    _store().set(f"{settings.namespace}:celery:{order['saga_id']}:{step}", json.dumps(order["amount"]))
    return {**order, "done": [*order.get("done", []), step]}


@app.task(name="reserve_inventory")  # type: ignore[untyped-decorator]
def reserve_inventory(order: dict[str, Any]) -> dict[str, Any]:
    return _step(order, "reserve_inventory")


@app.task(name="charge_payment")  # type: ignore[untyped-decorator]
def charge_payment(order: dict[str, Any]) -> dict[str, Any]:
    return _step(order, "charge_payment")


@app.task(name="create_shipment")  # type: ignore[untyped-decorator]
def create_shipment(order: dict[str, Any]) -> dict[str, Any]:
    done = _step(order, "create_shipment")
    _store().rpush(done_key(settings.namespace), json.dumps([order["saga_id"], "completed"]))
    return done


@app.task(name="compensate")  # type: ignore[untyped-decorator]
def compensate(request: Any, exc: BaseException, traceback: Any) -> None:
    """The errback: undo, newest first, the steps the failed one's input says were done."""
    order = request.args[0]
    store = _store()
    for step in reversed(order.get("done", [])):
        store.set(f"{settings.namespace}:celery:{order['saga_id']}:{step}", "compensated")
    store.rpush(done_key(settings.namespace), json.dumps([order["saga_id"], "compensated"]))


def order_chain(order: dict[str, Any]) -> Signature:
    return chain(reserve_inventory.s(order), charge_payment.s(), create_shipment.s())


def start(order: dict[str, Any]) -> None:
    order_chain(order).apply_async(link_error=compensate.s())

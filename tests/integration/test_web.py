"""`saga web`'s HTTP API over real HTTP: start, read, list, act with and without the token, graphs, event streams."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from participants.edge.settings import Settings
from participants.worker import Context, Worker
from statemachines.dsl import Saga, Step
from statemachines.sagas import SAGAS
from tests.integration.conftest import Stack, eventually, example_workers, running
from tests.integration.scripted import cli
from tests.integration.test_end_to_end import order
from tests.integration.webserver import TOKEN, serving

AUTH = {"Authorization": f"Bearer {TOKEN}"}
STEPS = 5
# Five steps that take a moment each, so a stream can be cut in the middle of the saga.
slow = Saga(
    "web_slow",
    steps=[Step(f"s{n}", participant="web_desk", command="work", compensation="undo") for n in range(STEPS)],
)


def desk(delay: float) -> Worker:
    worker = Worker("web_desk")

    @worker.handler("work")
    async def work(ctx: Context) -> dict[str, Any]:
        await asyncio.sleep(delay)
        return {ctx.command.step: "done"}

    @worker.handler("undo")
    async def undo(ctx: Context) -> None:
        return None

    return worker


@pytest.fixture
async def web(settings: Settings) -> AsyncIterator[tuple[Stack, httpx.AsyncClient]]:
    sagas = [*SAGAS, slow]
    async with (
        running(settings, sagas=sagas, workers=[*example_workers(), desk(0.25)]) as stack,
        serving(settings, sagas) as url,
        httpx.AsyncClient(base_url=url, timeout=20) as http,
    ):
        yield stack, http


async def events(
    http: httpx.AsyncClient, saga_id: str, last_event_id: str | None = None, stop_after: int | None = None
) -> list[tuple[str, str | None, dict[str, Any]]]:
    """(event, id, data) of the saga's stream, until `end` or `stop_after` step events (then hang up)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    got: list[tuple[str, str | None, dict[str, Any]]] = []
    async with http.stream("GET", f"/api/sagas/{saga_id}/events", headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if "data" in fields:
                got.append((fields.get("event", "message"), fields.get("id"), json.loads(fields["data"])))
                if got[-1][0] == "end":
                    return got
                if stop_after is not None and len(got) == stop_after:
                    return got
            fields = {}
    return got


async def test_the_stream_gives_every_step_in_order_and_resumes_after_a_reconnect(
    web: tuple[Stack, httpx.AsyncClient],
) -> None:
    stack, http = web
    saga_id = await stack.client.start("web_slow", {})
    await eventually(lambda: _exists(http, saga_id))
    first = await events(http, saga_id, stop_after=3)
    assert [e for e, _, _ in first] == ["step"] * 3
    # While nobody listens the saga moves on; the resumed stream must bring those steps too.
    await eventually(lambda: _entries_beyond(http, saga_id, 4))
    rest = await events(http, saga_id, last_event_id=first[-1][1])
    assert rest[-1][0] == "end" and rest[-1][2]["status"] == "completed"
    streamed = first + rest[:-1]
    history = (await http.get(f"/api/sagas/{saga_id}")).json()["history"]
    assert [i for _, i, _ in streamed] == [h["id"] for h in history], "every step once, in order"
    assert [d["event"] for _, _, d in streamed] == [h["event"] for h in history]
    assert [d["dest"] for _, _, d in streamed if d["source"] != d["dest"]] == [
        *(f"s{n}" for n in range(STEPS)),
        "completed",
    ]
    # Reconnecting after the end gives the outcome again, and no step twice.
    again = await events(http, saga_id, last_event_id=streamed[-1][1])
    assert [e for e, _, _ in again] == ["end"]


async def _exists(http: httpx.AsyncClient, saga_id: str) -> bool:
    return (await http.get(f"/api/sagas/{saga_id}")).status_code == 200


async def _entries_beyond(http: httpx.AsyncClient, saga_id: str, count: int) -> bool:
    return len((await http.get(f"/api/sagas/{saga_id}")).json()["history"]) > count


async def test_a_start_with_an_idempotency_key_starts_one_saga_with_that_id(
    web: tuple[Stack, httpx.AsyncClient],
) -> None:
    _, http = web
    key = f"o-{uuid.uuid4().hex[:8]}"
    body = {"saga_type": "order", "data": order()}
    started = await http.post("/api/sagas", json=body, headers={**AUTH, "Idempotency-Key": key})
    assert started.status_code == 202 and started.json()["saga_id"] == key
    done = await eventually(lambda: _status(http, key, "completed"))
    again = await http.post("/api/sagas", json=body, headers={**AUTH, "Idempotency-Key": key})
    assert again.status_code == 200 and again.json() == {"saga_id": key, "existed": True, "url": f"/api/sagas/{key}"}
    assert (await http.get(f"/api/sagas/{key}")).json()["rev"] == done["rev"]
    listed = (await http.get("/api/sagas", params={"type": "order", "status": "completed"})).json()
    assert [s["saga_id"] for s in listed] == [key]
    assert (await http.get("/api/sagas", params={"status": "stuck"})).json() == []
    unknown = await http.post("/api/sagas", json={"saga_type": "nope"}, headers=AUTH)
    assert unknown.status_code == 404 and "unknown saga type 'nope'" in unknown.json()["detail"]
    bad_key = await http.post("/api/sagas", json=body, headers={**AUTH, "Idempotency-Key": "x" * 300})
    assert bad_key.status_code == 422


async def _status(http: httpx.AsyncClient, saga_id: str, status: str) -> dict[str, Any] | None:
    response = await http.get(f"/api/sagas/{saga_id}")
    doc: dict[str, Any] = response.json()
    return doc if response.status_code == 200 and doc["status"] == status else None


async def test_changing_a_saga_needs_the_token(web: tuple[Stack, httpx.AsyncClient]) -> None:
    stack, http = web
    saga_id = await stack.client.start("web_slow", {})
    await eventually(lambda: _exists(http, saga_id))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        refused = await http.post(f"/api/sagas/{saga_id}/compensate", headers=headers)
        assert refused.status_code == 401, headers
        assert (await http.post("/api/sagas", json={"saga_type": "order"}, headers=headers)).status_code == 401
    forced = await http.post(f"/api/sagas/{saga_id}/compensate", headers=AUTH)
    assert forced.status_code == 200 and forced.json()["changed"] and forced.json()["status"] == "compensating"
    await eventually(lambda: _status(http, saga_id, "compensated"), timeout=20)
    retried = (await http.post(f"/api/sagas/{saga_id}/retry", headers=AUTH)).json()
    assert retried["changed"] is False and "not stuck" in retried["note"]
    assert (await http.get("/api/sagas/no-such-saga")).status_code == 404


async def test_without_a_token_set_no_action_is_allowed(settings: Settings) -> None:
    async with serving(settings, SAGAS, token=None) as url, httpx.AsyncClient(base_url=url) as http:
        refused = await http.post("/api/sagas", json={"saga_type": "order"}, headers=AUTH)
        assert refused.status_code == 403 and "SAGA_WEB_TOKEN" in refused.json()["detail"]


async def test_the_graph_highlights_the_path_and_the_api_is_described(web: tuple[Stack, httpx.AsyncClient]) -> None:
    stack, http = web
    outcome = await stack.run("order", order(fail_at=["charge_payment"]))
    picture = await http.get(f"/api/types/order/graph.svg?saga={outcome.saga_id}")
    assert picture.headers["content-type"] == "image/svg+xml"
    svg = picture.text
    assert "<svg" in svg and "fde68a" in svg
    spec = (await http.get("/openapi.json")).json()
    assert {"/api/sagas", "/api/sagas/{saga_id}", "/api/sagas/{saga_id}/events", "/api/sagas/{saga_id}/retry"} <= set(
        spec["paths"]
    )
    page = (await http.get("/")).text
    assert "http://" not in page and "https://" not in page, "nothing from elsewhere"
    assert TOKEN not in page and TOKEN not in (await http.get("/static/app.js")).text
    assert (await http.get("/docs")).status_code == 404  # Swagger UI would come from a CDN


async def test_a_types_stream_gives_the_status_changes_of_its_sagas_only(web: tuple[Stack, httpx.AsyncClient]) -> None:
    stack, http = web
    seen: list[dict[str, Any]] = []
    subscribed = asyncio.Event()

    async def listen() -> None:
        async with http.stream("GET", "/api/types/order/events") as response:
            async for line in response.aiter_lines():
                subscribed.set()  # the first line comes once the stream listens
                if line.startswith("data: "):
                    seen.append(json.loads(line.removeprefix("data: ")))
                    if seen[-1]["status"] == "completed":
                        return

    listening = asyncio.create_task(listen())
    await asyncio.wait_for(subscribed.wait(), 10)
    await stack.client.start("web_slow", {})
    outcome = await stack.run("order", order())
    await asyncio.wait_for(listening, 10)
    assert {s["saga_type"] for s in seen} == {"order"}
    assert [s["saga_id"] for s in seen] == [outcome.saga_id] * len(seen)
    assert seen[-1]["status"] == "completed"


async def test_saga_web_with_a_service_away_says_so_in_one_sentence(settings: Settings) -> None:
    result = await cli(settings, "web", "--port", "0", "--redis-url", "redis://:s3cret@127.0.0.1:1/0")
    assert result.returncode == 3
    assert result.stderr.startswith("saga: Cannot reach Redis at redis://:***@127.0.0.1:1/0")
    assert len(result.stderr.strip().splitlines()) == 1 and "s3cret" not in result.stderr

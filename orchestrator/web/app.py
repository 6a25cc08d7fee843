"""The HTTP API and the web view: start, read, list, retry, compensate and signal sagas, their graphs, live streams.

FastAPI gives the routes their types and the OpenAPI document (/openapi.json);
the pages are static files of ours (static/), which read the same API.
Nothing comes from a CDN, so FastAPI's own /docs page (which loads Swagger UI
from one) is off.

Reading needs nothing; the actions that change a saga (start, retry,
compensate, signal) need `Authorization: Bearer $SAGA_WEB_TOKEN`, and are refused
while no token is set. Neither the token nor a service URL appears on a page.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import msgspec
from aio_pika.abc import AbstractIncomingMessage, ExchangeType
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from orchestrator import progress
from orchestrator.client import SagaClient, SignalRefused
from orchestrator.engine import Engine
from orchestrator.registry import Registry, UnknownSaga
from orchestrator.store import RedisStore
from orchestrator.web.graphs import svg
from participants.edge.connections import connect_redis
from participants.edge.settings import Settings
from statemachines.decide import Abort, Event, Resume
from statemachines.instance import SagaInstance
from statemachines.messages import SagaEvent, decode

STATIC = Path(__file__).parent / "static"
# A saga id, as the API takes it: it becomes a Redis key, so it is bounded here.
SAGA_ID = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$"
SagaId = Annotated[str, PathParam(pattern=SAGA_ID, description="the saga id")]
NO_CDN_PAGES: dict[str, Any] = {"docs_url": None, "redoc_url": None}
# How long an idle event stream waits before a comment line keeps proxies from closing it.
KEEPALIVE = 15.0


class StartRequest(BaseModel):
    saga_type: str = Field(max_length=200, description="a saga type this server runs")
    data: dict[str, Any] = Field(default_factory=dict, description="the saga data")


class Started(BaseModel):
    saga_id: str
    existed: bool = Field(description="the saga existed already: the start changed nothing")
    url: str


class SignalRequest(BaseModel):
    data: dict[str, Any] = Field(default_factory=dict, description="merged into the saga data when accepted")
    signal_id: str | None = Field(
        default=None,
        pattern=SAGA_ID,
        description="an idempotency key: the same signal again is applied once (default: the Idempotency-Key "
        "header, else a new one)",
    )


class SignalAnswer(BaseModel):
    saga_id: str
    name: str
    signal_id: str
    outcome: str = Field(description="accepted (or refused, with the error, as the body of a 4xx)")
    duplicate: bool = Field(description="accepted before under this signal id: nothing was applied again")


# How a refused signal is answered over HTTP.
SIGNAL_STATUS = {"unknown_saga": 404, "invalid_signal": 422}
# How long the API waits for an orchestrator to answer a signal.
SIGNAL_WAIT = 10.0


class ActionResult(BaseModel):
    saga_id: str
    changed: bool
    status: str
    state: str
    note: str = ""


class Hub:
    """Lifecycle events of the namespace from `<ns>.events`, fanned out to the open streams."""

    def __init__(self) -> None:
        self.subscribers: set[asyncio.Queue[SagaEvent]] = set()

    async def on_event(self, message: AbstractIncomingMessage) -> None:
        with contextlib.suppress(Exception):
            event = decode(SagaEvent, message.body)
            for queue in self.subscribers:
                queue.put_nowait(event)

    @contextlib.contextmanager
    def subscribe(self) -> Any:
        queue: asyncio.Queue[SagaEvent] = asyncio.Queue()
        self.subscribers.add(queue)
        try:
            yield queue
        finally:
            self.subscribers.discard(queue)


class Web:
    """What the routes share: the store, a client to start sagas, an engine for operators' events."""

    def __init__(self, settings: Settings, registry: Registry, token: str | None, every: float = 0.2) -> None:
        self.settings = settings
        self.registry = registry
        self.token = token
        self.every = every
        self.hub = Hub()
        self._client: SagaClient | None = None
        self._engine: Engine | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def client(self) -> SagaClient:
        assert self._client is not None
        return self._client

    @property
    def store(self) -> RedisStore:
        return self.client.store

    @property
    def engine(self) -> Engine:
        assert self._engine is not None
        return self._engine

    async def open(self) -> None:
        """Connect to RabbitMQ and Redis (once): an unreachable service is `Unreachable`, one sentence."""
        if self._client is not None:
            return
        self._client = client = await SagaClient.connect(self.settings)
        # The engine gets a Redis of its own: closing it forgets the outboxes it had confirmed.
        store = RedisStore(
            await connect_redis(self.settings.redis_url), self.settings.names, self.settings.retention_seconds
        )
        await store.connect()
        self._engine = Engine(store, client.broker, self.registry, self.settings.names)
        self._tasks.append(asyncio.create_task(self._engine.clear_confirmed()))
        channel = await client.broker.connection.channel()
        exchange = await channel.declare_exchange(self.settings.names.events_exchange, ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, "#")
        await queue.consume(self.hub.on_event, no_ack=True)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.engine.close()
        await self.client.close()

    def authorize(self, authorization: str | None) -> None:
        if not self.token:
            raise HTTPException(403, "changing sagas is off: start `saga web` with SAGA_WEB_TOKEN set")
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), self.token.encode()):
            raise HTTPException(401, "a bearer token is needed for this", headers={"WWW-Authenticate": "Bearer"})

    async def saga(self, saga_id: str) -> SagaInstance:
        inst = await self.store.load(saga_id)
        if inst is None:
            raise HTTPException(404, f"no saga {saga_id!r}")
        return inst

    async def operate(self, saga_id: str, event: Event) -> ActionResult:
        await self.saga(saga_id)
        decision = await self.engine.apply(saga_id, event)
        inst = decision.instance
        assert inst is not None
        return ActionResult(
            saga_id=saga_id, changed=decision.changed, status=inst.status, state=inst.state, note=decision.note
        )


def _doc(inst: SagaInstance) -> dict[str, Any]:
    doc: dict[str, Any] = msgspec.to_builtins(inst)
    doc.pop("trace", None)
    doc.pop("reply_to", None)
    return doc


SUMMARY = ("saga_id", "saga_type", "status", "state", "step", "attempt", "created_at", "updated_at")


def _summary(inst: SagaInstance) -> dict[str, Any]:
    """What a list row shows of a saga."""
    return {name: getattr(inst, name) for name in SUMMARY}


def _sse(data: Any, event: str | None = None, id: str | None = None) -> bytes:
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    lines.append(f"data: {json.dumps(data, separators=(',', ':'))}")
    return ("\n".join(lines) + "\n\n").encode()


def create_app(web: Web) -> FastAPI:
    """The app over `web`'s namespace; opened at startup if it is not yet, closed at shutdown."""
    registry = web.registry

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await web.open()
        try:
            yield
        finally:
            await web.close()

    about = "Start, read, retry and compensate sagas; follow them as they run."
    # FastAPI's /docs and /redoc pages load their scripts from a CDN: off, the OpenAPI document stays.
    app = FastAPI(title="Saga Orchestrator", version="1", description=about, lifespan=lifespan, **NO_CDN_PAGES)
    app.state.web = web
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def authorized(authorization: Annotated[str | None, Header()] = None) -> None:
        web.authorize(authorization)

    guarded = [Depends(authorized)]

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/sagas/{saga_id}", include_in_schema=False)
    async def saga_page(saga_id: SagaId) -> FileResponse:
        return FileResponse(STATIC / "saga.html")

    @app.get("/api/types", summary="the saga types this server runs")
    async def types() -> list[dict[str, Any]]:
        return [
            {"saga_type": s.name, "version": s.version, "steps": [step.name for step in s.steps]}
            for s in sorted(registry.sagas, key=lambda s: (s.name, s.version))
        ]

    @app.get("/api/sagas", summary="sagas, newest first, filtered by status and type")
    async def list_sagas(
        status: Annotated[str | None, Query(max_length=20)] = None,
        saga_type: Annotated[str | None, Query(alias="type", max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> list[dict[str, Any]]:
        found = [
            inst
            async for inst in web.store.sagas()
            if (status is None or inst.status == status) and (saga_type is None or inst.saga_type == saga_type)
        ]
        found.sort(key=lambda inst: inst.created_at, reverse=True)
        return [_summary(inst) for inst in found[:limit]]

    @app.post("/api/sagas", status_code=202, dependencies=guarded, response_model=Started, summary="start a saga")
    async def start(
        body: StartRequest,
        response: Response,
        idempotency_key: Annotated[
            str | None,
            Header(pattern=SAGA_ID, description="the saga id: the same key starts the saga once"),
        ] = None,
    ) -> Started:
        try:
            registry.latest(body.saga_type)
        except UnknownSaga as exc:
            raise HTTPException(404, str(exc)) from None
        existing = await web.store.load(idempotency_key) if idempotency_key else None
        if existing is not None:
            response.status_code = 200
            return Started(saga_id=existing.saga_id, existed=True, url=f"/api/sagas/{existing.saga_id}")
        saga_id = await web.client.start(body.saga_type, body.data, idempotency_key)
        return Started(saga_id=saga_id, existed=False, url=f"/api/sagas/{saga_id}")

    @app.get("/api/sagas/{saga_id}", summary="one saga: its state, data and history")
    async def read(saga_id: SagaId) -> dict[str, Any]:
        doc = _doc(await web.saga(saga_id))
        doc["history"] = [
            {"id": progress.progress_id(n, h), **msgspec.to_builtins(h)}
            for n, h in enumerate(await web.store.history(saga_id), 1)
        ]
        doc["path"] = progress.path_of(await web.store.history(saga_id))
        return doc

    @app.post("/api/sagas/{saga_id}/retry", dependencies=guarded, summary="resume a stuck saga")
    async def retry(saga_id: SagaId) -> ActionResult:
        return await web.operate(saga_id, Resume())

    @app.post("/api/sagas/{saga_id}/compensate", dependencies=guarded, summary="force a running saga to compensate")
    async def compensate(saga_id: SagaId) -> ActionResult:
        return await web.operate(saga_id, Abort())

    @app.post(
        "/api/sagas/{saga_id}/signals/{name}",
        status_code=202,
        dependencies=guarded,
        response_model=SignalAnswer,
        responses={404: {"description": "no such saga"}, 409: {"description": "refused: the error says why"}},
        summary="send a signal to a saga that waits for it (an Await step)",
    )
    async def signal(
        saga_id: SagaId,
        name: Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="the signal's name")],
        body: SignalRequest | None = None,
        idempotency_key: Annotated[
            str | None, Header(pattern=SAGA_ID, description="the signal id, if the body gives none")
        ] = None,
    ) -> SignalAnswer:
        request = body or SignalRequest()
        signal_id = request.signal_id or idempotency_key
        try:
            result = await web.client.signal(saga_id, name, request.data, signal_id, wait=True, timeout=SIGNAL_WAIT)
        except SignalRefused as refusal:
            status = SIGNAL_STATUS.get(refusal.code, 409)
            raise HTTPException(status, {"code": refusal.code, "message": refusal.reason}) from None
        except TimeoutError:
            raise HTTPException(504, f"no orchestrator answered within {SIGNAL_WAIT:g}s; the signal waits") from None
        return SignalAnswer(
            saga_id=result.saga_id,
            name=result.name,
            signal_id=result.signal_id,
            outcome=result.outcome,
            duplicate=result.duplicate,
        )

    @app.get(
        "/api/types/{saga_type}/graph.svg",
        response_class=Response,
        responses={200: {"content": {"image/svg+xml": {}}}},
        summary="the graph of a saga type, one saga's path highlighted",
    )
    async def graph(saga_type: str, saga: Annotated[str | None, Query(pattern=SAGA_ID)] = None) -> Response:
        try:
            definition = registry.latest(saga_type)
        except UnknownSaga as exc:
            raise HTTPException(404, str(exc)) from None
        path = progress.path_of(await web.store.history(saga)) if saga else None
        if saga:
            inst = await web.store.load(saga)
            if inst is not None:
                definition = registry.get(inst.saga_type, inst.definition_version)
        picture = await asyncio.to_thread(svg, definition, path)
        return Response(picture, media_type="image/svg+xml")

    @app.get(
        "/api/sagas/{saga_id}/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
        summary="Server-Sent Events: each history entry as it happens (`step`), then the outcome (`end`)",
    )
    async def saga_events(
        saga_id: SagaId,
        request: Request,
        last_event_id: Annotated[str | None, Header(max_length=100)] = None,
        after: Annotated[str | None, Query(max_length=100, description="resume after this event id")] = None,
    ) -> StreamingResponse:
        """A reconnecting EventSource sends Last-Event-ID itself; `after` does the same for a first connection."""
        await web.saga(saga_id)
        last_event_id = last_event_id or after

        async def stream() -> AsyncIterator[bytes]:
            yield b"retry: 1000\n\n"
            async for item in progress.follow(web.store, saga_id, last_event_id, web.every):
                if isinstance(item, progress.Progress):
                    yield _sse(msgspec.to_builtins(item.entry), "step", item.id)
                else:
                    yield _sse(_summary(item), "end")
                if await request.is_disconnected():
                    return

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    async def lifecycle(request: Request, saga_type: str | None) -> StreamingResponse:
        async def stream() -> AsyncIterator[bytes]:
            with web.hub.subscribe() as queue:
                yield b"retry: 1000\n\n"
                while not await request.is_disconnected():
                    try:
                        event = await asyncio.wait_for(queue.get(), KEEPALIVE)
                    except TimeoutError:
                        yield b": keepalive\n\n"
                        continue
                    if saga_type is not None and event.saga_type != saga_type:
                        continue
                    inst = await web.store.load(event.saga_id)
                    yield _sse(_summary(inst) if inst is not None else msgspec.to_builtins(event), "saga")

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    @app.get(
        "/api/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
        summary="Server-Sent Events: every saga's status changes (`saga`), live",
    )
    async def all_events(request: Request) -> StreamingResponse:
        return await lifecycle(request, None)

    @app.get(
        "/api/types/{saga_type}/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
        summary="Server-Sent Events: the status changes of every saga of one type, live",
    )
    async def type_events(saga_type: str, request: Request) -> StreamingResponse:
        return await lifecycle(request, saga_type)

    return app

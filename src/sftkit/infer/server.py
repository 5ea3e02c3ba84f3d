"""``sft serve``: an OpenAI-compatible HTTP server over the shared ``Engine``.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``,
``GET /v1/models`` (+ ``/v1/models/{id}``), ``GET /health``, and FastAPI's ``/docs``,
``/redoc`` and ``/openapi.json``. ``/health`` reports the queue (``queue_length``: requests and
streams waiting for the model) and the engine's counters (``sftkit.infer.stats``: ``tokens_per_s``
over the last 10 s, token totals, out-of-memory halvings). With an API key every path needs it except ``/health``
(load balancers probe it): that one answers without the key but then does not name the model.

A request's path: ``http_guard`` (the key, the body size) -> a route here -> ``_Front``: the body
parsed by ``openai_protocol``, routed to its model (``canary.Pool``), prepared by that
``served_model.ServedModel`` on its preparation pool, answered whole or streamed -> accounted
for in ``/metrics`` and the request log.

Batching: all generation goes through one ``Batcher`` worker thread per model (see
``sftkit.infer.batcher``): concurrent non-streaming requests share ``Engine.generate``
batches; concurrent streaming requests are decoded together too (``Engine.stream_many``:
one forward pass per step for all of them), taking turns with the batches, ``max_batch`` at a time.

Errors always have OpenAI's shape ``{"error": {"message", "type", "param",
"code"}}``: 400 for invalid bodies and over-long prompts, 401 for a missing or
wrong key, 404 for an unknown model, 413 for a body over ``max_body_bytes``, 500
only for a genuine server bug (the server keeps running).

Hostile input: bodies are validated strictly (``openai_protocol``); their size is capped before
they are parsed (``http_guard``); parsing, rendering and tokenising run off the event loop and
over-long text never reaches the tokenizer (``served_model``); and a request that makes a shared
batch fail is retried alone so it cannot fail the other clients' requests.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from sftkit.hub.models import served_name
from sftkit.infer.batcher import Batcher
from sftkit.infer.canary import HEADER, Canary, Pool, UnknownModel, routing_key
from sftkit.infer.engine import Engine
from sftkit.infer.http_guard import AuthMiddleware, BodyLimit, key_ok
from sftkit.infer.metrics import Served, ServeMetrics
from sftkit.infer.openai_protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    error_body,
    parse_body,
    validation_message,
)
from sftkit.infer.requestlog import Observation, RequestLog
from sftkit.infer.served_model import Job, ServedModel, answer_chat, answer_completions

DEFAULT_MAX_TOKENS_LIMIT = 1024
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024  # far above any real prompt for a local model; bounds parsing work


def _printable(text: str | None) -> str | None:
    """Error text that can always be sent: an echoed lone surrogate would make the JSON
    response itself fail to encode (a 500 instead of the 4xx being reported)."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _error_response(e: APIError) -> JSONResponse:
    return JSONResponse(error_body(_printable(e.message) or "", e.type, _printable(e.param), e.code),
                        status_code=e.status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return _error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        msg, param = validation_message(e.errors())
        return _error_response(APIError(400, msg, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return _error_response(APIError(e.status_code, str(e.detail), type=kind))

    @app.exception_handler(Exception)
    async def _bug(_: Request, e: Exception) -> JSONResponse:
        return _error_response(APIError(500, f"internal server error ({type(e).__name__}: {e})", type="server_error"))


class _Front:
    """Sends each request to its model (``canary.Pool``) and accounts for it, answered or refused:
    ``/metrics`` (``infer/metrics.py``) and the request log (``infer/requestlog.py``)."""

    def __init__(self, pool: Pool[ServedModel], metrics: ServeMetrics, log: RequestLog | None) -> None:
        self.pool, self.metrics, self.log = pool, metrics, log

    def prepare(self, kind: str, raw: bytes, header: str | None, address: str | None,
                obs: Observation) -> tuple[ServedModel, Job]:
        """Parse, route, then the routed model's own checks (its template, tokenizer and context)."""
        req = parse_body(ChatRequest if kind == "chat" else CompletionRequest, raw)
        obs.stream = req.stream
        key, obs.key = routing_key(req.user, header, address)
        try:
            routed = self.pool.pick(req.model, key)
        except UnknownModel as e:
            served = "', '".join(srv.model_name for srv in self.pool.servers)
            raise APIError(404, f"The model '{e.name}' does not exist; this server serves '{served}'.",
                           param="model", code="model_not_found") from None
        srv = routed.server
        obs.model, obs.role, obs.pinned = srv.model_name, routed.role, routed.pinned
        return srv, srv.chat_job(req) if kind == "chat" else srv.completion_job(req)

    def finish(self, obs: Observation) -> None:
        obs.end()
        self.metrics.observe(obs)
        if self.log is not None:
            self.log.write(obs)

    async def handle(self, kind: str, request: Request, respond: Callable[..., Any]) -> Any:
        obs = Observation(kind)
        address = request.client.host if request.client else None
        try:
            raw = await request.body()
            srv, job = await self.pool.stable.off_loop(self.prepare, kind, raw, request.headers.get(HEADER),
                                                       address, obs)
            out = await respond(srv, job, obs, self.finish)
        except APIError as e:
            obs.fail(e.status, e.type)
            self.finish(obs)
            raise
        except ClientDisconnect:
            obs.fail(499, "client_disconnected")  # nginx's code for it: the client left before its answer
            self.finish(obs)
            raise
        except Exception:
            obs.fail(500, "server_error")
            self.finish(obs)
            raise
        if isinstance(out, dict):  # a stream accounts for itself when it ends
            obs.prompt_tokens = out["usage"]["prompt_tokens"]
            obs.completion_tokens = out["usage"]["completion_tokens"]
            obs.finish_reason = out["choices"][0]["finish_reason"] if out["choices"] else None
            self.finish(obs)
        return out


def create_app(engine: Engine, model_name: str, api_key: str | None = None,
               max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT, max_batch: int = 16,
               aliases: set[str] | None = None, batch_wait_s: float = 0.005,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, canary: Canary | None = None,
               request_log: RequestLog | None = None) -> FastAPI:
    """An OpenAI-compatible app serving ``engine`` as ``model_name`` (``aliases``:
    other accepted model ids). The batcher thread starts now and stops when the
    app shuts down. Bodies over ``max_body_bytes`` are refused (413). With ``canary``, a second
    model with its own batcher answers a sticky share of the users (``sftkit.infer.canary``);
    ``request_log`` gets a line per request (``sftkit.infer.requestlog``)."""

    def server(eng: Engine, name: str, ids: set[str]) -> ServedModel:
        eng.batch_size = max(eng.batch_size, max_batch)
        batcher = Batcher(eng, max_batch=max_batch, wait_s=batch_wait_s).start()
        return ServedModel(eng, name, ids, max_tokens_limit, batcher)

    srv = server(engine, model_name, aliases or set())
    new = server(canary.engine, canary.name, canary.aliases) if canary is not None else None
    pool = Pool(srv, srv.aliases, new, new.aliases if new else None, canary.share if canary else 0.0)
    metrics = ServeMetrics([Served(s.model_name, pool.role(s), s.batcher.load) for s in pool.servers],
                           canary.share if canary else None)
    if request_log is not None:
        request_log.start([{"model": s.model_name, "role": pool.role(s)} for s in pool.servers],
                          canary.share if canary else None)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for s in pool.servers:
            s.batcher.start()
        yield
        for s in pool.servers:
            s.close()
            s.batcher.stop()

    app = FastAPI(title="sftkit", lifespan=lifespan)
    app.state.server, app.state.pool, app.state.metrics = srv, pool, metrics
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    if api_key:  # added last = runs first: no key, no body read
        app.add_middleware(AuthMiddleware, api_key=api_key)
    _install_error_handlers(app)
    _add_routes(app, _Front(pool, metrics, request_log), api_key.encode() if api_key else None)
    _document_bodies(app, {"/v1/chat/completions": ChatRequest, "/v1/completions": CompletionRequest})
    return app


def _add_routes(app: FastAPI, front: _Front, key: bytes | None) -> None:
    pool = front.pool
    srv, batcher = pool.stable, pool.stable.batcher

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        ok = all(s.batcher.alive for s in pool.servers)
        load = batcher.load()
        body: dict[str, Any] = {"status": "ok" if ok else "error", **load,
                                "queue_length": load["queued_requests"] + load["waiting_streams"],
                                **batcher.stats, **srv.stats.snapshot()}
        named = key is None or key_ok(request.headers.get("authorization", "").encode("latin-1"), key)
        if named:
            body["model"] = srv.model_name  # which model runs, and where, is the key holders' business
            dev = srv.engine.device_info
            body["device"] = dev.describe() if dev is not None else str(srv.engine.input_device())
        if pool.canary is not None:
            new = pool.canary.batcher
            body["canary"] = {**({"model": pool.canary.model_name, "share": pool.share} if named else {}),
                              "status": "ok" if new.alive else "error", **new.load(), **new.stats}
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        body, content_type = front.metrics.render()
        return Response(body, media_type=content_type)

    def model_card(s: ServedModel) -> dict[str, Any]:
        return {"id": s.model_name, "object": "model", "created": s.created, "owned_by": "sftkit",
                "max_model_len": s.context}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(s) for s in pool.servers]}

    @app.get("/v1/models/{model_id:path}")
    async def one_model(model_id: str) -> dict[str, Any]:
        try:
            return model_card(pool.find(model_id))
        except UnknownModel:
            srv.check_model(model_id)  # the 404, worded as for a request
            raise

    # The bodies are read raw and parsed on the preparation pool (FastAPI would parse and
    # validate them on the event loop); _document_bodies puts their schemas back in the docs.
    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> dict[str, Any] | StreamingResponse:
        return await front.handle("chat", request, answer_chat)

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> dict[str, Any] | StreamingResponse:
        return await front.handle("completions", request, answer_completions)


def _document_bodies(app: FastAPI, bodies: dict[str, type[BaseModel]]) -> None:
    """The request body schemas in ``/openapi.json`` (and so in ``/docs``)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            for path, model in bodies.items():
                schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[model.__name__] = schema
                spec["paths"][path]["post"]["requestBody"] = {"required": True, "content": {"application/json": {
                    "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def serve(engine: Engine, ref: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          max_batch: int = 16, max_tokens_limit: int = DEFAULT_MAX_TOKENS_LIMIT, log_level: str = "info",
          canary: Canary | None = None, request_log: RequestLog | None = None) -> None:
    """Run the server in the foreground until interrupted (``engine`` answers as ``ref``'s served
    name; with ``canary``, the canary model answers its share of the users)."""
    import uvicorn

    name = served_name(ref)
    app = create_app(engine, name, api_key=api_key, max_tokens_limit=max_tokens_limit, max_batch=max_batch,
                     aliases={ref}, canary=canary, request_log=request_log)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        if request_log is not None:
            request_log.close()

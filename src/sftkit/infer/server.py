"""``sft serve``: an OpenAI-compatible HTTP server over the shared ``Engine``.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``,
``GET /v1/models`` (+ ``/v1/models/{id}``), ``GET /health``, and FastAPI's ``/docs``,
``/redoc`` and ``/openapi.json``. ``/health`` reports the queue (``queue_length``: requests and
streams waiting for the model) and the engine's counters (``sftkit.infer.stats``: ``tokens_per_s``
over the last 10 s, token totals, out-of-memory halvings). With an API key every path needs it except ``/health``
(load balancers probe it): that one answers without the key but then does not name the model.

Batching: all generation goes through one ``Batcher`` worker thread (see
``sftkit.infer.batcher``): concurrent non-streaming requests share ``Engine.generate``
batches; concurrent streaming requests are decoded together too (``Engine.stream_many``:
one forward pass per step for all of them), taking turns with the batches, ``max_batch`` at a time.

Errors always have OpenAI's shape ``{"error": {"message", "type", "param",
"code"}}``: 400 for invalid bodies and over-long prompts, 401 for a missing or
wrong key, 404 for an unknown model, 413 for a body over ``max_body_bytes``, 500
only for a genuine server bug (the server keeps running).

Hostile input: bodies are validated strictly (``true`` is not a number, ``"yes"`` is
not a boolean), down to every tool call, content part and tool, and a bad field is named
in ``param`` (``messages[1].tool_calls[0].function``); their size is capped before they
are parsed; text that is not valid Unicode is refused where it is parsed; and a request
that makes a shared batch fail is retried alone so it cannot fail the other clients' requests.

The event loop only moves bytes: parsing, validating, rendering and tokenising a request
run on a small thread pool (``_Server.off_loop``), so one huge prompt cannot stall
``/health`` or the streams of other clients. Text longer than ``MAX_CHARS_PER_TOKEN``
characters per token of context is refused before the tokenizer sees it: no model reads
that much, and it bounds the tokenising work a request can cause.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Receive, Scope, Send

from sftkit.core.conversation import Conversation, Message
from sftkit.hub.models import served_name
from sftkit.infer.batcher import Batcher
from sftkit.infer.canary import HEADER, Canary, Pool, UnknownModel, routing_key
from sftkit.infer.engine import Engine, GenParams, GenResult
from sftkit.infer.metrics import Served, ServeMetrics
from sftkit.infer.requestlog import Observation, RequestLog

DEFAULT_MAX_TOKENS_LIMIT = 1024
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024  # far above any real prompt for a local model; bounds parsing work
# Tokens average 3-5 characters in English and 1-2 in Chinese; text over 8 per token of
# context cannot fit, so it is refused by its length alone, before it is tokenised.
MAX_CHARS_PER_TOKEN = 8
PREP_WORKERS = min(4, os.cpu_count() or 1)  # request preparation threads (the model has its own)


# -- errors -------------------------------------------------------------------


class APIError(Exception):
    """An error reported to the client in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _printable(text: str | None) -> str | None:
    """Error text that can always be sent: an echoed lone surrogate would make the JSON
    response itself fail to encode (a 500 instead of the 4xx being reported)."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _error_response(e: APIError) -> JSONResponse:
    return JSONResponse(error_body(_printable(e.message) or "", e.type, _printable(e.param), e.code),
                        status_code=e.status)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errs = exc.errors()
    if not errs:
        return "invalid request body", None
    first = errs[0]
    if first.get("type") == "json_invalid":
        return "could not parse the JSON body of the request", None
    param = _param([x for x in first.get("loc", ()) if x != "body"]) or None
    return (f"{param}: {first.get('msg')}" if param else str(first.get("msg"))), param


def _key_ok(authorization: bytes, key: bytes) -> bool:
    scheme, _, token = authorization.partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), key)


class _AuthMiddleware:
    """``Authorization: Bearer KEY`` on every path but ``/health`` (the API, the docs and
    the OpenAPI schema alike; routes added later are covered without a second thought).
    Pure ASGI (not BaseHTTPMiddleware) so streaming responses and client-disconnect
    detection are left untouched; it runs before the body is read, so a bad body without
    a key is still a 401."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app, self.key = app, api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            auth = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not _key_ok(auth, self.key):
                body = error_body("Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                                  code="invalid_api_key")
                await JSONResponse(body, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _BodyLimit:
    """Refuses request bodies over ``limit`` bytes (413) before anything parses them: by the
    Content-Length header when there is one, else by counting a streamed (chunked) body."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, status: int, msg: str) -> None:
        await JSONResponse(error_body(msg, code="request_too_large" if status == 413 else None),
                           status_code=status)(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_big = f"request body over the server's limit of {self.limit} bytes"
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await self._refuse(scope, receive, send, 400, "invalid Content-Length header")
                return
            if int(declared) > self.limit:
                await self._refuse(scope, receive, send, 413, too_big)
                return
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._refuse(scope, receive, send, 413, too_big)
                return
            if not msg.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:  # the body once, then the real channel (disconnect detection for streams)
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# -- request bodies ---------------------------------------------------------------


class _Body(BaseModel):
    # OpenAI clients send many optional fields; unknown ones are ignored, known ones validated
    # strictly: a hostile or buggy client gets a 400, not a guess (true as 1, "yes" as True).
    model_config = ConfigDict(extra="ignore", strict=True)


class ContentPart(_Body):
    type: str  # any string here: a non-text part gets its own message ("only text ... supported")
    text: str | None = None


class ToolCallFunction(_Body):
    name: str = Field(min_length=1)
    arguments: str | dict[str, Any] = "{}"  # OpenAI sends a JSON string; an object is accepted too


class ToolCall(_Body):
    id: str | None = None
    type: Literal["function"] = "function"
    function: ToolCallFunction


class FunctionDef(_Body):
    name: str = Field(min_length=1)
    description: str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema: shown to the model as it is
    strict: bool | None = None


class Tool(_Body):
    type: Literal["function"] = "function"
    function: FunctionDef


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)  # torch generators take 64-bit seeds
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool | int | None = None
    user: str | None = None  # OpenAI's end-user id: the canary routing key (sftkit.infer.canary)

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return v


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    tools: list[Tool] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None


# -- parsing ------------------------------------------------------------------------

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_OBJECT_ERRORS = {"model_type", "model_attributes_type", "dict_type"}
M = TypeVar("M", bound=BaseModel)


def _param(path: list[Any]) -> str:
    """``["messages", 0, "tool_calls"]`` -> ``messages[0].tool_calls`` (OpenAI's way of naming a field)."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _find_surrogate(data: Any) -> tuple[list[Any], int] | None:
    """Where a lone surrogate (valid JSON as ``\\ud800``, not text: tokenizers and encoders
    reject it) sits in parsed JSON: (path, character). Iterative, with parent links, so depth
    and width cost nothing extra."""
    stack: list[tuple[Any, Any]] = [(data, None)]
    while stack:
        value, link = stack.pop()
        if isinstance(value, dict):
            stack += [(k, (k, link)) for k in value] + [(v, (k, link)) for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(v, (i, link)) for i, v in enumerate(value)]
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                path = []
                while link is not None:
                    key, link = link
                    path.append(key)
                return path[::-1], e.start
    return None


def loads(text: str, param: str | None = None) -> Any:
    """JSON text from a client -> data: NaN/Infinity and invalid Unicode refused (400)."""
    what = f"{param}: the JSON" if param else "the JSON body of the request"
    try:
        data = json.loads(text, parse_constant=_no_constants)
    except RecursionError:
        raise APIError(400, f"{what} is nested too deeply", param=param) from None
    except ValueError as e:
        raise APIError(400, f"could not parse {what} ({e})" if not param else f"{what} is not valid ({e})",
                       param=param) from None
    hit = _find_surrogate(data) if _SURROGATE_ESCAPE.search(text) else None
    if hit is not None:
        at = _param([*([param] if param else []), *hit[0]]) or None
        raise APIError(400, f"{at or 'body'}: invalid Unicode (a lone surrogate escape at character {hit[1]})",
                       param=at)
    return data


def _real_path(loc: tuple[Any, ...], data: Any, missing: bool) -> list[Any]:
    """Pydantic's error location minus the names of union members (``content.str``): only
    the steps that exist in the body, plus the name of a missing field."""
    path, node = [], data
    for i, step in enumerate(loc):
        if (isinstance(node, dict) and step in node) or (
                isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node)):
            path.append(step)
            node = node[step]
        elif missing and i == len(loc) - 1 and isinstance(node, dict):
            path.append(step)
    return path


def _invalid(exc: ValidationError, data: Any) -> APIError:
    """The most specific problem; a union's alternatives at that place are listed together."""
    found = [(_real_path(e["loc"], data, e["type"] == "missing"),
              "Input should be a JSON object" if e["type"] in _OBJECT_ERRORS else e["msg"]) for e in exc.errors()]
    deepest = max(len(p) for p, _ in found)
    path = next(p for p, _ in found if len(p) == deepest)
    why = "; ".join(dict.fromkeys(m for p, m in found if p == path))
    param = _param(path) or None
    return APIError(400, f"{param}: {why}" if param else why, param=param)


def parse_body(model: type[M], raw: bytes) -> M:
    """A request body -> ``model``; every way it can be wrong is a 400 naming the field."""
    try:
        text = raw.decode("utf-8")  # JSON on the wire is UTF-8 (RFC 8259)
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not valid UTF-8 (byte {e.start})") from None
    data = loads(text)
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _invalid(e, data) from None


# -- conversion ---------------------------------------------------------------------


def _text_content(m: ChatMessage, i: int) -> str:
    if m.content is None or isinstance(m.content, str):
        return m.content or ""
    parts = []
    for j, part in enumerate(m.content):
        if part.type != "text" or part.text is None:
            where = f"messages[{i}].content[{j}]"
            raise APIError(400, f"{where}: only text content parts are supported (got {part.type!r})", param=where)
        parts.append(part.text)
    return "".join(parts)


def _tool_call(call: ToolCall, where: str) -> dict[str, Any]:
    """A call as the data readers produce it: ``{"name", "arguments": {...}}``, so the prompt is
    rendered the way training rows were."""
    args = call.function.arguments
    where += ".function.arguments"
    if isinstance(args, str):
        args = loads(args, where) if args.strip() else {}
    if not isinstance(args, dict):
        raise APIError(400, f"{where}: must be a JSON object (or a string holding one)", param=where)
    return {"name": call.function.name, "arguments": args}


def to_conversation(req: ChatRequest) -> Conversation:
    msgs = []
    for i, m in enumerate(req.messages):
        role = "system" if m.role == "developer" else m.role  # OpenAI's newer name for the system role
        calls = [_tool_call(c, f"messages[{i}].tool_calls[{j}]") for j, c in enumerate(m.tool_calls or [])]
        msgs.append(Message(role=role, content=_text_content(m, i), reasoning=m.reasoning_content,
                            tool_calls=calls or None, name=m.name))
    tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
    return Conversation(messages=msgs, tools=tools or None)


# -- the app ------------------------------------------------------------------------


def context_length(engine: Engine) -> int:
    cfg = getattr(engine.model, "config", None)
    n = getattr(cfg, "max_position_embeddings", None)
    if isinstance(n, int) and n > 0:
        return n
    tok_max = getattr(engine.tokenizer, "model_max_length", 0)
    return tok_max if 0 < tok_max < 10**7 else 2048


def _template_errors() -> tuple[type[Exception], ...]:
    """What a chat template raises for a conversation it cannot render: sftkit's TemplateError
    (a ValueError) and Jinja's (a model's own template calling ``raise_exception``)."""
    try:
        from jinja2 import TemplateError
    except ImportError:
        return (ValueError,)
    return (ValueError, TemplateError)


@dataclass(slots=True)
class _Job:
    """A validated request, ready for the batcher: its prompts, their token counts and settings."""

    req: Any
    prompts: list[str]
    counts: list[int]
    params: list[GenParams]


class _Server:
    """Per-app state and request handling (kept off module globals so tests can run several apps).
    ``prepare_*`` do a request's CPU work and run on the preparation pool, never on the event loop."""

    def __init__(self, engine: Engine, model_name: str, aliases: set[str], max_tokens_limit: int,
                 batcher: Batcher) -> None:
        self.engine, self.model_name, self.aliases = engine, model_name, {model_name, *aliases}
        self.max_tokens_limit, self.batcher = max_tokens_limit, batcher
        self.context = context_length(engine)
        self.stats = engine.stats  # the generation counters /health reports (InferStats)
        self.created = int(time.time())
        self.pool: ThreadPoolExecutor | None = None

    async def off_loop(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.pool is None:
            self.pool = ThreadPoolExecutor(PREP_WORKERS, thread_name_prefix="sftkit-prep")
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None

    def check_model(self, name: str) -> None:
        if name not in self.aliases:
            raise APIError(404, f"The model '{name}' does not exist; this server serves '{self.model_name}'.",
                           param="model", code="model_not_found")

    def count_tokens(self, prompt: str, param: str) -> int:
        """Tokens in ``prompt``; text too long for the context by its length alone never reaches the tokenizer."""
        limit = MAX_CHARS_PER_TOKEN * self.context
        if len(prompt) > limit:
            raise APIError(400, f"This model's maximum context length is {self.context} tokens; the prompt has "
                                f"{len(prompt)} characters, more than {limit} ({MAX_CHARS_PER_TOKEN} per token) "
                                "could fit. Shorten the prompt.", param=param, code="context_length_exceeded")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as e:  # bodies are checked when parsed; this guards the tokenizer regardless
            raise APIError(400, f"{param}: invalid Unicode (a lone surrogate escape at character {e.start})",
                           param=param) from None
        ids = self.engine.tokenizer(prompt, add_special_tokens=False, return_attention_mask=False)["input_ids"]
        return len(ids)

    def prepare_chat(self, raw: bytes) -> _Job:
        req = parse_body(ChatRequest, raw)
        self.check_model(req.model)
        return self.chat_job(req)

    def chat_job(self, req: ChatRequest) -> _Job:
        if req.stream and req.n != 1:
            raise APIError(400, "n > 1 is not supported with stream=true", param="n")
        try:
            prompt = self.engine.prompt_for(to_conversation(req))
        except _template_errors() as e:  # e.g. a role this model family has no turn for
            raise APIError(400, f"the chat template cannot render these messages: {e}", param="messages") from None
        n = self.count_tokens(prompt, "messages")
        return _Job(req, [prompt], [n], [self.params(req, n, req.max_completion_tokens or req.max_tokens)])

    def prepare_completion(self, raw: bytes) -> _Job:
        req = parse_body(CompletionRequest, raw)
        self.check_model(req.model)
        return self.completion_job(req)

    def completion_job(self, req: CompletionRequest) -> _Job:
        if req.suffix:
            raise APIError(400, "suffix is not supported by this server", param="suffix")
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise APIError(400, "prompt must not be empty", param="prompt")
        if req.stream and (req.n != 1 or len(prompts) != 1):
            raise APIError(400, "stream=true needs one prompt and n=1", param="stream")
        one = isinstance(req.prompt, str)
        counts = [self.count_tokens(p, "prompt" if one else f"prompt[{i}]") for i, p in enumerate(prompts)]
        return _Job(req, prompts, counts, [self.params(req, c, req.max_tokens) for c in counts])

    def params(self, req: _Sampling, prompt_tokens: int, requested: int | None) -> GenParams:
        if req.logprobs:
            raise APIError(400, "logprobs are not supported by this server", param="logprobs")
        if requested is not None and requested > self.max_tokens_limit:
            raise APIError(400, f"max_tokens is {requested}, but this server allows at most {self.max_tokens_limit}",
                           param="max_tokens")
        room = self.context - prompt_tokens
        if room < 1 or (requested is not None and requested > room):
            want = f" + {requested} in the completion" if requested is not None else ""
            raise APIError(400, f"This model's maximum context length is {self.context} tokens; the prompt has "
                                f"{prompt_tokens}{want}. Shorten the prompt or lower max_tokens.",
                           param="messages" if isinstance(req, ChatRequest) else "prompt",
                           code="context_length_exceeded")
        max_new = requested if requested is not None else min(self.max_tokens_limit, room)
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        # OpenAI's defaults: temperature 1, top_p 1 (pass temperature=0 for greedy).
        temp = 1.0 if req.temperature is None else req.temperature
        return GenParams(max_new_tokens=max_new, temperature=temp, top_p=req.top_p or 1.0, stop=stops,
                         seed=req.seed)

    def usage(self, prompt_tokens: int, results: list[GenResult]) -> dict[str, int]:
        done = sum(r.completion_tokens for r in results)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": done, "total_tokens": prompt_tokens + done}


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return _error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        msg, param = _validation_message(e)
        return _error_response(APIError(400, msg, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return _error_response(APIError(e.status_code, str(e.detail), type=kind))

    @app.exception_handler(Exception)
    async def _bug(_: Request, e: Exception) -> JSONResponse:
        return _error_response(APIError(500, f"internal server error ({type(e).__name__}: {e})", type="server_error"))


async def _chat(srv: _Server, job: _Job, obs: Observation, done: Callable[[Observation], None]
                ) -> dict[str, Any] | StreamingResponse:
    req: ChatRequest = job.req
    prompt, n_prompt, params = job.prompts[0], job.counts[0], job.params[0]
    rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _stream(srv, prompt, params, n_prompt, include_usage, rid, created, chat=True, obs=obs, done=done)
    results = await asyncio.wrap_future(srv.batcher.submit([prompt] * req.n, params))
    return {
        "id": rid, "object": "chat.completion", "created": created, "model": srv.model_name,
        "system_fingerprint": None,
        "choices": [{"index": i, "message": {"role": "assistant", "content": r.text}, "logprobs": None,
                     "finish_reason": r.finish_reason} for i, r in enumerate(results)],
        "usage": srv.usage(n_prompt, results),
    }


async def _completions(srv: _Server, job: _Job, obs: Observation, done: Callable[[Observation], None]
                       ) -> dict[str, Any] | StreamingResponse:
    req: CompletionRequest = job.req
    prompts, counts, params = job.prompts, job.counts, job.params
    rid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return _stream(srv, prompts[0], params[0], counts[0], include_usage, rid, created, chat=False,
                       echo=prompts[0] if req.echo else "", obs=obs, done=done)
    futures = [srv.batcher.submit([p] * req.n, gp) for p, gp in zip(prompts, params, strict=True)]
    per_prompt = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
    choices, flat = [], []
    for pi, results in enumerate(per_prompt):
        for r in results:
            text = (prompts[pi] + r.text) if req.echo else r.text
            choices.append({"index": len(choices), "text": text, "logprobs": None, "finish_reason": r.finish_reason})
            flat.append(r)
    return {"id": rid, "object": "text_completion", "created": created, "model": srv.model_name,
            "system_fingerprint": None, "choices": choices, "usage": srv.usage(sum(counts), flat)}


class _Front:
    """Sends each request to its model (``canary.Pool``) and accounts for it, answered or refused:
    ``/metrics`` (``infer/metrics.py``) and the request log (``infer/requestlog.py``)."""

    def __init__(self, pool: Pool[_Server], metrics: ServeMetrics, log: RequestLog | None) -> None:
        self.pool, self.metrics, self.log = pool, metrics, log

    def prepare(self, kind: str, raw: bytes, header: str | None, address: str | None,
                obs: Observation) -> tuple[_Server, _Job]:
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

    def server(eng: Engine, name: str, ids: set[str]) -> _Server:
        eng.batch_size = max(eng.batch_size, max_batch)
        batcher = Batcher(eng, max_batch=max_batch, wait_s=batch_wait_s).start()
        return _Server(eng, name, ids, max_tokens_limit, batcher)

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
    app.add_middleware(_BodyLimit, limit=max_body_bytes)
    if api_key:  # added last = runs first: no key, no body read
        app.add_middleware(_AuthMiddleware, api_key=api_key)
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
        named = key is None or _key_ok(request.headers.get("authorization", "").encode("latin-1"), key)
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

    def model_card(s: _Server) -> dict[str, Any]:
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
        return await front.handle("chat", request, _chat)

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> dict[str, Any] | StreamingResponse:
        return await front.handle("completions", request, _completions)


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


def _stream(srv: _Server, prompt: str, params: GenParams, n_prompt: int, include_usage: bool, rid: str,
            created: int, chat: bool, obs: Observation, done: Callable[[Observation], None],
            echo: str = "") -> StreamingResponse:
    handle = srv.batcher.submit_stream(prompt, params, asyncio.get_running_loop())
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(delta: str | None, finish: str | None = None, role: bool = False) -> dict[str, Any]:
        if chat:
            d: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
            if delta is not None:
                d["content"] = delta
            choice: dict[str, Any] = {"index": 0, "delta": d, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": delta or "", "logprobs": None, "finish_reason": finish}
        return {"id": rid, "object": obj, "created": created, "model": srv.model_name, "system_fingerprint": None,
                "choices": [choice]}

    async def events() -> AsyncIterator[str]:
        result: GenResult | None = None
        try:
            if chat:
                yield _sse(chunk(None, role=True))
            if echo:
                yield _sse(chunk(echo))
            async for item in handle.events():
                if isinstance(item, str):
                    obs.first_token()
                    yield _sse(chunk(item))
                else:
                    result = item
            yield _sse(chunk(None, finish=result.finish_reason if result else "stop"))
            if include_usage and result is not None:
                yield _sse({"id": rid, "object": obj, "created": created, "model": srv.model_name, "choices": [],
                            "usage": srv.usage(n_prompt, [result])})
        except Exception as e:  # noqa: BLE001 - headers are sent: report in-band, OpenAI style
            obs.error = "server_error"
            yield _sse(error_body(f"generation failed ({type(e).__name__}: {e})", type="server_error"))
        finally:
            # Normal end: a no-op. Client gone (the generator is cancelled/closed): the
            # worker drops the stream at its next turn, freeing the slot and its KV cache.
            handle.cancel()
            _stream_ended(obs, done, n_prompt, result)
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _stream_ended(obs: Observation, done: Callable[[Observation], None], n_prompt: int,
                  result: GenResult | None) -> None:
    """A stream's account: its tokens, how it ended (``cancelled``: the client left before the end)."""
    obs.prompt_tokens = n_prompt
    if result is not None:
        obs.completion_tokens, obs.finish_reason = result.completion_tokens, result.finish_reason
    elif obs.error is None:
        obs.finish_reason = "cancelled"
    done(obs)


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


# -- vLLM ---------------------------------------------------------------------------

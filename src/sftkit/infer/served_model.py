"""One model behind ``sft serve``: a validated OpenAI request -> its prompts, token counts and
generation settings (a ``Job``), and a ``Job`` -> OpenAI's answer, whole or streamed (SSE).

The event loop only moves bytes: rendering and tokenising a request run on a small thread pool
(``ServedModel.off_loop``), so one huge prompt cannot stall ``/health`` or the streams of other
clients. Text longer than ``MAX_CHARS_PER_TOKEN`` characters per token of context is refused
before the tokenizer sees it: no model reads that much, and it bounds the tokenising work a
request can cause. Generation itself goes through the model's ``Batcher``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from starlette.responses import StreamingResponse

from sftkit.infer.batcher import Batcher
from sftkit.infer.engine import Engine, GenParams, GenResult
from sftkit.infer.openai_protocol import (
    APIError,
    ChatRequest,
    CompletionRequest,
    error_body,
    to_conversation,
)
from sftkit.infer.requestlog import Observation

# Tokens average 3-5 characters in English and 1-2 in Chinese; text over 8 per token of
# context cannot fit, so it is refused by its length alone, before it is tokenised.
MAX_CHARS_PER_TOKEN = 8
PREP_WORKERS = min(4, os.cpu_count() or 1)  # request preparation threads (the model has its own)


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
class Job:
    """A validated request, ready for the batcher: its prompts, their token counts and settings."""

    req: Any
    prompts: list[str]
    counts: list[int]
    params: list[GenParams]


class ServedModel:
    """One served model's state and request handling (kept off module globals so tests can run
    several apps; a canary is a second ``ServedModel`` with its own batcher).
    ``*_job`` and ``prepare_*`` do a request's CPU work and run on the preparation pool, never on the
    event loop."""

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

    def chat_job(self, req: ChatRequest) -> Job:
        if req.stream and req.n != 1:
            raise APIError(400, "n > 1 is not supported with stream=true", param="n")
        try:
            prompt = self.engine.prompt_for(to_conversation(req))
        except _template_errors() as e:  # e.g. a role this model family has no turn for
            raise APIError(400, f"the chat template cannot render these messages: {e}", param="messages") from None
        n = self.count_tokens(prompt, "messages")
        return Job(req, [prompt], [n], [self.params(req, n, req.max_completion_tokens or req.max_tokens)])

    def completion_job(self, req: CompletionRequest) -> Job:
        if req.suffix:
            raise APIError(400, "suffix is not supported by this server", param="suffix")
        prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not prompts:
            raise APIError(400, "prompt must not be empty", param="prompt")
        if req.stream and (req.n != 1 or len(prompts) != 1):
            raise APIError(400, "stream=true needs one prompt and n=1", param="stream")
        one = isinstance(req.prompt, str)
        counts = [self.count_tokens(p, "prompt" if one else f"prompt[{i}]") for i, p in enumerate(prompts)]
        return Job(req, prompts, counts, [self.params(req, c, req.max_tokens) for c in counts])

    def params(self, req: ChatRequest | CompletionRequest, prompt_tokens: int, requested: int | None) -> GenParams:
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


async def answer_chat(srv: ServedModel, job: Job, obs: Observation, done: Callable[[Observation], None]
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


async def answer_completions(srv: ServedModel, job: Job, obs: Observation, done: Callable[[Observation], None]
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


def _stream(srv: ServedModel, prompt: str, params: GenParams, n_prompt: int, include_usage: bool, rid: str,
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

"""One batched generation engine for eval, chat, generate and serve.

A hand-written decoding loop over the KV cache rather than ``model.generate``:
it gives per-row stopping (a finished row leaves the batch, so short answers do
not pay for long ones), stop *strings* checked on decoded text, per-row timing,
and streaming from the same code path — so what ``sft chat`` shows is exactly
what ``sft eval`` scores.

Prompts are left-padded; position ids are computed from the attention mask so a
padded row sees the same positions as it would alone, which is what makes batched
greedy output equal one-at-a-time greedy output token for token.

On a GPU the inputs and the KV cache live on the model's device; a batch holds as many prompts as
the free memory allows (``sftkit.infer.memory``), and an out-of-memory error halves the batch: the
rows that were decoding continue in two smaller batches, recomputed from their prompt and the
tokens they already have, so no request is lost and greedy output stays what it would have been.
The halving is logged and remembered for the engine's later batches.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from sftkit.core.errors import DoesNotFit
from sftkit.core.rundir import RunDir
from sftkit.hub.device import InferenceDevice
from sftkit.hub.models import inference_device, load_model, load_tokenizer, resolve
from sftkit.infer import memory
from sftkit.infer.decoding import FinishReason, GenParams, GenResult, _cut_at_stop, _held_back, _Row
from sftkit.infer.stats import InferStats
from sftkit.infer.streams import MultiStream, Stream
from sftkit.templates.registry import load_template
from sftkit.templates.render import Renderer

__all__ = [
    "Engine",
    "FinishReason",
    "GenParams",
    "GenResult",
    "MultiStream",
    "Stream",
    "_cut_at_stop",
    "build_renderer",
]
log = logging.getLogger(__name__)


def _process_logits(
    logits: torch.Tensor, seen: list[torch.Tensor], p: GenParams, gen: torch.Generator | None
) -> torch.Tensor:
    """Next token ids for a (rows, vocab) float tensor of last-position logits."""
    if p.repetition_penalty != 1.0:
        for r, prev in enumerate(seen):
            vals = logits[r, prev]
            # CTRL-style penalty: shrink positive logits, push negative ones further down.
            logits[r, prev] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
    if p.greedy:
        return logits.argmax(dim=-1)
    logits = logits / p.temperature
    if p.top_k > 0:
        kth = torch.topk(logits, min(p.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens ranked above it already reach top_p (keeps at least one).
        drop = (cum - sorted_logits.softmax(dim=-1)) >= p.top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


class Engine:
    """Batched generation for one model, tokenizer and renderer. ``batch_size`` is the most prompts
    decoded together; on a GPU the free memory may allow fewer (see ``sftkit.infer.memory``)."""

    def __init__(self, model: Any, tokenizer: Any, renderer: Any = None, batch_size: int = 16,
                 device: InferenceDevice | None = None, stats: InferStats | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.renderer = renderer
        self.batch_size = batch_size
        self.device_info = device  # how the model was placed (None: by the caller, e.g. training)
        self.stats = stats or InferStats()
        self.max_rows: int | None = None  # learned from an out-of-memory error
        self.free_memory = memory.free_bytes  # device -> bytes (None: no cap); tests replace it
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.stop_strings, self.stop_ids = self._end_of_turn()
        self._keep_last = _accepts_logits_to_keep(model)
        self._cache_kw = _cache_keyword(model)

    @classmethod
    def from_ref(cls, ref: str, dtype: str | None = None, batch_size: int = 16, template: str | None = None,
                 *, device: str | InferenceDevice = "auto") -> Engine:
        """Load a model reference or run folder (base + adapter) with the run's template, on the device
        the rule picks for ``device`` (``sftkit.hub.device``); ``dtype`` None: the rule's dtype."""

        resolved = resolve(ref)
        dev = inference_device(resolved, device, dtype)
        tok = load_tokenizer(resolved.path)
        model = load_model(resolved, device=dev)
        if template is None and resolved.run_dir is not None:
            template = RunDir(resolved.run_dir).template()
        return cls(model, tok, build_renderer(tok, template), batch_size=batch_size, device=dev)

    def _end_of_turn(self) -> tuple[list[str], set[int]]:
        """The template's end-of-turn strings, and those that are single tokens as ids."""
        strings = list(getattr(getattr(self.renderer, "template", None), "stop_strings", None) or [])
        ids: set[int] = set()
        self._single_token_stops: set[str] = set()
        eos = self.tokenizer.eos_token_id
        for e in eos if isinstance(eos, list) else [eos]:
            if e is not None:
                ids.add(int(e))
        for s in strings:
            enc = self.tokenizer(s, add_special_tokens=False)["input_ids"]
            if len(enc) == 1:
                ids.add(int(enc[0]))
                self._single_token_stops.add(s)
        return strings, ids

    # -- public API -------------------------------------------------------------

    def generate(self, prompts: Sequence[str], params: GenParams | None = None) -> list[GenResult]:
        """Complete every prompt; results come back in prompt order."""
        params = params or GenParams()
        encoded = [self._encode(p) for p in prompts]
        self.stats.started(len(encoded), sum(map(len, encoded)))
        # Similar lengths in one batch waste less compute on padding.
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        rows = [_Row(i, encoded[i]) for i in order]
        gen = self._generator(params)
        start = 0
        while start < len(rows):
            n = self.rows_per_batch(rows[start : start + self.batch_size], params.max_new_tokens)
            self._run(rows[start : start + n], params, gen)
            start += n
        results: list[GenResult | None] = [None] * len(encoded)
        for r in rows:
            results[r.index] = self._result(r)
        return [r for r in results if r is not None]

    def stream(self, prompt: str, params: GenParams | None = None) -> Stream:
        """Iterate over the completion of one prompt as text deltas (for chat and
        SSE); once exhausted, ``.result`` holds the ``GenResult`` (finish reason,
        token counts) for a final SSE chunk or usage line."""
        params = params or GenParams()
        ids = self._encode(prompt)
        self.stats.started(1, len(ids))
        return Stream(MultiStream(self, [_Row(0, ids)], params))

    def stream_many(self, prompts: Sequence[str], params: GenParams | None = None,
                    max_new_tokens: Sequence[int] | None = None) -> MultiStream:
        """Several streamed completions decoded as one batch (one forward pass per step for all of
        them): the server's concurrent streaming clients share the model this way. Each prompt may
        keep its own ``max_new_tokens``."""
        params = params or GenParams()
        limits = list(max_new_tokens or [params.max_new_tokens] * len(prompts))
        rows = [_Row(i, self._encode(p), max_new=n) for i, (p, n) in enumerate(zip(prompts, limits, strict=True))]
        self.stats.started(len(rows), sum(len(r.prompt_ids) for r in rows))
        return MultiStream(self, rows, replace(params, max_new_tokens=max(limits)))

    def rows_per_batch(self, candidates: Sequence[_Row], max_new_tokens: int) -> int:
        """How many of ``candidates`` (sorted by length) one batch takes: ``batch_size``, the limit
        learned from an out-of-memory error, and what the device's free memory holds."""
        limit = min(len(candidates), self.max_rows or len(candidates))
        if self.model is None or limit <= 1:
            return max(1, limit)
        longest = max(len(r.prompt_ids) + len(r.ids) for r in candidates[:limit])
        free = self.free_memory(self.input_device())
        return memory.rows_that_fit(free, memory.kv_bytes_per_token(self.model), longest + max_new_tokens, limit)

    def prompt_for(self, conv: Any) -> str:
        """The inference prompt of a conversation under this engine's template."""
        if self.renderer is None:
            raise ValueError("this Engine has no renderer; pass prompt strings")
        return self.renderer.prompt_text(conv)

    # -- internals --------------------------------------------------------------

    def _encode(self, prompt: str) -> list[int]:
        # Rendered prompts already carry the template's special tokens (like Renderer).
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if not ids:
            bos = self.tokenizer.bos_token_id
            ids = [bos if bos is not None else self.pad_id]
        return list(ids)

    @staticmethod
    def _generator(params: GenParams) -> torch.Generator | None:
        if params.greedy or params.seed is None:
            return None
        return torch.Generator().manual_seed(params.seed)

    def _result(self, r: _Row) -> GenResult:
        return GenResult(
            text=r.text,
            token_ids=list(r.ids),
            finish_reason=r.finish or "length",
            prompt_tokens=len(r.prompt_ids),
            completion_tokens=len(r.ids),
            first_token_s=r.first_s,
            total_s=r.total_s,
        )

    def input_device(self) -> torch.device:
        """Where inputs go: the input embeddings' device (the first card when spread over several)."""
        emb = self.model.get_input_embeddings() if hasattr(self.model, "get_input_embeddings") else None
        weight = getattr(emb, "weight", None)
        return weight.device if weight is not None else next(self.model.parameters()).device

    def _run(self, rows: list[_Row], params: GenParams, gen: torch.Generator | None) -> None:
        """Decode ``rows`` to the end. Out of memory: the rows still decoding go on in batches of half
        the size (recomputed from prompt + tokens so far), and later batches keep that size."""
        queue = [rows]
        while queue:
            part = [r for r in queue.pop(0) if r.finish is None]
            cap = self.max_rows or len(part)
            if len(part) > cap:
                queue[:0] = [part[i : i + cap] for i in range(0, len(part), cap)]
                continue
            if not part:
                continue
            try:
                for _ in self._decode(part, params, gen, time.perf_counter(), stream=False):
                    pass
                continue
            except Exception as e:
                if not memory.is_oom(e):
                    raise
            self.halve([r for r in part if r.finish is None], params)  # the batch that ran out of memory
            queue.insert(0, part)

    def halve(self, live: list[_Row], params: GenParams) -> int:
        """After an out-of-memory error in a batch of ``live`` rows: the new batch size (logged and
        kept); one row that does not fit alone is ``DoesNotFit``."""
        dev = self.input_device()
        memory.release(dev)
        if len(live) <= 1:
            tokens = sum(len(r.prompt_ids) + len(r.ids) for r in live)
            raise DoesNotFit(f"out of memory on {dev} decoding a single prompt ({tokens} tokens so far, up to "
                             f"{params.max_new_tokens} new): lower max_new_tokens, shorten the prompt, or use a "
                             "smaller model or dtype")
        half = len(live) // 2
        self.max_rows = min(self.max_rows or half, half)
        self.stats.halved(self.max_rows)
        log.warning("out of memory on %s with a batch of %d prompts: retrying them in batches of %d "
                    "(and keeping that size)", dev, len(live), half)
        return half

    @torch.inference_mode()
    def _decode(
        self, rows: list[_Row], p: GenParams, gen: torch.Generator | None, t0: float, stream: bool
    ) -> Iterator[list[tuple[int, str]]]:
        """Run the batch to completion, updating ``rows`` in place; when ``stream``, yield once per
        forward step the ``(row.index, text delta)`` pairs that became safe to show. A row that
        already has tokens (a retry after out-of-memory) continues from prompt + those tokens."""
        from transformers import DynamicCache

        dev = self.input_device()
        stops = [*self.stop_strings, *p.stop]
        # Decoding every step is only needed for streaming and for stop strings
        # that are not single tokens; otherwise the text is decoded once at the end.
        need_text = stream or any(s and s not in self._single_token_stops for s in stops)
        ctx = [r.prompt_ids + r.ids for r in rows]
        width = max(len(c) for c in ctx)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, c in enumerate(ctx):
            ids[b, width - len(c) :] = torch.tensor(c)
            mask[b, width - len(c) :] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        # Left padding: a row's first real token must sit at position 0.
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        seen = [torch.tensor(c, device=dev) for c in ctx]
        active = list(range(len(rows)))  # indices into ``rows`` still decoding
        cache = DynamicCache()
        step_ids, step_pos = ids, pos
        # Only the last position's logits are needed: at prefill this saves a (rows, width, vocab) tensor.
        keep = {"logits_to_keep": 1} if self._keep_last else {}
        while active:
            ts = time.perf_counter()
            out = self.model(input_ids=step_ids, attention_mask=mask, position_ids=step_pos, use_cache=True,
                             **{self._cache_kw: cache}, **keep)
            cache = getattr(out, self._cache_kw)
            logits = out.logits[:, -1, :].float()
            nxt = _process_logits(logits, seen, p, gen).tolist()  # .tolist(): the CPU waits for the GPU here
            left = self._advance([rows[ri] for ri in active], nxt, seen, p, stops, need_text, time.perf_counter() - t0)
            self.stats.step(len(active), time.perf_counter() - ts)
            if stream:
                yield [(rows[ri].index, d) for ri in active for d in self._stream_delta(rows[ri], stops)]
            if len(left) < len(active):
                if not left:
                    break
                # A finished row leaves the batch, and its cache rows with it.
                idx = torch.tensor(left, device=dev)
                cache.batch_select_indices(idx)
                mask, step_pos = mask[idx], pos_last(step_pos)[idx]
                nxt = [nxt[b] for b in left]
                seen = [seen[b] for b in left]
                active = [active[b] for b in left]
            else:
                step_pos = pos_last(step_pos)
            step_ids = torch.tensor(nxt, device=dev).unsqueeze(-1)
            step_pos = step_pos + 1
            mask = torch.cat([mask, torch.ones((len(active), 1), dtype=mask.dtype, device=dev)], dim=-1)

    def _advance(self, rows: list[_Row], nxt: list[int], seen: list[torch.Tensor], p: GenParams, stops: list[str],
                 need_text: bool, now: float) -> list[int]:
        """Append each active row's next token; return the batch positions still decoding."""
        keep: list[int] = []
        for b, (r, tok) in enumerate(zip(rows, nxt, strict=True)):
            if not r.ids:
                r.first_s = now
            r.ids.append(int(tok))
            if p.repetition_penalty != 1.0:
                seen[b] = torch.cat([seen[b], torch.tensor([tok], device=seen[b].device)])
            self._check_stop(r, int(tok), stops, r.max_new or p.max_new_tokens, need_text)
            if r.finish is None and r.abort:
                r.finish = "abort"
            if r.finish is None:
                keep.append(b)
            else:
                r.total_s = now
        return keep

    def _check_stop(self, r: _Row, tok: int, stops: list[str], max_new: int, need_text: bool) -> None:
        hit_token = tok in self.stop_ids
        body = r.ids[:-1] if hit_token else r.ids
        if need_text or hit_token or len(r.ids) >= max_new:
            text = self.tokenizer.decode(body, skip_special_tokens=False)
            r.text, hit_string = _cut_at_stop(text, stops)
            if hit_token or hit_string:
                r.finish = "stop"
            elif len(r.ids) >= max_new:
                r.finish = "length"

    def _stream_delta(self, r: _Row, stops: list[str]) -> Iterator[str]:
        safe = len(r.text) if r.finish else len(r.text) - _held_back(r.text, stops)
        if safe > r.emitted:
            yield r.text[r.emitted : safe]
            r.emitted = safe


def pos_last(pos: torch.Tensor) -> torch.Tensor:
    """The last position of each row, as a (rows, 1) tensor."""
    return pos[:, -1:]



def _forward_parameters(model: Any) -> Mapping[str, Any]:
    """The parameters of the model's forward (a PEFT wrapper's base model's: it passes them on)."""
    if model is None:
        return {}
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return {}


def _accepts_logits_to_keep(model: Any) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (transformers' causal LMs do)."""
    return "logits_to_keep" in _forward_parameters(model)


def _cache_keyword(model: Any) -> str:
    """The KV cache's argument (and output field) name: ``cache`` from transformers 5.2x on, where
    ``past_key_values`` is deprecated (removed in 5.40); ``past_key_values`` for older models and
    remote code."""
    return "cache" if "cache" in _forward_parameters(model) else "past_key_values"


def build_renderer(tokenizer: Any, template: str | None = None) -> Any:
    """A Renderer for ``template`` (None/"auto": the tokenizer's own chat template;
    a shipped name; a .json/.jinja file)."""
    return Renderer(load_template(template, tokenizer), tokenizer)

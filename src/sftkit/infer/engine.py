"""One batched generation engine for eval, chat, generate and serve.

A hand-written decoding loop over the KV cache rather than ``model.generate``:
it gives per-row stopping (a finished row leaves the batch, so short answers do
not pay for long ones), stop *strings* checked on decoded text, per-row timing,
and streaming from the same code path — so what ``sft chat`` shows is exactly
what ``sft eval`` scores.

Prompts are left-padded; position ids are computed from the attention mask so a
padded row sees the same positions as it would alone, which is what makes batched
greedy output equal one-at-a-time greedy output token for token.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch

from sftkit.core.errors import UsageError
from sftkit.core.rundir import RunDir
from sftkit.hub.models import load_model, load_tokenizer, resolve
from sftkit.templates.registry import load_template
from sftkit.templates.render import Renderer

FinishReason = Literal["stop", "length", "abort"]  # abort: the caller left mid-stream


@dataclass(slots=True)
class GenParams:
    """Decoding settings. ``temperature <= 0`` means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise UsageError(f"repetition_penalty must be positive, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0


@dataclass(slots=True)
class GenResult:
    """One completion. ``token_ids`` are the generated ids including a final
    end-of-turn token when there was one; ``text`` excludes stop strings."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    first_token_s: float
    total_s: float


@dataclass(slots=True)
class _Row:
    """Decoding state of one prompt."""

    index: int
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0  # characters of ``text`` already streamed
    finish: FinishReason | None = None
    first_s: float = 0.0
    total_s: float = 0.0
    max_new: int | None = None  # this row's own limit (streams batched together keep theirs)
    abort: bool = False  # the caller is gone: leave the batch at the next step


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters might be the start of a stop string (or an
    incomplete UTF-8 character) and so must not be streamed yet."""
    n = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                n = max(n, k)
                break
    if text.endswith("\ufffd"):
        n = max(n, 1)
    return n


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
    """Batched generation for one model, tokenizer and renderer."""

    def __init__(self, model: Any, tokenizer: Any, renderer: Any = None, batch_size: int = 16) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.renderer = renderer
        self.batch_size = batch_size
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.stop_strings, self.stop_ids = self._end_of_turn()

    @classmethod
    def from_ref(cls, ref: str, dtype: str = "float32", batch_size: int = 16, template: str | None = None) -> Engine:
        """Load a model reference or run folder (base + adapter) with the run's template."""

        resolved = resolve(ref)
        tok = load_tokenizer(resolved.path)
        model = load_model(resolved, dtype=dtype)
        if template is None and resolved.run_dir is not None:
            template = RunDir(resolved.run_dir).template()
        return cls(model, tok, build_renderer(tok, template), batch_size=batch_size)

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
        # Similar lengths in one batch waste less compute on padding.
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        results: list[GenResult | None] = [None] * len(encoded)
        gen = self._generator(params)
        for start in range(0, len(order), self.batch_size):
            rows = [_Row(i, encoded[i]) for i in order[start : start + self.batch_size]]
            t0 = time.perf_counter()
            for _ in self._decode(rows, params, gen, t0, stream=False):
                pass
            for r in rows:
                results[r.index] = self._result(r)
        return [r for r in results if r is not None]

    def stream(self, prompt: str, params: GenParams | None = None) -> Stream:
        """Iterate over the completion of one prompt as text deltas (for chat and
        SSE); once exhausted, ``.result`` holds the ``GenResult`` (finish reason,
        token counts) for a final SSE chunk or usage line."""
        params = params or GenParams()
        return Stream(self, _Row(0, self._encode(prompt)), params)

    def stream_many(self, prompts: Sequence[str], params: GenParams | None = None,
                    max_new_tokens: Sequence[int] | None = None) -> MultiStream:
        """Several streamed completions decoded as one batch (one forward pass per step for all of
        them): the server's concurrent streaming clients share the model this way. Each prompt may
        keep its own ``max_new_tokens``."""
        params = params or GenParams()
        limits = list(max_new_tokens or [params.max_new_tokens] * len(prompts))
        rows = [_Row(i, self._encode(p), max_new=n) for i, (p, n) in enumerate(zip(prompts, limits, strict=True))]
        return MultiStream(self, rows, replace(params, max_new_tokens=max(limits)))

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

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def _decode(
        self, rows: list[_Row], p: GenParams, gen: torch.Generator | None, t0: float, stream: bool
    ) -> Iterator[list[tuple[int, str]]]:
        """Run the batch to completion, updating ``rows`` in place; when ``stream``,
        yield once per forward step the ``(row, text delta)`` pairs that became safe to show."""
        from transformers import DynamicCache

        dev = self._device()
        stops = [*self.stop_strings, *p.stop]
        # Decoding every step is only needed for streaming and for stop strings
        # that are not single tokens; otherwise the text is decoded once at the end.
        need_text = stream or any(s and s not in self._single_token_stops for s in stops)
        width = max(len(r.prompt_ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, width - len(r.prompt_ids) :] = torch.tensor(r.prompt_ids)
            mask[b, width - len(r.prompt_ids) :] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        # Left padding: a row's first real token must sit at position 0.
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        seen = [torch.tensor(r.prompt_ids, device=dev) for r in rows]
        active = list(range(len(rows)))  # indices into ``rows`` still decoding
        cache = DynamicCache()
        step_ids, step_pos = ids, pos
        while active:
            out = self.model(
                input_ids=step_ids, attention_mask=mask, position_ids=step_pos, past_key_values=cache, use_cache=True
            )
            cache = out.past_key_values
            logits = out.logits[:, -1, :].float()
            nxt = _process_logits(logits, seen, p, gen).tolist()
            keep = self._advance([rows[ri] for ri in active], nxt, seen, p, stops, need_text, time.perf_counter() - t0)
            if stream:
                yield [(ri, d) for ri in active for d in self._stream_delta(rows[ri], stops)]
            if len(keep) < len(active):
                if not keep:
                    break
                # A finished row leaves the batch, and its cache rows with it.
                idx = torch.tensor(keep, device=dev)
                cache.batch_select_indices(idx)
                mask, step_pos = mask[idx], pos_last(step_pos)[idx]
                nxt = [nxt[b] for b in keep]
                seen = [seen[b] for b in keep]
                active = [active[b] for b in keep]
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


class Stream:
    """An ``Iterator[str]`` of text deltas that also keeps the final result."""

    def __init__(self, engine: Engine, row: _Row, params: GenParams) -> None:
        self._engine, self._row = engine, row
        gen = engine._generator(params)
        self._it = engine._decode([row], params, gen, time.perf_counter(), stream=True)
        self.result: GenResult | None = None

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> str:
        try:
            while True:  # a step may hold text back (a stop string could be starting)
                step = next(self._it)
                if step:
                    return "".join(d for _, d in step)
        except StopIteration:
            self.result = self._engine._result(self._row)
            raise

    def close(self) -> None:
        self._it.close()  # drops the KV cache now


class MultiStream:
    """Batched streams: ``step()`` runs one forward pass for every unfinished row and returns the
    ``(row, delta)`` pairs it produced, or ``None`` once every row has finished."""

    def __init__(self, engine: Engine, rows: list[_Row], params: GenParams) -> None:
        self._engine, self.rows = engine, rows
        self._it = engine._decode(rows, params, engine._generator(params), time.perf_counter(), stream=True)

    def step(self) -> list[tuple[int, str]] | None:
        try:
            return next(self._it)
        except StopIteration:
            return None

    def finished(self, i: int) -> bool:
        return self.rows[i].finish is not None

    def result(self, i: int) -> GenResult:
        return self._engine._result(self.rows[i])

    def abort(self, i: int) -> None:
        self.rows[i].abort = True

    def close(self) -> None:
        self._it.close()


def pos_last(pos: torch.Tensor) -> torch.Tensor:
    """The last position of each row, as a (rows, 1) tensor."""
    return pos[:, -1:]



def build_renderer(tokenizer: Any, template: str | None = None) -> Any:
    """A Renderer for ``template`` (None/"auto": the tokenizer's own chat template;
    a shipped name; a .json/.jinja file)."""
    return Renderer(load_template(template, tokenizer), tokenizer)

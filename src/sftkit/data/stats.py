"""Token-length and diversity statistics (``sft data stats``)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sftkit.core.conversation import Conversation
from sftkit.core.errors import RowRejected
from sftkit.data.text import distinct_n, prompt_of, response_of
from sftkit.data.types import Reject
from sftkit.data.validate import fold_rendered, split_source
from sftkit.hub.models import load_tokenizer, resolve
from sftkit.templates.hf import HFChatTemplate
from sftkit.templates.render import Renderer

PERCENTILES = (50, 90, 95, 99)


@dataclass(slots=True)
class Lengths:
    """Per-row token counts; ``response`` = tokens that carry loss, ``prompt`` = the rest."""

    prompt: np.ndarray
    response: np.ndarray
    total: np.ndarray
    trainable_after: list[np.ndarray]  # per row: cumulative trainable-token count by position


def make_renderer(model: str = "smollm2-135m-instruct") -> Any:
    """A Renderer with the model's own chat template (no cutoff: full lengths)."""

    tok = load_tokenizer(resolve(model).path)
    return Renderer(HFChatTemplate(tok, name=model), tok)


def render_all(
    renderer: Any, convs: Sequence[Conversation], batch: int | None = None
) -> tuple[list[Any], list[Reject]]:
    """Render every row; a row the template cannot render (or too long for the
    renderer's cutoff under ``drop``) becomes a ``Reject``, in row order.

    ``batch`` is accepted for compatibility and unused: ``render_many`` chunks and
    pipelines the work itself and returns failures per row."""

    ok: list[Any] = []
    rejects: list[Reject] = []
    for conv, r in zip(convs, renderer.render_many(convs, errors="return"), strict=True):
        if isinstance(r, RowRejected):
            rejects += fold_rendered([conv], [r])[1]
        elif isinstance(r, Exception):
            rejects.append(_template_reject(conv, r))
        else:
            ok.append(r)
    return ok, rejects


def _template_reject(conv: Conversation, e: Exception) -> Reject:
    file, line = split_source(conv.source)
    raw = json.dumps(conv.to_dict(), ensure_ascii=False)
    return Reject(file, line, f"template error: {str(e).removeprefix(f'{conv.source}: ')}", raw)


def lengths(rendered: Sequence[Any]) -> Lengths:
    total = np.array([len(r.input_ids) for r in rendered], dtype=np.int64)
    trainable = [np.cumsum(np.array(r.labels) != -100) for r in rendered]
    response = np.array([int(t[-1]) if len(t) else 0 for t in trainable], dtype=np.int64)
    return Lengths(total - response, response, total, trainable)


def summary(x: np.ndarray) -> dict[str, float]:
    if not len(x):
        return {"mean": 0, "min": 0, "max": 0, **{f"p{p}": 0 for p in PERCENTILES}}
    out = {"mean": round(float(x.mean()), 1), "min": int(x.min()), "max": int(x.max())}
    out.update({f"p{p}": int(np.percentile(x, p, method="higher")) for p in PERCENTILES})
    return out


def cdf(x: np.ndarray, points: int = 20) -> list[list[float]]:
    """``[[length, share of rows <= length], ...]`` at evenly spaced quantiles."""
    if not len(x):
        return []
    qs = np.linspace(0, 100, points + 1)
    vals = np.percentile(x, qs, method="higher")
    return [[int(v), round(float((x <= v).mean()), 4)] for v in vals]


def recommend_cutoff(total: np.ndarray, coverage: float) -> int:
    """Smallest length (rounded up to a multiple of 8) that fits ``coverage`` of rows."""
    if not len(total):
        return 0
    v = int(np.percentile(total, coverage * 100, method="higher"))
    return int(math.ceil(v / 8) * 8)


def cut_share(lens: Lengths, cutoff: int) -> dict[str, float]:
    """What a cutoff would cut: share of rows longer than it, and share of
    response (trainable) tokens past it."""
    n = len(lens.total)
    if not n:
        return {"cutoff": cutoff, "rows_cut": 0.0, "response_tokens_cut": 0.0}
    over = lens.total > cutoff
    lost = sum(
        int(t[-1] - t[cutoff - 1]) if cutoff > 0 else int(t[-1])
        for t, o in zip(lens.trainable_after, over, strict=True)
        if o
    )
    resp = int(lens.response.sum())
    return {
        "cutoff": cutoff,
        "rows_cut": round(float(over.mean()), 4),
        "response_tokens_cut": round(lost / resp, 4) if resp else 0.0,
    }


def turns(convs: Sequence[Conversation]) -> dict[str, float]:
    """User turns per conversation (text rows count as 0)."""
    n = np.array([sum(1 for m in c.messages if m.role == "user") for c in convs], dtype=np.int64)
    if not len(n):
        return {"mean": 0, "min": 0, "max": 0}
    hist = {str(k): int(v) for k, v in zip(*np.unique(n, return_counts=True), strict=True)}
    return {"mean": round(float(n.mean()), 2), "min": int(n.min()), "max": int(n.max()), "histogram": hist}


def diversity(convs: Sequence[Conversation]) -> dict[str, float]:
    prompts = [prompt_of(c) for c in convs]
    replies = [response_of(c) for c in convs]
    return {
        "instruction_distinct_1": distinct_n(prompts, 1),
        "instruction_distinct_2": distinct_n(prompts, 2),
        "response_distinct_1": distinct_n(replies, 1),
        "response_distinct_2": distinct_n(replies, 2),
    }


def compute(convs: Sequence[Conversation], renderer: Any, cutoff: int | None = None) -> dict[str, Any]:
    """Everything ``sft data stats`` reports, as one JSON-able dict."""
    rendered, rejects = render_all(renderer, convs)
    lens = lengths(rendered)
    c95, c99 = recommend_cutoff(lens.total, 0.95), recommend_cutoff(lens.total, 0.99)
    out: dict[str, Any] = {
        "rows": len(convs),
        "rendered": len(rendered),
        "tokens": {"prompt": summary(lens.prompt), "response": summary(lens.response), "total": summary(lens.total)},
        "cdf_total": cdf(lens.total),
        "recommended_cutoff": {"p95": c95, "p99": c99},
        "cut": [cut_share(lens, c) for c in sorted({c95, c99, *([cutoff] if cutoff else [])})],
        "turns": turns(convs),
        "diversity": diversity(convs),
        "render_rejects": [r.to_dict(with_raw=False) for r in rejects],
    }
    out["_lengths"] = lens
    return out


def plot(lens: Lengths, out_path: str, cutoffs: Sequence[int] = ()) -> str:
    """Histogram of total token lengths (with cutoff lines) and its CDF, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if len(lens.total):
        ax1.hist(lens.total, bins=min(60, max(5, len(lens.total) // 10)), color="#4c72b0")
        xs = np.sort(lens.total)
        ax2.plot(xs, np.arange(1, len(xs) + 1) / len(xs), color="#4c72b0")
    for c in cutoffs:
        for ax in (ax1, ax2):
            ax.axvline(c, color="#c44e52", linestyle="--", linewidth=1)
    ax1.set(title="Tokens per row", xlabel="tokens", ylabel="rows")
    ax2.set(title="CDF", xlabel="tokens", ylabel="share of rows")
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return out_path

"""From the config's data files to tokenized examples, with every row accounted for.

``prepare()`` is the one path used by ``sft train``: read each file with
``sftkit.data``, mix weighted sources, render with the run's template, and
return the examples plus a report (counts per file) and the rejected rows
(file:line, reason, the row verbatim). The result is cached (``prepared_cache``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

from sftkit.core.config import DataConfig, DataSource
from sftkit.core.conversation import Conversation
from sftkit.core.errors import DataError
from sftkit.data import Reject, enforce, fold_rendered, load_file
from sftkit.data.cache import cached
from sftkit.data.dedup import conv_text, exact_groups
from sftkit.data.lint import lint
from sftkit.data.mix import mix
from sftkit.templates.render import Rendered, Renderer, paused_gc


@dataclass
class SplitData:
    examples: list[Rendered] = field(default_factory=list)


@dataclass
class Prepared:
    train: SplitData
    val: SplitData
    report: dict[str, Any]
    rejects: list[Reject]
    sample: list[Conversation] = field(default_factory=list)  # for the template contract check
    val_conversations: list[Conversation] = field(default_factory=list)  # for scoring by generation


def read_sources(sources: list[DataSource], on_error: str, seed: int,
                 val_share: float = 0.0) -> tuple[list[Conversation], list[Reject], dict, list[Conversation]]:
    """Rows of every file, mixed by weight when any file has one; with ``val_share``, that share of
    each weighted file is held out (returned last) *before* mixing, so that an upsampled row never
    has a copy in both the training and the validation set."""
    results = [load_file(s.path, format=s.format, columns=s.columns or None) for s in sources]
    for res in results:
        enforce(res, on_error)  # type: ignore[arg-type]
    rejects = [r for res in results for r in res.rejects]
    held: list[Conversation] = []
    held_per_file = [0] * len(results)
    if any(s.weight is not None for s in sources):
        parts = []
        for i, res in enumerate(results):
            keep, out = hold_out(res.conversations, val_share, seed)
            held += out
            held_per_file[i] = len(out)
            parts.append(replace(res, conversations=keep))
        convs, mixing = mix([(res, s.weight if s.weight is not None else 1.0)
                             for res, s in zip(parts, sources, strict=True)], seed=seed)
    else:
        convs, mixing = [c for res in results for c in res.conversations], None
    files = [{"path": res.path, "format": res.format, "total": res.total, "valid": res.valid,
              "rejected": res.rejected, **({"val_held_out": n} if held else {})}
             for res, n in zip(results, held_per_file, strict=True)]
    return convs, rejects, {"files": files, "mix": mixing}, held


def hold_out(convs: list[Conversation], share: float, seed: int) -> tuple[list[Conversation], list[Conversation]]:
    """``(kept, held out)``: a seeded random ``share`` of the rows (at least one when there are
    two or more), the kept rows in their original order."""
    if share <= 0 or len(convs) < 2:
        return list(convs), []
    order = list(range(len(convs)))
    random.Random(seed).shuffle(order)
    n = max(1, round(len(order) * share))
    return [convs[i] for i in sorted(order[n:])], [convs[i] for i in order[:n]]


def _render(convs: list[Conversation], renderer: Renderer, rejects: list[Reject], on_error: str) -> SplitData:
    kept, too_long = fold_rendered(convs, renderer.render_many(convs))
    enforce(too_long, on_error)  # type: ignore[arg-type]
    rejects.extend(too_long)
    return SplitData(kept)  # type: ignore[arg-type]


def length_histogram(lengths: list[int], cutoff_len: int, bins: int = 12) -> dict[str, list[int]]:
    """Token lengths of the training rows in equal-width bins up to ``cutoff_len`` (for the report)."""
    width = max(1, -(-cutoff_len // bins))
    counts = [0] * bins
    for n in lengths:
        counts[min(n // width, bins - 1)] += 1
    return {"edges": [i * width for i in range(bins + 1)], "counts": counts}


def quality_summary(convs: list[Conversation]) -> dict[str, Any]:
    """What `sft data lint` and the exact part of `sft data dedup` would say about the
    training rows: counts plus the first few places, so the run folder records it."""

    found = lint(convs)
    groups = exact_groups([conv_text(c) for c in convs])
    return {
        "lint": found["counts"],
        "lint_examples": [f"{i['kind']}: {i['source']}" for i in found["issues"][:10]],
        "exact_duplicate_groups": len(groups),
        "exact_duplicate_rows": sum(len(g) - 1 for g in groups),
    }


def prepare(data: DataConfig, renderer: Renderer, seed: int) -> Prepared:
    """Read, split, render and report; a second call with the same inputs (files, config,
    template, tokenizer, seed) loads the first one's result (``sftkit.data.cache``).
    ``report["cache"]`` says which happened."""

    out, info = cached(data, renderer, seed, lambda: _prepare(data, renderer, seed))
    out.report["cache"] = info
    return out


def _prepare(data: DataConfig, renderer: Renderer, seed: int) -> Prepared:
    with paused_gc():  # reading builds every row's objects: see paused_gc
        return _prepare_rows(data, renderer, seed)


def _prepare_rows(data: DataConfig, renderer: Renderer, seed: int) -> Prepared:
    share = data.val_size if not data.val else 0.0  # no val file: split val off the training files
    train_convs, rejects, train_info, held = read_sources(data.train, data.on_error, seed, val_share=share)
    val_convs, val_rejects, val_info, _ = read_sources(data.val, data.on_error, seed)
    rejects += val_rejects
    if held:  # weighted files: held out per file before mixing
        val_convs = held
    elif not val_convs:
        train_convs, val_convs = hold_out(train_convs, share, seed)
    train = _render(train_convs, renderer, rejects, data.on_error)
    val = _render(val_convs, renderer, rejects, data.on_error)
    if not train.examples:
        first = f" (first: {rejects[0].where}: {rejects[0].reason})" if rejects else ""
        raise DataError(f"no usable training example: {len(rejects)} row(s) rejected{first}")
    report = {
        "quality": quality_summary(train_convs),
        "train": train_info,
        "val": val_info,
        "train_examples": len(train.examples),
        "val_examples": len(val.examples),
        "rejected": len(rejects),
        "truncated": sum(e.truncated for e in train.examples + val.examples),
        "cutoff_len": data.cutoff_len,
        "train_tokens": sum(len(e.input_ids) for e in train.examples),
        "train_trainable_tokens": sum(e.n_trainable for e in train.examples),
        "length_histogram": length_histogram([len(e.input_ids) for e in train.examples], data.cutoff_len),
    }
    return Prepared(train, val, report, rejects, sample=check_sample(train_convs), val_conversations=val_convs)


def check_sample(convs: list[Conversation], n: int = 32) -> list[Conversation]:
    """The rows the template contract check sees: the first ``n``, plus the first row of every
    other kind (system prompt, reasoning, tool calls, tool results, declared tools, roles in
    order), so that a CoT or tool row deep in the file is checked too."""
    out, seen = [], set()
    for i, c in enumerate(convs):
        kind = (bool(c.tools), tuple((m.role, bool(m.reasoning), bool(m.tool_calls)) for m in c.messages[:4]))
        if i < n or (kind not in seen and len(out) < 4 * n):
            out.append(c)
        seen.add(kind)
    return out

"""The config's data files -> training rows for the stages other than sft (which is ``prepare.py``).

Both return a ``Prepared`` like SFT's, so training, the run folder's ``data_report.json`` and
``rejected.jsonl`` treat every stage alike; what differs is the row type:

* **preference** (dpo, orpo, simpo, kto): ``RenderedPair`` / ``RenderedFeedback`` rendered with the
  run's template (``templates/pairs.py``: the shared-prefix contract). The validation share is
  held out before KTO splits a pair into its two labelled halves, so both halves of a pair stay
  on one side. KTO rows are shuffled once (seeded): TRL builds each row's KL completion from its
  neighbour in the batch, which must not be the same prompt's other half.
* **pt**: ``Rendered`` blocks of ``cutoff_len`` tokens, loss on every token
  (``pretrain.py``: EOS after every document, the last partial block kept).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from sftkit.core.config import DataConfig, DataSource
from sftkit.core.conversation import Conversation
from sftkit.core.errors import DataError
from sftkit.data.preference import (
    Feedback,
    PrefLoad,
    PrefRow,
    RenderedPair,
    kto_balance,
    load_preference_file,
    render_preference,
    require_pairs,
    unpair,
)
from sftkit.data.prepare import Prepared, SplitData, check_sample, hold_out, length_histogram, quality_summary
from sftkit.data.pretrain import prepare_pretrain
from sftkit.data.types import Reject
from sftkit.data.validate import enforce
from sftkit.templates.render import Rendered, Renderer


def _no_weights(sources: Sequence[DataSource], stage: str) -> None:
    weighted = [str(s.path) for s in sources if s.weight is not None]
    if weighted:
        raise DataError(f"data.train weight is for mixing SFT files; stage {stage} reads every row once "
                        f"(remove weight from {', '.join(weighted)})")


def _load(sources: Sequence[DataSource], on_error: str) -> list[PrefLoad]:
    return [load_preference_file(s.path, format=s.format, columns=s.columns or None, on_error=on_error)  # type: ignore[arg-type]
            for s in sources]


def _rows(loads: Sequence[PrefLoad], stage: str) -> list[PrefRow]:
    if stage == "kto":
        return [r for res in loads for r in res.rows]
    return list(require_pairs(loads, stage))


def reply_conversation(row: Any) -> Conversation:
    """The prompt with its preferred reply (a pair's chosen one, a feedback row's completion):
    what the template contract is checked on and what generation is scored against."""
    reply = row.chosen if hasattr(row, "chosen") else row.completion
    return Conversation([*row.prompt.messages, reply], tools=row.prompt.tools, source=row.source)


def _render(rows: Sequence[PrefRow], renderer: Renderer, rejects: list[Reject], on_error: str) -> SplitData:
    kept, bad = render_preference(rows, renderer)
    enforce(bad, on_error)  # type: ignore[arg-type]
    rejects.extend(bad)
    return SplitData(kept)  # type: ignore[arg-type]


def _tokens(row: Any) -> int:
    if isinstance(row, RenderedPair):
        return len(row.prompt_ids) + len(row.chosen_ids) + len(row.rejected_ids)
    return len(row.prompt_ids) + len(row.completion_ids)


def longest(row: Any) -> int:
    """Tokens of the longest sequence a row puts through the model (prompt + its longer reply)."""
    if isinstance(row, RenderedPair):
        return len(row.prompt_ids) + max(len(row.chosen_ids), len(row.rejected_ids))
    if isinstance(row, Rendered):
        return len(row.input_ids)
    return len(row.prompt_ids) + len(row.completion_ids)


def prepare_preference(data: DataConfig, renderer: Renderer, stage: str, seed: int) -> Prepared:
    """Read, split, render and report the preference files of a dpo / orpo / simpo / kto run."""
    _no_weights(data.train, stage)
    train_loads, val_loads = _load(data.train, data.on_error), _load(data.val, data.on_error)
    rows, val_rows = _rows(train_loads, stage), _rows(val_loads, stage)
    if not data.val:
        rows, val_rows = hold_out(rows, data.val_size, seed)
    if stage == "kto":
        rows, val_rows = unpair(rows), unpair(val_rows)
        random.Random(seed).shuffle(rows)
    rejects = [r for res in [*train_loads, *val_loads] for r in res.rejects]
    train = _render(rows, renderer, rejects, data.on_error)
    val = _render(val_rows, renderer, rejects, data.on_error)
    if not train.examples:
        first = f" (first: {rejects[0].where}: {rejects[0].reason})" if rejects else ""
        raise DataError(f"no usable training pair: {len(rejects)} row(s) rejected{first}")
    convs = [reply_conversation(r) for r in rows]
    report: dict[str, Any] = {
        "stage": stage,
        "quality": quality_summary(convs),
        "train": {"files": [res.to_report() for res in train_loads]},
        "val": {"files": [res.to_report() for res in val_loads]},
        "train_examples": len(train.examples),
        "val_examples": len(val.examples),
        "rejected": len(rejects),
        "truncated": sum(e.truncated for e in train.examples + val.examples),
        "cutoff_len": data.cutoff_len,
        "train_tokens": sum(_tokens(e) for e in train.examples),
        "length_histogram": length_histogram([longest(e) for e in train.examples], data.cutoff_len),
    }
    if stage == "kto":
        report["kto_balance"] = kto_balance([r for r in rows if isinstance(r, Feedback)])
    val_convs = [reply_conversation(r) for r in val_rows if getattr(r, "desirable", True)]
    return Prepared(train, val, report, rejects, sample=check_sample(convs), val_conversations=val_convs)


def _text_column(sources: Sequence[DataSource]) -> str:
    names = {s.columns.get("text", "text") for s in sources}
    if len(names) > 1:
        raise DataError(f"stage pt reads one text field from every file; the files name {sorted(names)} "
                        "(use the same columns: {text: NAME} on each)")
    return names.pop() if names else "text"


def _blocks(blocks: Sequence[list[int]], start: int = 0) -> list[Rendered]:
    return [Rendered(b, list(b), "", source=f"block {start + i}") for i, b in enumerate(blocks)]


def prepare_pt(data: DataConfig, tokenizer: Any, seed: int) -> Prepared:
    """Plain documents -> ``cutoff_len`` blocks (loss on every token), the validation blocks from
    data.val or held out of train (data.val_size)."""
    _no_weights(data.train, "pt")
    column = _text_column([*data.train, *data.val])
    pt = prepare_pretrain([s.path for s in data.train], tokenizer, data.cutoff_len, column=column,
                          on_error=data.on_error)  # type: ignore[arg-type]
    rejects = list(pt.rejects)
    blocks, val_blocks = list(pt.blocks), []
    if data.val:
        val = prepare_pretrain([s.path for s in data.val], tokenizer, data.cutoff_len, column=column,
                               on_error=data.on_error)  # type: ignore[arg-type]
        val_blocks, rejects = val.blocks, rejects + val.rejects
    else:
        blocks, val_blocks = hold_out(blocks, data.val_size, seed)
    train, val = SplitData(_blocks(blocks)), SplitData(_blocks(val_blocks, len(blocks)))  # type: ignore[arg-type]
    tokens = sum(len(b) for b in blocks)
    report = {
        "stage": "pt",
        "pretrain": pt.report,
        "train": {"files": pt.report["files"]},
        "train_examples": len(blocks),
        "val_examples": len(val_blocks),
        "rejected": len(rejects),
        "truncated": 0,
        "cutoff_len": data.cutoff_len,
        "train_tokens": tokens,
        "train_trainable_tokens": tokens,
    }
    return Prepared(train, val, report, rejects)

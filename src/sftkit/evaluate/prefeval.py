"""Preference evaluation: on held-out chosen/rejected pairs, which reply each model prefers.

For every pair and model, the summed log-probability of each reply after the prompt (the
reply tokens only, rendered with the shared-prefix contract of ``templates/pairs.py``, as
DPO trains them):

* ``pref_accuracy``: the share of pairs where the model's log-ratio of chosen over rejected,
  ``log p(chosen) - log p(rejected)``, is > 0: it prefers the chosen reply outright;
* ``chosen_logp`` / ``rejected_logp``: the means of the two, and ``logp_margin`` their gap;
* with a baseline, the DPO implicit reward of the tuned model against it,
  ``beta * ((log p(c) - log p_base(c)) - (log p(r) - log p_base(r)))``: ``reward_accuracy`` is the
  share of pairs where it is > 0 (tuning moved the model toward the chosen reply), and
  ``reward_margin`` its mean. ``beta`` is the run's ``pref.beta``.

A preference test file also feeds the usual generation metrics: its prompts are answered and
scored against the chosen replies.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sftkit.core.conversation import Conversation
from sftkit.core.errors import DataError, RowRejected
from sftkit.core.stagecfg import DEFAULT_BETA, Stage
from sftkit.data.kinds import file_kind
from sftkit.data.preference import PreferencePair, load_preference_file
from sftkit.data.stagedata import reply_conversation
from sftkit.templates.pairs import RenderedPair, render_pairs

_TOKENS_PER_BATCH = 4096  # keeps the (batch, length, vocab) logits small on CPU


def is_preference_file(path: str | Path) -> bool:
    return file_kind(path) == "preference"


def load_pairs(path: str | Path, limit: int | None = None) -> tuple[list[PreferencePair], list[Conversation],
                                                                    list[dict[str, str]]]:
    """(pairs, their prompts with the chosen reply, skipped rows with reasons) of a preference file."""
    res = load_preference_file(path)
    skipped = [{"source": f"{r.file}:{r.line}", "reason": r.reason} for r in res.rejects]
    pairs = [r for r in res.rows if isinstance(r, PreferencePair)]
    if not pairs:
        raise DataError(f"{path}: no chosen/rejected pair to evaluate (preference accuracy needs pairs; "
                        f"the file is {res.format})")
    pairs = pairs[:limit] if limit else pairs
    return pairs, [reply_conversation(p) for p in pairs], skipped


def run_beta(config: dict[str, Any]) -> float:
    """The beta the run trained with (its ``pref.beta``, else the stage's default), for the reward."""
    pref = config.get("pref") if isinstance(config.get("pref"), dict) else {}
    if isinstance(pref.get("beta"), int | float):
        return float(pref["beta"])
    try:
        return DEFAULT_BETA.get(Stage(config.get("stage", "sft")), 0.1)
    except ValueError:
        return 0.1


def _reply_logps(model: Any, rows: list[tuple[list[int], int]], pad_id: int) -> list[float]:
    """Summed log-probability of each row's last ``n`` tokens given the ones before."""
    import torch

    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))
    out = [0.0] * len(rows)
    dev = next(model.parameters()).device
    i = 0
    with torch.inference_mode():
        while i < len(order):
            j = i + 1
            while j < len(order) and (j - i + 1) * len(rows[order[j]][0]) <= _TOKENS_PER_BATCH:
                j += 1
            batch = [rows[k] for k in order[i:j]]
            width = max(len(ids) for ids, _ in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, (row, _) in enumerate(batch):
                ids[b, : len(row)], mask[b, : len(row)] = torch.tensor(row), 1
            logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None].to(dev))[..., 0]
            for b, (row, n) in enumerate(batch):
                out[order[i + b]] = float(logp[b, len(row) - 1 - n : len(row) - 1].sum())
            i = j
    return out


def pair_logps(engine: Any, pairs: Sequence[PreferencePair]) -> list[tuple[float, float] | None]:
    """``(log p(chosen), log p(rejected))`` per pair under ``engine``'s model and template; None for a
    pair the template cannot render with a shared prompt (it is left out of the scores)."""
    rendered = render_pairs(pairs, engine.renderer)
    rows: list[tuple[list[int], int]] = []
    for r in rendered:
        if isinstance(r, RenderedPair):
            rows += [(r.prompt_ids + r.chosen_ids, len(r.chosen_ids)), (r.prompt_ids + r.rejected_ids,
                                                                        len(r.rejected_ids))]
    logps = iter(_reply_logps(engine.model, rows, engine.pad_id))
    return [None if isinstance(r, RowRejected) else (next(logps), next(logps)) for r in rendered]


def side_preference(logps: Sequence[tuple[float, float] | None]) -> dict[str, float]:
    """One model's scores over the pairs it could score."""
    ok = [x for x in logps if x is not None]
    if not ok:
        return {}
    n = len(ok)
    return {"pref_accuracy": sum(c > r for c, r in ok) / n, "chosen_logp": sum(c for c, _ in ok) / n,
            "rejected_logp": sum(r for _, r in ok) / n, "logp_margin": sum(c - r for c, r in ok) / n}


def implicit_reward(model: Sequence[tuple[float, float] | None], base: Sequence[tuple[float, float] | None],
                    beta: float) -> dict[str, float]:
    """The DPO implicit reward margin of ``model`` against ``base`` per pair, summarised."""
    margins = [beta * ((mc - bc) - (mr - br)) for m, b in zip(model, base, strict=True)
               if m is not None and b is not None for (mc, mr), (bc, br) in [(m, b)]]
    if not margins:
        return {}
    return {"reward_accuracy": sum(x > 0 for x in margins) / len(margins),
            "reward_margin": sum(margins) / len(margins)}


def preference_block(logps: dict[str, Sequence[tuple[float, float] | None]], beta: float) -> dict[str, Any]:
    """``eval.json``'s ``preference``: per side scores, and the implicit reward of model vs baseline."""
    out: dict[str, Any] = {"n": sum(x is not None for x in logps["model"]), "beta": beta}
    for side, values in logps.items():
        out[side] = side_preference(values)
    if "baseline" in logps:
        out.update(implicit_reward(logps["model"], logps["baseline"], beta))
    return out

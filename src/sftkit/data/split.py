"""Deterministic train/val/test splits, stratified by label when given."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sftkit.core.conversation import Conversation
from sftkit.core.errors import UsageError


def recommend_val_share(n: int) -> tuple[float, str]:
    """A validation share for ``n`` rows, with the reason."""
    if n < 1000:
        share = min(0.2, max(0.1, 100 / n)) if n else 0.1
        rows = round(share * n)
        why = f"{n} rows (< 1,000): 10-20% so validation has at least 100 rows"
        if rows < 100:
            why += f" (only {rows} possible at 20%; the validation loss will be noisy)"
        return round(share, 3), why
    if n <= 10_000:
        return 0.1, f"{n} rows (1,000-10,000): 10% gives {round(0.1 * n)} validation rows"
    share = max(0.05, min(0.1, 1000 / n))
    return round(share, 3), f"{n} rows (> 10,000): 5-10% ({round(share * n)} rows) is plenty to measure loss"


def _take(idx: list[int], val: float, test: float) -> tuple[list[int], list[int], list[int]]:
    n = len(idx)
    n_test, n_val = round(n * test), round(n * val)
    if n - n_test - n_val < 1 and n > 0:
        n_val = max(0, n - n_test - 1)
    return idx[n_test + n_val :], idx[n_test : n_test + n_val], idx[:n_test]


def split(
    convs: Sequence[Conversation], val: float = 0.1, test: float = 0.0, seed: int = 0, stratify: bool = False
) -> dict[str, list[Conversation]]:
    """``{"train", "val", "test"}``; the same input and seed always give the same
    split. With ``stratify`` each ``Conversation.label`` is split separately so
    every part keeps the label proportions."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise UsageError(f"val ({val}) and test ({test}) must be in [0, 1) and sum below 1")
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, c in enumerate(convs):
        groups[c.label if stratify else None].append(i)
    parts: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for key in sorted(groups, key=str):
        idx = groups[key]
        random.Random(f"{seed}:{key}").shuffle(idx)
        tr, va, te = _take(idx, val, test)
        parts["train"] += tr
        parts["val"] += va
        parts["test"] += te
    return {k: [convs[i] for i in sorted(v)] for k, v in parts.items()}

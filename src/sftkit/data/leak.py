"""Train/test leakage: test rows whose prompt is in train exactly or nearly."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sftkit.core.conversation import Conversation
from sftkit.data.dedup import NUM_PERM, minhashes
from sftkit.data.text import normalize, prompt_of


def find_leaks(train: Sequence[Conversation], test: Sequence[Conversation], threshold: float = 0.85) -> list[dict]:
    """One entry per leaked test row: ``{"test", "train", "kind": exact|near, "similarity"}``."""
    train_p = [prompt_of(c) for c in train]
    test_p = [prompt_of(c) for c in test]
    exact: dict[str, int] = {}
    for i, p in enumerate(train_p):
        exact.setdefault(normalize(p), i)
    out: list[dict[str, Any]] = []
    pending: list[int] = []
    for j, p in enumerate(test_p):
        i = exact.get(normalize(p))
        if i is None:
            pending.append(j)
        else:
            out.append(_leak(test[j], train[i], "exact", 1.0))
    if pending and train:
        out += _near(train, test, train_p, test_p, pending, threshold)
    out.sort(key=lambda d: d["_order"])
    for d in out:
        d.pop("_order")
    return out


def _near(train: Sequence[Conversation], test: Sequence[Conversation], train_p: list[str], test_p: list[str],
          pending: list[int], threshold: float) -> list[dict[str, Any]]:
    from datasketch import MinHashLSH

    out: list[dict[str, Any]] = []
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    train_h = minhashes(train_p)
    for i, h in enumerate(train_h):
        lsh.insert(i, h)
    for j, h in zip(pending, minhashes([test_p[j] for j in pending]), strict=True):
        best = max(((train_h[i].jaccard(h), i) for i in lsh.query(h)), default=(0.0, -1))
        if best[0] >= threshold:
            out.append(_leak(test[j], train[best[1]], "near", round(best[0], 3)))
    return out


def _leak(test: Conversation, train: Conversation, kind: str, sim: float) -> dict[str, Any]:
    order = int(test.source.rpartition(":")[2]) if test.source and test.source.rpartition(":")[2].isdigit() else 0
    return {"test": test.source, "train": train.source, "kind": kind, "similarity": sim, "_order": order}

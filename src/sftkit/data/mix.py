"""Mixing several files with weights (e.g. general data to limit forgetting)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from sftkit.core.conversation import Conversation
from sftkit.data.types import LoadResult


def _count(available: int, weight: float | int) -> int:
    """An ``int`` is a row count; a ``float`` is a share of the file's own rows
    (``1.0`` all, ``0.2`` a fifth, ``2.0`` every row twice)."""
    if isinstance(weight, bool) or weight < 0:
        raise ValueError(f"weight must be a non-negative number, got {weight!r}")
    if isinstance(weight, int):
        return weight
    return round(available * weight)


def _sample(convs: Sequence[Conversation], k: int, rng: random.Random) -> list[Conversation]:
    if not convs or k <= 0:
        return []
    full, rest = divmod(k, len(convs))
    out = list(convs) * full
    out += rng.sample(list(convs), rest)
    return out


def mix(sources: Sequence[tuple[LoadResult, float | int]], seed: int = 0) -> tuple[list[Conversation], dict[str, Any]]:
    """Take rows from each source by its weight (see ``_count``), then shuffle.
    Deterministic for a given seed; upsampling repeats whole passes first, then
    a random subset. The report lists rows taken per file."""
    rows: list[Conversation] = []
    report: list[dict[str, Any]] = []
    for i, (res, weight) in enumerate(sources):
        k = _count(len(res.conversations), weight)
        rows += _sample(res.conversations, k, random.Random(f"{seed}:{i}:{res.path}"))
        report.append(
            {
                "path": res.path,
                "available": len(res.conversations),
                "weight": weight,
                "taken": k,
                "upsampled": k > len(res.conversations),
            }
        )
    random.Random(seed).shuffle(rows)
    total = len(rows)
    for r in report:
        r["share"] = round(r["taken"] / total, 4) if total else 0.0
    return rows, {"seed": seed, "total": total, "sources": report}

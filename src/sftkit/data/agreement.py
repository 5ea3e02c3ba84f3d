"""Annotator agreement (the guide's "交叉验证：多人标注计算一致性"): two people review the same
sheet; Cohen's kappa says how much more often they agree than two people guessing with their
own label frequencies would. Low agreement means the review guideline is unclear, and the
verdicts (and the training data they shaped) are noisy.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from sftkit.data.review import read_sheet, verdict_of

# Landis & Koch (1977), the usual reading of kappa.
SCALE = [(0.0, "poor"), (0.2, "slight"), (0.4, "fair"), (0.6, "moderate"), (0.8, "substantial"),
         (1.0, "almost perfect")]


def cohen_kappa(pairs: list[tuple[str, str]]) -> float | None:
    """kappa = (p_o - p_e) / (1 - p_e): p_o the observed agreement, p_e the agreement expected
    from each side's label frequencies alone. None when p_e = 1 (both used one same label
    throughout: agreement is total but says nothing)."""
    n = len(pairs)
    if n == 0:
        return None
    p_o = sum(a == b for a, b in pairs) / n
    freq_a, freq_b = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    p_e = sum(freq_a[label] * freq_b[label] for label in freq_a) / (n * n)
    return None if p_e == 1 else (p_o - p_e) / (1 - p_e)


def interpret(kappa: float | None) -> str:
    if kappa is None:
        return "undefined (both sides gave one same label to every row)"
    return next(word for bound, word in SCALE if kappa <= bound)


def _verdicts(path: str | Path) -> tuple[dict[str, str], set[str]]:
    """id -> verdict of the reviewed rows, and the reviewers named."""
    out, who = {}, set()
    for line, row in read_sheet(path):
        v = verdict_of(row, f"{path}:{line}")
        if v:
            out[row.get("id", "")] = v
            if row.get("reviewer"):
                who.add(row["reviewer"])
    return out, who


def agree(sheet_a: str | Path, sheet_b: str | Path) -> dict[str, Any]:
    """Kappa, percent agreement, the confusion table (A's label -> B's label -> rows), per-label
    counts with specific agreement 2*both/(a+b), and the rows only one side reviewed."""
    a, who_a = _verdicts(sheet_a)
    b, who_b = _verdicts(sheet_b)
    common = [i for i in a if i in b]
    pairs = [(a[i], b[i]) for i in common]
    labels = sorted({x for p in pairs for x in p})
    confusion = {la: {lb: sum(p == (la, lb) for p in pairs) for lb in labels} for la in labels}
    per_label = {}
    for label in labels:
        na, nb = sum(x == label for x, _ in pairs), sum(y == label for _, y in pairs)
        both = confusion[label][label]
        per_label[label] = {"a": na, "b": nb, "both": both, "agreement": 2 * both / (na + nb)}
    kappa = cohen_kappa(pairs)
    reading = interpret(kappa) if pairs else "no row was reviewed on both sheets"
    return {
        "sheet_a": str(sheet_a), "sheet_b": str(sheet_b), "reviewers_a": sorted(who_a), "reviewers_b": sorted(who_b),
        "rows": len(pairs), "percent_agreement": sum(x == y for x, y in pairs) / len(pairs) if pairs else None,
        "kappa": kappa, "interpretation": reading, "confusion": confusion, "per_label": per_label,
        "only_a": [i for i in a if i not in b], "only_b": [i for i in b if i not in a],
        "disagreements": [{"id": i, "a": a[i], "b": b[i]} for i in common if a[i] != b[i]],
    }

"""Exact and near duplicates (MinHash LSH from datasketch).

A row's dedup text is every turn's content (or ``text``); near duplicates are
found on shingles: character 3-grams when the text has Chinese, word 3-grams
otherwise (word 1-grams for rows shorter than three words).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sftkit.core.conversation import Conversation
from sftkit.data.text import has_cjk, normalize, tokens

NUM_PERM = 128


def conv_text(conv: Conversation) -> str:
    if conv.is_text:
        return conv.text or ""
    return "\n".join(m.content for m in conv.messages if m.role != "system")


def features(s: str) -> set[str]:
    t = normalize(s)
    if has_cjk(t):
        t = t.replace(" ", "")
        return {t[i : i + 3] for i in range(max(1, len(t) - 2))}
    w = tokens(t)
    if len(w) < 3:
        return set(w) or {t}
    return {" ".join(w[i : i + 3]) for i in range(len(w) - 2)}


def minhashes(texts: Sequence[str]) -> list[Any]:
    from datasketch import MinHash

    out = []
    for t in texts:
        m = MinHash(num_perm=NUM_PERM, seed=1)
        m.update_batch([f.encode("utf-8") for f in features(t)])
        out.append(m)
    return out


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def exact_groups(texts: Sequence[str]) -> list[list[int]]:
    """Groups (size >= 2) of indices with the same normalised text."""
    by_key: dict[str, list[int]] = defaultdict(list)
    for i, t in enumerate(texts):
        by_key[normalize(t)].append(i)
    return [g for g in by_key.values() if len(g) > 1]


def near_groups(texts: Sequence[str], threshold: float, skip: set[int] | None = None) -> list[list[int]]:
    """Groups of indices whose estimated Jaccard similarity >= ``threshold``
    (single-link), excluding the indices in ``skip``."""
    from datasketch import MinHashLSH

    skip = skip or set()
    idx = [i for i in range(len(texts)) if i not in skip]
    hashes = dict(zip(idx, minhashes([texts[i] for i in idx]), strict=True))
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    uf = _UnionFind(len(texts))
    for i in idx:
        for j in lsh.query(hashes[i]):
            if hashes[i].jaccard(hashes[j]) >= threshold:
                uf.union(i, j)
        lsh.insert(i, hashes[i])
    groups: dict[int, list[int]] = defaultdict(list)
    for i in idx:
        groups[uf.find(i)].append(i)
    return [g for g in groups.values() if len(g) > 1]


def find_duplicates(convs: Sequence[Conversation], threshold: float = 0.85) -> dict[str, Any]:
    """``{"exact": [[source, ...], ...], "near": [...], "keep": [index, ...], "removed": n}``.
    The first row of each group is kept; exact duplicates are removed before
    near duplicates are searched."""
    texts = [conv_text(c) for c in convs]
    exact = exact_groups(texts)
    dropped = {i for g in exact for i in g[1:]}
    near = near_groups(texts, threshold, skip=dropped)
    dropped |= {i for g in near for i in g[1:]}

    def src(g: list[int]) -> list[str]:
        return [convs[i].source or str(i) for i in g]

    return {
        "exact": [src(g) for g in exact],
        "near": [src(g) for g in near],
        "keep": [i for i in range(len(convs)) if i not in dropped],
        "removed": len(dropped),
    }

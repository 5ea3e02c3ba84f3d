"""``sft data augment``: realistic typos in the prompts, for a model that still understands
users who type fast (the guide's "噪声注入：适当加入拼写错误提升鲁棒性").

Only user turns change; system prompts, tool output and every assistant reply stay byte for byte
what they were, so the model learns to answer noisy questions correctly, never to write noise.
Chinese text gets the slips of pinyin input and reading (a homophone or look-alike character from
a small table shipped with sftkit, ``assets/zh_confusables.txt``), a dropped or doubled
character, and full-/half-width punctuation swapped; English gets QWERTY-neighbour keys, swapped
neighbours, dropped and doubled letters. Digits are never touched: a question whose year or
amount changed would no longer match its answer.

``typos`` is the expected share of editable characters (letters, Chinese characters,
punctuation) changed; every noisy copy has at least one edit, since an unchanged copy is just a
duplicate row. The noise of a row depends only on the seed and the row's id.
"""

from __future__ import annotations

import random
from functools import cache
from pathlib import Path
from typing import Any

from sftkit.core.conversation import Conversation
from sftkit.core.errors import DataError
from sftkit.data.rows import record, row_id

TABLE = Path(__file__).resolve().parents[1] / "assets" / "zh_confusables.txt"
_ROWS = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]
_WIDTH = dict(zip("，。？！：；（）", ",.?!:;()", strict=True))
_WIDTH.update({v: k for k, v in _WIDTH.items()})


@cache
def confusables() -> dict[str, str]:
    """Character -> the characters it is confused with (the union of its groups)."""
    out: dict[str, set[str]] = {}
    for line in TABLE.read_text(encoding="utf-8").splitlines():
        group = line.strip()
        if group and not group.startswith("#"):
            for c in group:
                out.setdefault(c, set()).update(x for x in group if x != c)
    return {c: "".join(sorted(alts)) for c, alts in out.items()}


@cache
def _neighbours() -> dict[str, str]:
    """QWERTY keys next to each letter: same row left/right, rows above and below."""
    out: dict[str, str] = {}
    for r, row in enumerate(_ROWS):
        for i, c in enumerate(row):
            near = [row[j] for j in (i - 1, i + 1) if 0 <= j < len(row)]
            for other in (r - 1, r + 1):
                if 0 <= other < len(_ROWS):
                    near += [_ROWS[other][j] for j in (i - 1, i, i + 1) if 0 <= j < len(_ROWS[other])]
            out[c] = "".join(near)
    return out


def _kind(c: str) -> str | None:
    if c in _WIDTH:
        return "punct"
    if c.isascii() and c.isalpha():
        return "latin"
    if "\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf":
        return "cjk"
    return None


def _inside_number(text: str, i: int) -> bool:
    """A separator between digits ("12.5", "1,286") is part of a figure, not punctuation."""
    return text[i] in _WIDTH and 0 < i < len(text) - 1 and text[i - 1].isdigit() and text[i + 1].isdigit()


def _edit(text: str, i: int, rng: random.Random) -> tuple[str, int]:
    """The replacement for ``text[i]`` (and how many characters it consumed: 2 for a swap)."""
    c = text[i]
    kind = _kind(c)
    if kind == "punct":
        return _WIDTH[c], 1
    if kind == "cjk":
        alts = confusables().get(c)
        op = rng.choices(["sub", "drop", "dup"], [0.6, 0.2, 0.2] if alts else [0, 0.5, 0.5])[0]
        return {"sub": lambda: rng.choice(alts or c), "drop": lambda: "", "dup": lambda: c + c}[op](), 1
    nxt = text[i + 1] if i + 1 < len(text) else ""
    op = rng.choices(["key", "swap", "drop", "dup"], [0.5, 0.2 if _kind(nxt) == "latin" else 0, 0.15, 0.15])[0]
    if op == "swap":
        return nxt + c, 2
    if op == "key":
        key = rng.choice(_neighbours()[c.lower()])
        return (key.upper() if c.isupper() else key), 1
    return ("" if op == "drop" else c + c), 1


def noisy(text: str, rate: float, rng: random.Random, force: bool) -> tuple[str, int]:
    """``text`` with each editable character edited with probability ``rate``; with ``force``,
    at least one edit when there is any editable character."""
    where = [i for i, c in enumerate(text) if _kind(c) and not _inside_number(text, i)]
    chosen = {i for i in where if rng.random() < rate}
    if force and not chosen and where:
        chosen = {rng.choice(where)}
    out, i, edits = [], 0, 0
    while i < len(text):
        if i in chosen:
            piece, used = _edit(text, i, rng)
            out.append(piece)
            edits += 1
            i += used
        else:
            out.append(text[i])
            i += 1
    return "".join(out), edits


def augment(convs: list[Conversation], typos: float = 0.03, seed: int = 0) -> tuple[list[dict[str, Any]], list[str]]:
    """A noisy copy of each row (its id ``<id>#noisy<seed>``, ``meta.augmented_from`` the original
    id), and the ids of rows whose prompts hold nothing to edit."""
    if not 0 < typos <= 0.3:
        raise DataError(f"--typos {typos}: give the share of characters to edit, above 0 and at most 0.3 "
                        "(0.01-0.05 looks like real typing)")
    copies, untouched = [], []
    for conv in convs:
        rid = row_id(conv)
        rng = random.Random(f"{seed}:{rid}")
        users = [i for i, m in enumerate(conv.messages) if m.role == "user"]
        new = Conversation.from_messages([m.to_dict() for m in conv.messages], source=conv.source, label=conv.label,
                                         meta=dict(conv.meta), tools=conv.tools)
        edits = 0
        for k, i in enumerate(users):  # at least one edit per row: forced on the last user turn if none yet
            new.messages[i].content, n = noisy(conv.messages[i].content, typos, rng, k == len(users) - 1 and not edits)
            edits += n
        if not edits:
            untouched.append(rid)
            continue
        new.meta.pop("id", None)
        new.meta.update({"augmented_from": rid, "noise": {"typos": typos, "seed": seed, "edits": edits}})
        copies.append(record(new, f"{rid}#noisy{seed}"))
    return copies, untouched

"""Chinese-first chunking: paragraphs, then sentences, then (only if a sentence is too long) characters.

A chunk is what a teacher model reads to draft questions, so it should hold whole sentences
and, where it can, whole paragraphs. Sizes are in characters (a Chinese character is roughly
one token for current tokenizers; English words are a few characters each). Consecutive chunks
share up to ``overlap`` characters of whole sentences, so a fact split across the cut is still
whole in one of them.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from sftkit.data.clean import join_text

# A sentence ends at 。！？；!?; (or an ellipsis), after any closing quotes/brackets, or at ". "
# (not "1. ", a list number).
_SENT_END = re.compile(r"[。！？；!?;…]+[”’」』\"'）)]*\s*|(?<!\d)\.(?:\s+|$)")
_CLOSED = tuple("。！？；!?;….:：")


class Unit(NamedTuple):
    text: str
    para_start: bool  # first sentence of a paragraph: a good place to cut


def sentences(paragraph: str) -> list[str]:
    out, start = [], 0
    for m in _SENT_END.finditer(paragraph):
        out.append(paragraph[start : m.end()].strip())
        start = m.end()
    out.append(paragraph[start:].strip())
    return [s for s in out if s]


def units(paragraphs: list[str], size: int) -> list[Unit]:
    """Sentences tagged with paragraph starts; a sentence longer than ``size`` is cut into pieces."""
    out = []
    for par in paragraphs:
        for i, sent in enumerate(sentences(par)):
            for j in range(0, len(sent), size):
                out.append(Unit(sent[j : j + size], i == 0 and j == 0))
    return out


def render(us: list[Unit]) -> str:
    text = ""
    for u in us:
        text = u.text if not text else (f"{text}\n{u.text}" if u.para_start else join_text(text, u.text))
    return text


def _heading(u: Unit) -> bool:
    """A short paragraph of its own without closing punctuation: it belongs to the text below."""
    return u.para_start and len(u.text) <= 40 and not u.text.endswith(_CLOSED)


def _cut_point(cur: list[Unit], carried: int, size: int) -> int:
    """Where to end the chunk held in ``cur``: the last paragraph start that leaves it at least
    half full and does not strand a heading at its end, else all of it (less a trailing heading).
    Never inside the carried-over overlap, so every chunk holds new text."""
    for k in range(len(cur) - 1, carried, -1):
        if cur[k].para_start and not _heading(cur[k - 1]) and len(render(cur[:k])) >= size // 2:
            return k
    return len(cur) - 1 if len(cur) - 1 > carried and _heading(cur[-1]) else len(cur)


def _tail(done: list[Unit], overlap: int) -> list[Unit]:
    """The trailing whole sentences of ``done`` that fit in ``overlap`` characters."""
    tail: list[Unit] = []
    for u in reversed(done):
        if len(render([u, *tail])) > overlap:
            break
        tail.insert(0, u)
    return tail


def chunk_paragraphs(paragraphs: list[str], size: int, overlap: int) -> list[str]:
    """Pack the sentences of ``paragraphs`` into chunks of at most ``size`` characters."""
    chunks: list[str] = []
    cur: list[Unit] = []
    carried = 0  # how many units at the front of ``cur`` repeat the previous chunk
    for u in units(paragraphs, size):
        while cur and len(render([*cur, u])) > size:
            if len(cur) == carried:  # only the overlap is left: drop it rather than emit a repeat
                cur, carried = [], 0
                break
            k = _cut_point(cur, carried, size)
            chunks.append(render(cur[:k]))
            tail = _tail(cur[:k], overlap)
            cur, carried = [*tail, *cur[k:]], len(tail)
        cur.append(u)
    if len(cur) > carried:
        chunks.append(render(cur))
    return chunks

"""Text helpers for the quality commands: prompt/response of a conversation,
language-aware tokens (jieba for Chinese runs, words elsewhere), Chinese share."""

from __future__ import annotations

import re
from collections.abc import Iterable

from sftkit.core.conversation import Conversation

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_CJK_RUN = re.compile(f"[{_CJK}]+")
_WORD = re.compile(r"\w+", re.UNICODE)
_HAN = re.compile(f"[{_CJK}]")
_LATIN_WORD = re.compile(r"[A-Za-z]{2,}")


def prompt_of(conv: Conversation) -> str:
    """The user-visible prompt: user (and tool) turns before the final reply."""
    if conv.is_text:
        return conv.text or ""
    return "\n".join(m.content for m in conv.prompt_messages() if m.role in ("user", "tool"))


def last_user(conv: Conversation) -> str:
    """The user turn the final reply answers ('' for text rows)."""
    for m in reversed(conv.prompt_messages()):
        if m.role == "user":
            return m.content
    return ""


def response_of(conv: Conversation) -> str:
    if conv.is_text:
        return ""
    return conv.final_reply() or ""


def has_cjk(s: str) -> bool:
    return _HAN.search(s) is not None


def _jieba_cut(s: str) -> list[str]:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)
    return [t for t in jieba.lcut(s) if t.strip()]


def tokens(s: str) -> list[str]:
    """Words: jieba segments for Chinese runs, ``\\w+`` (lowercased) elsewhere."""
    if not has_cjk(s):
        return _WORD.findall(s.lower())
    out: list[str] = []
    pos = 0
    for m in _CJK_RUN.finditer(s):
        out += _WORD.findall(s[pos : m.start()].lower())
        out += _jieba_cut(m.group())
        pos = m.end()
    out += _WORD.findall(s[pos:].lower())
    return out


def shingles(s: str, n: int = 3) -> set[str]:
    """Character n-grams of the normalised text (good for Chinese and English alike)."""
    t = normalize(s)
    if len(t) <= n:
        return {t} if t else set()
    return {t[i : i + n] for i in range(len(t) - n + 1)}


def normalize(s: str) -> str:
    """Lowercase, collapse whitespace: the key for exact-duplicate checks."""
    return " ".join(s.lower().split())


def zh_share(s: str) -> float | None:
    """Share of Chinese in ``s``: Han characters against Latin words (a word
    weighs two characters). ``None`` when ``s`` has neither."""
    han = len(_HAN.findall(s))
    words = len(_LATIN_WORD.findall(s))
    return han / (han + 2 * words) if han or words else None


def distinct_n(texts: Iterable[str], n: int) -> float:
    """distinct-n: unique n-grams / all n-grams over the corpus (0 when empty)."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for t in texts:
        toks = tokens(t)
        for i in range(len(toks) - n + 1):
            seen.add(tuple(toks[i : i + n]))
            total += 1
    return round(len(seen) / total, 4) if total else 0.0

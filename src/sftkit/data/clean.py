"""Cleaning extracted page text: characters, running headers/footers, wrapped lines.

PDF and web text carries layout, not prose: full-width spaces and digits, zero-width and control
characters, a company name and a page number on every page, lines broken (and words hyphenated)
where the page was full. A teacher model drafting Q&A from such text copies the noise, and key
figures written with full-width digits never match the ones a user types; so all of it goes here.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from itertools import pairwise

CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef"
_IS_CJK = re.compile(f"[{CJK}]")
_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_INVISIBLE = re.compile(r"[\u00ad\u200b-\u200d\u2060\ufeff]")
# Full-width digits, letters and % become ASCII: "１２．５％" and "12.5%" must be one key figure.
_WIDE = {c: c - 0xFEE0 for c in [*range(0xFF10, 0xFF1A), *range(0xFF21, 0xFF3B), *range(0xFF41, 0xFF5B), 0xFF05]}
_WIDE_DOT = re.compile(r"(?<=\d)．(?=\d)")
_PAGE_NO = re.compile(r"^(第\s*\d+\s*页(\s*[/,，]?\s*共\s*\d+\s*页)?|[-—–·\s]*\d+[-—–·\s]*|page\s+\d+(\s+of\s+\d+)?"
                      r"|\d+\s*/\s*\d+)$", re.I)
# A line that ends a sentence, or a next line that starts a list item or heading: a paragraph ends there.
_END = tuple("。！？；：!?;:…”」』）)")
_ITEM = re.compile(r"^([-*•·●■◆]\s|\d+[.、)）]\s*\D|[（(][一二三四五六七八九十\d]+[)）]|[一二三四五六七八九十]+、"
                   r"|第[一二三四五六七八九十\d]+[章节条部分])")
EDGE = 2  # lines at the top and at the bottom of a page where running headers/footers sit


def normalize_chars(text: str) -> str:
    """Line ends, spaces, invisible and control characters, full-width digits/letters."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE.sub("", _SPACES.sub(" ", text))
    text = "".join(c for c in text if c in "\n\t\f" or unicodedata.category(c) != "Cc")
    return _WIDE_DOT.sub(".", text.translate(_WIDE))


def _edge_key(line: str) -> str:
    """Lines that differ only in a page number are one running header/footer."""
    return re.sub(r"\d+", "#", re.sub(r"\s+", "", line))


def _edges(lines: list[str]) -> set[int]:
    """Indices of the first and last EDGE non-blank lines."""
    filled = [i for i, line in enumerate(lines) if line.strip()]
    return set(filled[:EDGE] + filled[-EDGE:])


def strip_page_furniture(pages: list[str]) -> tuple[list[str], list[str]]:
    """Remove page numbers and headers/footers repeated at the edges of at least half of the
    pages (3 pages at least, so a 2-page document never loses a real line). Returns the pages and
    the distinct lines removed, for the report."""
    split = [p.split("\n") for p in pages]
    counts = Counter(k for lines in split for k in {_edge_key(lines[i]) for i in _edges(lines)})
    need = max(3, math.ceil(len(pages) / 2))
    repeated = {k for k, n in counts.items() if n >= need and k}
    removed: dict[str, None] = {}
    out = []
    for lines in split:
        edges = _edges(lines)
        keep = []
        for i, line in enumerate(lines):
            if i in edges and (_edge_key(line) in repeated or _PAGE_NO.match(line.strip())):
                removed[line.strip()] = None
            else:
                keep.append(line)
        out.append("\n".join(keep))
    return out, list(removed)


def join_text(a: str, b: str) -> str:
    """Glue two pieces of one paragraph: no space between Chinese text, one between words."""
    if _IS_CJK.match(a[-1:]) or _IS_CJK.match(b[:1]):
        return a + b
    return f"{a} {b}"


def _tidy(line: str) -> str:
    line = re.sub(r"[ \t]+", " ", line).strip()
    return re.sub(f"(?<=[{CJK}]) (?=[{CJK}])", "", line)  # PDF text often spaces out Chinese characters


def paragraphs(text: str) -> list[str]:
    """Paragraphs of one page. Wrapped lines are joined: a line is a paragraph's last when it
    ends a sentence, when the next starts a list item or heading, or when it is clearly
    shorter than the block's full lines (a heading, or the short last line of a paragraph)."""
    text = re.sub(r"([A-Za-z])-\n([a-z])", r"\1\2", text)  # "finan-\ncial" -> "financial"
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = [t for t in (_tidy(x) for x in block.split("\n")) if t]
        if not lines:
            continue
        full = max(len(t) for t in lines)
        cur = lines[0]
        for prev, nxt in pairwise(lines):
            if prev.endswith(_END) or _ITEM.match(nxt) or (full >= 20 and len(prev) < 0.6 * full):
                out.append(cur)
                cur = nxt
            else:
                cur = join_text(cur, nxt)
        out.append(cur)
    return out

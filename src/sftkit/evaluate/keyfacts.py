"""Key facts: the figures and names an answer must contain (``key_facts`` metric).

For a question about a filing ("恒远新能源2023年营业收入是多少？") an answer is right when it
states the reference's figures and names, however it is worded. ROUGE rewards wording; this
counts facts. Per answer:

* the reference's **numbers** (amounts, percentages, years; ``1,286`` = ``1286``, ``3.00`` = ``3``,
  full-width digits accepted) must appear as numbers in the prediction (``17`` is not found in ``2017``);
* its **names** must appear in the prediction as written (after NFKC and case folding): Chinese
  proper nouns as jieba tags them (person ``nr``, place ``ns``, organisation ``nt``, other proper
  noun ``nz``: 恒远, 常州市, 匈牙利) and Latin names (acronyms, capitalised words not opening a sentence).

Scores: ``key_facts_recall`` (mean share of each reference's facts found), ``key_facts_accuracy``
(share of answers holding every fact), ``key_facts_precision`` (of the numbers the predictions
state, the share their references hold: a figure the reference lacks is likely invented; absent
when no prediction states a number). Answers whose reference holds no fact are left out of the
three and counted in the details.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

# Full-width digits and the decimal point become ASCII; "，" stays a clause mark (NFKC would make it
# a comma and glue "增长5%，100亿元" into one number).
_DIGITS = str.maketrans("０１２３４５６７８９．", "0123456789.")
_NUMBER = re.compile(r"(?<![\d.])\d+(?:,\d{3})*(?:\.\d+)?(?![\d])")
_LATIN = re.compile(r"[A-Za-z][A-Za-z0-9&'.-]*[A-Za-z0-9]|[A-Z]")
_PROPER = ("nr", "ns", "nt", "nz")  # jieba's tags for person, place, organisation, other proper nouns
# Units written in capitals are not names.
_UNITS = {"gwh", "mwh", "kwh", "twh", "gw", "mw", "kw", "teu", "kg", "km", "gb", "tb", "mb", "ppm"}
# Organisation words jieba tags as names although they name no one.
_GENERIC = {"上市公司", "有限公司", "股份公司", "子公司", "母公司", "本公司", "公司", "集团公司"}
_SHOWN_MISSES = 20


def numbers(text: str) -> list[str]:
    """The numbers in ``text``, canonical (``"1,286.50"`` -> ``"1286.5"``), in order, repeats kept once."""
    out: list[str] = []
    for m in _NUMBER.finditer(text.translate(_DIGITS)):
        try:
            value = Decimal(m.group().replace(",", ""))
        except InvalidOperation:  # pragma: no cover - the pattern only matches decimals
            continue
        canon = format(value.normalize(), "f")
        if canon not in out:
            out.append(canon)
    return out


def _latin_names(text: str) -> list[str]:
    out = []
    for m in _LATIN.finditer(text):
        word = m.group()
        before = text[: m.start()].rstrip()
        opens_sentence = not before or before[-1] in ".!?。！？\n"
        acronym = len(word) >= 2 and word.isupper()
        capitalised = word[0].isupper() and not opens_sentence
        if (acronym or capitalised) and word.casefold() not in _UNITS:
            out.append(word)
    return out


def names(text: str) -> list[str]:
    """Proper nouns of ``text``: jieba's person/place/organisation/other tags (two characters or
    more) and Latin names, in order, each once."""
    import logging

    import jieba
    import jieba.posseg

    jieba.setLogLevel(logging.WARNING)
    text = unicodedata.normalize("NFKC", text)
    found, pos = [], 0
    for w in jieba.posseg.lcut(text):
        start, pos = pos, pos + len(w.word)
        if (w.flag.startswith(_PROPER) and len(w.word) >= 2 and not w.word.isascii() and w.word not in _GENERIC
                and not _missegmented(text, start, pos, jieba.dt.FREQ)):
            found.append(w.word)
    return list(dict.fromkeys([*found, *_latin_names(text)]))


def _missegmented(text: str, start: int, end: int, freq: dict[str, int]) -> bool:
    """A "name" whose edge character forms a commoner word with its neighbour was cut out of that word:
    "派发现金红利" gives 现 + 金红利 (a person's name in jieba's dictionary) where 现金 is meant. Common means
    seen 100 times or more in jieba's dictionary counts, and ten times as often as the name."""
    own = freq.get(text[start:end], 0)
    left = text[start - 1 : start + 1] if start > 0 else ""
    right = text[end - 1 : end + 1] if end < len(text) else ""
    return any(freq.get(pair, 0) >= max(100, 10 * own) for pair in (left, right) if pair)


@dataclass(frozen=True, slots=True)
class Facts:
    numbers: tuple[str, ...]
    names: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.numbers) + len(self.names)


def facts(reference: str) -> Facts:
    return Facts(tuple(numbers(reference)), tuple(names(reference)))


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


def missing(prediction: str, want: Facts) -> list[str]:
    """The facts of ``want`` the prediction lacks."""
    have_numbers = set(numbers(prediction))
    text = _norm(prediction)
    return [n for n in want.numbers if n not in have_numbers] + [n for n in want.names if _norm(n) not in text]


def per_answer(preds: Sequence[str], refs: Sequence[str]) -> list[float | None]:
    """Each answer's share of its reference's facts found (None: the reference holds none)."""
    out: list[float | None] = []
    for p, r in zip(preds, refs, strict=True):
        want = facts(r)
        out.append(None if not want.count else 1 - len(missing(p, want)) / want.count)
    return out


def key_facts(preds: Sequence[str], refs: Sequence[str]) -> tuple[dict[str, float], dict[str, Any]]:
    """(scores, details) over the answers; see the module docstring."""
    recalls, complete, misses = [], 0, []
    totals = {"numbers": [0, 0], "names": [0, 0]}  # [found, total]
    stated = stated_right = 0
    for i, (p, r) in enumerate(zip(preds, refs, strict=True)):
        want = facts(r)
        said = numbers(p)
        stated += len(said)
        stated_right += sum(n in want.numbers for n in said)
        if not want.count:
            continue
        lack = missing(p, want)
        recalls.append(1 - len(lack) / want.count)
        complete += not lack
        for kind in ("numbers", "names"):
            part = getattr(want, kind)
            totals[kind][0] += sum(x not in lack for x in part)
            totals[kind][1] += len(part)
        if lack and len(misses) < _SHOWN_MISSES:
            misses.append({"i": i, "missing": lack})
    n = len(recalls)
    scores = {"key_facts_recall": sum(recalls) / n if n else 0.0, "key_facts_accuracy": complete / n if n else 0.0}
    if stated:
        scores["key_facts_precision"] = stated_right / stated
    details = {"answers_with_facts": n, "answers_without_facts": len(refs) - n,
               **{f"{k}_found": v[0] for k, v in totals.items()}, **{f"{k}_total": v[1] for k, v in totals.items()},
               "numbers_stated": stated, "numbers_stated_in_reference": stated_right, "missing": misses}
    return scores, details

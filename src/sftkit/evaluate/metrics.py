"""Metrics for generated answers: pure functions of predictions and references.

Choices that matter for Chinese and for chat models:

* Text is normalised with NFKC (full-width letters, digits and punctuation become
  half-width), stripped and case-folded before labels or exact answers are compared.
* BLEU and ROUGE need words. Chinese has no spaces, so runs of CJK characters are
  segmented with jieba and everything else is split into words and single
  punctuation marks. BLEU-4 is then sacrebleu's corpus BLEU on the pre-tokenized
  text (``tokenize="none"``), the reference implementation of the standard formula.
  ROUGE is computed here: rouge-score's tokenizer deletes every non-ASCII
  character (so Chinese scores 0 unless its tokenizer is replaced) and the
  formulas (n-gram overlap F1, LCS F1) are a few lines, not worth nltk + absl.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sftkit.core.vocab import canonical_metric
from sftkit.evaluate.keyfacts import key_facts, per_answer

# CJK ideographs (basic + extension A + compatibility), kana and hangul: scripts
# written without spaces, which jieba segments (it keeps kana/hangul runs whole).
_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_CJK_RUN = re.compile(f"[{_CJK}]+")
# Numbers stay whole ("3.14", "1,000"), other words are letter/digit runs, punctuation stands alone.
_WORD = re.compile(rf"\d+(?:[.,]\d+)*|[^\W{_CJK}]+|[^\w\s]")

# After NFKC the full-width marks are already half-width; "。" has no half-width form.
_TRAILING_PUNCT = re.compile(r"[.。!?;]+$")



# -- normalisation and tokenization -------------------------------------------------


def normalize(text: str) -> str:
    """NFKC (full-width -> half-width), collapse whitespace, strip, casefold."""
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


def normalize_label(text: str) -> str:
    """A class label as compared: ``normalize`` plus dropping trailing sentence
    punctuation, so "Positive." and "positive" are the same answer."""
    return _TRAILING_PUNCT.sub("", normalize(text))


def tokenize(text: str) -> list[str]:
    """Words for BLEU/ROUGE: jieba on CJK runs, words and punctuation elsewhere."""
    text = normalize(text)
    out: list[str] = []
    pos = 0
    for m in _CJK_RUN.finditer(text):
        out.extend(_WORD.findall(text[pos : m.start()]))
        out.extend(_jieba_cut(m.group()))
        pos = m.end()
    out.extend(_WORD.findall(text[pos:]))
    return out


def _jieba_cut(run: str) -> list[str]:
    import logging

    import jieba

    jieba.setLogLevel(logging.WARNING)  # it announces loading its dictionary otherwise
    return [w for w in jieba.lcut(run) if w.strip()]


# -- exact match ------------------------------------------------------------------------


def exact_match_scores(preds: Sequence[str], refs: Sequence[str]) -> list[float]:
    return [float(normalize(p) == normalize(r)) for p, r in zip(preds, refs, strict=True)]


def exact_match(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Share of predictions equal to their reference after ``normalize``."""
    scores = exact_match_scores(preds, refs)
    return sum(scores) / len(scores) if scores else 0.0


def contains_answer(pred: str, ref: str) -> bool:
    """Whether a short reference answer appears in a (possibly wordy) prediction.
    Latin/digit answers must stand as whole words ("7" is not found in "17");
    CJK answers are matched as substrings, since there are no word boundaries."""
    p, r = normalize(pred), normalize_label(ref)
    if not r:
        return False
    if _CJK_RUN.search(r):
        return r in p
    return re.search(rf"(?<![\w.]){re.escape(r)}(?![\w]|\.\d)", p) is not None


# -- classification ---------------------------------------------------------------------


@dataclass(slots=True)
class ClassificationReport:
    accuracy: float
    macro_f1: float
    labels: list[str]  # reference labels first (sorted), then prediction-only labels
    per_label: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)  # rows: reference, columns: prediction

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "labels": self.labels,
            "per_label": self.per_label,
            "confusion": self.confusion,
        }


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    f = 2 * p * r / (p + r) if p + r else 0.0
    return p, r, f


def classification(preds: Sequence[str], refs: Sequence[str]) -> ClassificationReport:
    """Accuracy, macro-F1, a per-label table and the confusion matrix.

    Macro-F1 averages over the *reference* label set. A generative model can
    answer with any string; counting each stray answer ("I think positive") as a
    class of its own would make the score depend on how many distinct wrong
    strings were produced. Stray answers still count: they are false negatives
    of the true label (and show up in the table and matrix with support 0).
    """
    p = [normalize_label(x) for x in preds]
    r = [normalize_label(x) for x in refs]
    if len(p) != len(r):
        raise ValueError(f"{len(p)} predictions for {len(r)} references")
    gold = sorted(set(r))
    labels = gold + sorted(set(p) - set(gold))
    idx = {lab: i for i, lab in enumerate(labels)}
    conf = [[0] * len(labels) for _ in labels]
    for a, b in zip(r, p, strict=True):
        conf[idx[a]][idx[b]] += 1
    per: dict[str, dict[str, float]] = {}
    for lab, i in idx.items():
        tp = conf[i][i]
        fp = sum(conf[j][i] for j in range(len(labels))) - tp
        fn = sum(conf[i]) - tp
        prec, rec, f1 = _prf(tp, fp, fn)
        per[lab] = {"precision": prec, "recall": rec, "f1": f1, "support": float(sum(conf[i]))}
    acc = sum(a == b for a, b in zip(r, p, strict=True)) / len(r) if r else 0.0
    macro = sum(per[lab]["f1"] for lab in gold) / len(gold) if gold else 0.0
    return ClassificationReport(acc, macro, labels, per, conf)


# -- BLEU and ROUGE ---------------------------------------------------------------------


def bleu4(preds: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU-4 (0-100) on ``tokenize``d text, sacrebleu's standard formula
    with its default exponential smoothing of empty n-gram counts."""
    import sacrebleu

    hyp = [" ".join(tokenize(x)) for x in preds]
    ref = [" ".join(tokenize(x)) for x in refs]
    if not hyp:
        return 0.0
    return float(sacrebleu.corpus_bleu(hyp, [ref], tokenize="none", force=True).score)


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _f1(overlap: int, n_pred: int, n_ref: int) -> float:
    if not overlap:
        return 0.0
    p, r = overlap / n_pred, overlap / n_ref
    return 2 * p * r / (p + r)


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_scores(pred: str, ref: str) -> dict[str, float]:
    """ROUGE-1/2/L F1 (0-1) of one prediction against one reference."""
    a, b = tokenize(pred), tokenize(ref)
    out = {}
    for n in (1, 2):
        pa, rb = _ngrams(a, n), _ngrams(b, n)
        out[f"rouge{n}"] = _f1(sum((pa & rb).values()), sum(pa.values()), sum(rb.values()))
    out["rougeL"] = _f1(_lcs(a, b), len(a), len(b))
    return out


def rouge(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 over examples, scaled to 0-100 like BLEU."""
    rows = [rouge_scores(p, r) for p, r in zip(preds, refs, strict=True)]
    keys = ("rouge1", "rouge2", "rougeL")
    return {k: 100 * sum(x[k] for x in rows) / len(rows) if rows else 0.0 for k in keys}


# -- structured (JSON) outputs ------------------------------------------------------------

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def parse_json(text: str) -> tuple[bool, Any]:
    """Parse a model's JSON answer; a Markdown code fence around it is accepted."""
    s = text.strip()
    m = _FENCE.match(s)
    if m:
        s = m.group(1)
    try:
        return True, json.loads(s)
    except ValueError:
        return False, None


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted paths to leaf values (list items by index), so nested fields compare one by one."""
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list) and obj:
        out = {}
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix or "$": obj}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return normalize(a) == normalize(b)
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return abs(a - b) <= 1e-9 * max(1.0, abs(a), abs(b))
    return a == b


def json_field_scores(preds: Sequence[str], refs: Sequence[str]) -> list[float]:
    """Per example: the share of the reference's leaf fields the prediction matches."""
    out = []
    for p, r in zip(preds, refs, strict=True):
        ok_r, ref = parse_json(r)
        ok_p, pred = parse_json(p)
        want = _flatten(ref) if ok_r else {}
        got = _flatten(pred) if ok_p else {}
        out.append(sum(k in got and _same(got[k], v) for k, v in want.items()) / len(want) if want else 0.0)
    return out


def json_metrics(preds: Sequence[str], refs: Sequence[str]) -> dict[str, Any]:
    """Validity, mean per-field match, whole-object match and per-field accuracy."""
    valid = [parse_json(p)[0] for p in preds]
    scores = json_field_scores(preds, refs)
    fields: dict[str, list[bool]] = {}
    for p, r in zip(preds, refs, strict=True):
        ok_r, ref = parse_json(r)
        ok_p, pred = parse_json(p)
        got = _flatten(pred) if ok_p else {}
        for k, v in (_flatten(ref) if ok_r else {}).items():
            fields.setdefault(k, []).append(k in got and _same(got[k], v))
    n = len(preds) or 1
    return {
        "json_valid": sum(valid) / n,
        "json_field_match": sum(scores) / n,
        "json_exact": sum(s == 1.0 for s in scores) / n,
        "per_field": {k: sum(v) / len(v) for k, v in sorted(fields.items())},
    }


# -- choosing and computing -----------------------------------------------------------------


def canonical(name: str) -> str:
    return canonical_metric(name)


def _is_json(text: str) -> bool:
    ok, val = parse_json(text)
    return ok and isinstance(val, dict | list)


def infer_metrics(references: Sequence[str]) -> list[str]:
    """Pick metrics that fit the reference answers.

    * every reference is a JSON object/array -> ``json`` (+ exact match);
    * short answers from a small repeated set -> ``classification``;
    * anything else -> ``bleu``, ``rouge`` and ``exact_match``.
    """
    refs = [r for r in references if r.strip()]
    if not refs:
        return ["exact_match"]
    if all(_is_json(r) for r in refs):
        return ["json", "exact_match"]
    labels = {normalize_label(r) for r in refs}
    short = all(len(normalize_label(r)) <= 24 and len(normalize_label(r).split()) <= 3 for r in refs)
    # A label set must repeat: at most half as many distinct answers as rows, and few overall.
    if short and 2 <= len(labels) <= min(30, max(2, len(refs) // 2)):
        return ["classification"]
    return ["bleu", "rouge", "exact_match"]


@dataclass(slots=True)
class MetricResult:
    """Headline numbers (``scores``), detail tables, and a per-example score in
    [0, 1] from the primary metric (used to find examples that flipped)."""

    scores: dict[str, float]
    details: dict[str, Any]
    per_example: list[float]
    primary: str




def primary_metric(names: Sequence[str]) -> str:
    for n in ("classification", "json", "key_facts", "exact_match", "rouge", "bleu"):
        if n in names:
            return n
    return "exact_match"


def compute(names: Sequence[str], preds: Sequence[str], refs: Sequence[str]) -> MetricResult:
    """Compute the named metrics (see ``METRIC_NAMES``; aliases accepted)."""
    chosen = list(dict.fromkeys(canonical(n) for n in names))
    scores: dict[str, float] = {}
    details: dict[str, Any] = {}
    for name in chosen:
        if name == "exact_match":
            scores["exact_match"] = exact_match(preds, refs)
        elif name == "classification":
            rep = classification(preds, refs)
            scores["accuracy"], scores["macro_f1"] = rep.accuracy, rep.macro_f1
            details["classification"] = rep.to_dict()
        elif name == "bleu":
            scores["bleu"] = bleu4(preds, refs)
        elif name == "rouge":
            scores.update(rouge(preds, refs))
        elif name == "json":
            js = json_metrics(preds, refs)
            details["json_per_field"] = js.pop("per_field")
            scores.update(js)
        elif name == "key_facts":
            kf, details["key_facts"] = key_facts(preds, refs)
            scores.update(kf)
    primary = primary_metric(chosen)
    if primary == "classification":
        per = [float(normalize_label(p) == normalize_label(r)) for p, r in zip(preds, refs, strict=True)]
    elif primary == "json":
        per = json_field_scores(preds, refs)
    elif primary == "key_facts":  # an answer without facts to find is right when it contains the reference
        per = [float(contains_answer(p, r)) if s is None else s
               for s, p, r in zip(per_answer(preds, refs), preds, refs, strict=True)]
    elif primary == "exact_match":
        per = exact_match_scores(preds, refs)
    else:
        per = [rouge_scores(p, r)["rougeL"] for p, r in zip(preds, refs, strict=True)]
    return MetricResult(scores, details, per, primary)

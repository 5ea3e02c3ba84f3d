"""The teacher's side of ``sft data synth``: the prompt it gets, reading its reply, and the
grounding check every drafted pair must pass.

A drafted answer is only worth training on if the chunk supports it. The check is deliberately
simple and explainable: every number in the question and the answer (amounts, percentages,
years) must occur in the chunk, and most of the answer's wording must come from it. A pair that
fails is rejected with the reason, never kept quietly: a model fine-tuned on an invented revenue
figure states it with confidence.
"""

from __future__ import annotations

import json
import re
from itertools import pairwise
from pathlib import Path
from typing import Any

PROMPTS = {
    "zh": (
        "你是一名严谨的数据标注员，只根据给定的资料出题和作答，不使用资料以外的任何知识。",
        "请阅读下面的资料，提出 {n} 个仅凭资料就能回答的问题，并给出准确、完整的答案。\n"
        "要求：\n"
        "1. 问题要具体，像真实用户会问的那样，写明主体（公司名称、年份、业务），不要说\"资料中\"\"本文\"；\n"
        "2. 答案必须完全来自资料，数字、单位和公司名称与原文一致，不要计算或推测资料中没有的数字；\n"
        "3. 只输出 JSON，不要输出其他任何文字，格式：\n"
        '{{"pairs": [{{"question": "问题", "answer": "答案"}}]}}\n\n'
        "资料（来源：{doc} 第 {page} 页）：\n{text}",
    ),
    "en": (
        "You are a careful data annotator. You write questions and answers from the given text only, "
        "never from outside knowledge.",
        "Read the text below and write {n} questions that can be answered from it alone, each with an "
        "accurate, complete answer.\n"
        "Rules:\n"
        "1. Make each question specific, as a real user would ask it, naming its subject (company, year, "
        "segment); never say \"the text\" or \"the passage\".\n"
        "2. Take every answer from the text: numbers, units and names exactly as written; do not compute or "
        "guess figures the text does not state.\n"
        "3. Output JSON only, nothing else, in this format:\n"
        '{{"pairs": [{{"question": "...", "answer": "..."}}]}}\n\n'
        "Text (source: {doc}, page {page}):\n{text}",
    ),
}
_Q_KEYS = ("question", "q", "问题", "instruction", "prompt")
_A_KEYS = ("answer", "a", "答案", "output", "response")
_NUMBER = re.compile(r"\d+(?:[,，]\d{3})*(?:\.\d+)?")
_TOKEN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]|[A-Za-z]+|\d+(?:\.\d+)?")
_REFUSALS = ("未提及", "没有提及", "无法回答", "无法确定", "not mentioned", "cannot be determined", "does not say")
# A complete "question"/"answer" pair inside JSON that broke later (a reply cut off at max tokens).
_PAIR = re.compile(r'"(?:question|问题)"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(?:answer|答案)"\s*:\s*"((?:[^"\\]|\\.)*)"')


def build_messages(chunk: dict[str, Any], n: int, lang: str = "zh") -> list[dict[str, str]]:
    """The chat the teacher answers for one chunk."""
    system, user = PROMPTS[lang]
    doc = Path(str(chunk.get("doc") or "?")).name  # the file's name: a folder path tells the teacher nothing
    text = user.format(n=n, doc=doc, page=chunk.get("page", "?"), text=chunk["text"])
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


def _first_json(text: str) -> Any:
    """The first JSON value in ``text`` (after any prose or a code fence), or None."""
    dec = json.JSONDecoder()
    for m in re.finditer(r"[\[{]", text):
        try:
            return dec.raw_decode(text, m.start())[0]
        except json.JSONDecodeError:
            continue
    return None


def _items(obj: Any) -> list[Any] | None:
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict):
        if any(k in obj for k in _Q_KEYS):
            return [obj]
        lists = [v for v in obj.values() if isinstance(v, list)]
        return obj.get("pairs") if isinstance(obj.get("pairs"), list) else (lists[0] if lists else None)
    return None


def _pick(item: dict[str, Any], keys: tuple[str, ...]) -> str:
    for k in keys:
        if isinstance(item.get(k), str):
            return item[k].strip()
    return ""


def parse_pairs(reply: str) -> tuple[list[dict[str, str]], str | None]:
    """``[{"question", "answer"}, ...]`` from the teacher's reply, and why nothing could be read.
    Accepts a list or ``{"pairs": [...]}``, a code fence or prose around it, a reasoning block
    before it, and (from a reply cut short) the complete pairs before the cut."""
    text = re.sub(r"<think>.*?</think>", "", reply, flags=re.S)
    items = _items(_first_json(text))
    found = [{"question": json.loads(f'"{q}"'), "answer": json.loads(f'"{a}"')} for q, a in _PAIR.findall(text)]
    if items is None or len(found) > len(items):  # broken JSON: the first value read is a single inner pair
        return found, None if found else "the reply holds no JSON list of question/answer pairs"
    pairs = [{"question": _pick(i, _Q_KEYS), "answer": _pick(i, _A_KEYS)} if isinstance(i, dict)
             else {"question": "", "answer": "", "raw": json.dumps(i, ensure_ascii=False)} for i in items]
    return pairs, None if pairs else "the reply's JSON list is empty"


def numbers(text: str) -> set[str]:
    """The figures in ``text``, thousands separators removed ("1,286" and "1286" are one)."""
    return {re.sub(r"[,，]", "", n) for n in _NUMBER.findall(text)}


def support(answer: str, chunk: str) -> float:
    """Share of the answer's token bigrams (Chinese characters, words, numbers) found in the chunk."""
    a, c = _TOKEN.findall(answer.lower()), _TOKEN.findall(chunk.lower())
    if len(a) < 2:
        return 1.0 if set(a) <= set(c) else 0.0
    grams = list(pairwise(a))
    have = set(pairwise(c))
    return sum(g in have for g in grams) / len(grams)


def years(text: str) -> set[str]:
    return {n for n in numbers(text) if re.fullmatch(r"(19|20)\d\d", n)}


def check_pair(pair: dict[str, str], chunk: str, min_support: float, doc_years: set[str] | None = None
               ) -> str | None:
    """Why ``pair`` is not grounded in ``chunk`` (None: it is). ``doc_years``: years named anywhere
    in the chunk's document, also accepted: a page rarely repeats the report's year, and the
    prompt asks the teacher to name it."""
    q, a = pair.get("question", ""), pair.get("answer", "")
    if not q or not a:
        return "not a question/answer object" if "raw" in pair else "empty question or answer"
    if any(r in a.lower() for r in _REFUSALS):
        return "the answer says the text does not tell"
    in_chunk = numbers(chunk) | (doc_years or set())
    for where, text in (("answer", a), ("question", q)):
        missing = sorted(numbers(text) - in_chunk)
        if missing:
            return f"{where} figure(s) not in the chunk: {', '.join(missing[:5])}"
    share = support(a, chunk)
    if share < min_support:
        return f"answer wording not from the chunk ({share:.0%} of it found, need {min_support:.0%})"
    return None

"""Quality lint: problems that are not parse errors but hurt training."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sftkit.core.conversation import Conversation
from sftkit.data.text import last_user, normalize, prompt_of, response_of, zh_share

PLACEHOLDER = re.compile(r"\{\{\s*[\w.\- ]{1,40}\s*\}\}|\[(?:your|insert) [^\]\n]{1,40}\]", re.IGNORECASE)
TRANSLATE_HINT = re.compile(
    r"translat|翻译|译成|英文|英语|中文|汉语|english|chinese|pinyin|拼音|language|语言", re.IGNORECASE
)
MIN_REPLY_CHARS = 3
ECHO_MIN_CHARS = 20
MIXED_GAP = 0.6
KINDS = ("conflicting_answer", "short_reply", "repeats_prompt", "placeholder", "mixed_language")


def _issue(kind: str, conv: Conversation, detail: str) -> dict[str, Any]:
    return {"kind": kind, "source": conv.source, "detail": detail}


def conflicting(convs: Sequence[Conversation]) -> list[dict[str, Any]]:
    """Same prompt (system + every prompt turn), different final replies."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(convs):
        if not c.is_text:
            key = "\x00".join(normalize(m.content) for m in c.prompt_messages())
            groups[key].append(i)
    out = []
    for idx in groups.values():
        replies = {normalize(response_of(convs[i])) for i in idx}
        if len(replies) > 1:
            others = ", ".join(convs[i].source or str(i) for i in idx[1:4])
            out += [_issue("conflicting_answer", convs[idx[0]], f"{len(replies)} different replies; also at {others}")]
    return out


def row_issues(conv: Conversation) -> list[dict[str, Any]]:
    if conv.is_text:
        found = PLACEHOLDER.findall(conv.text or "")
        return [_issue("placeholder", conv, ", ".join(sorted(set(found))))] if found else []
    out = []
    reply, user = response_of(conv), last_user(conv)
    stripped = reply.strip()
    if len(stripped) < MIN_REPLY_CHARS and not any(m.tool_calls for m in conv.messages[-1:]):
        out.append(_issue("short_reply", conv, f"reply is {stripped!r}"))
    if len(normalize(user)) >= ECHO_MIN_CHARS and normalize(reply).startswith(normalize(user)):
        out.append(_issue("repeats_prompt", conv, "the reply starts by repeating the prompt verbatim"))
    found = sorted({p for m in conv.messages for p in PLACEHOLDER.findall(m.content)})
    if found:
        out.append(_issue("placeholder", conv, ", ".join(found)))
    mixed = _mixed_language(prompt_of(conv), reply)
    if mixed:
        out.append(_issue("mixed_language", conv, mixed))
    return out


def _mixed_language(prompt: str, reply: str) -> str | None:
    """Chinese prompt answered in English (or the reverse) without a hint that
    a language change was asked for; code replies are ignored."""
    if "```" in reply or TRANSLATE_HINT.search(prompt):
        return None
    a, b = zh_share(prompt), zh_share(reply)
    if a is None or b is None or abs(a - b) < MIXED_GAP:
        return None

    def name(x: float) -> str:
        return "Chinese" if x >= 0.5 else "English"

    return f"prompt is {name(a)} ({a:.0%} Chinese), reply is {name(b)} ({b:.0%} Chinese)"


def lint(convs: Sequence[Conversation]) -> dict[str, Any]:
    """``{"issues": [...], "counts": {kind: n}}``, issues in file order per kind."""
    issues = conflicting(convs)
    for c in convs:
        issues += row_issues(c)
    counts = {k: sum(1 for i in issues if i["kind"] == k) for k in KINDS}
    return {"issues": issues, "counts": counts, "rows": len(convs)}

"""Checks on a mapped conversation, the quarantine file and ``on_error``.

Reject reasons (stable prefixes, see docs/data.md):
``invalid JSON``, ``invalid UTF-8``, ``invalid Unicode``, ``JSON nested too deeply``, ``row is not an object``,
``no known layout fields``, ``missing field``, ``field ... is empty/null/must be``,
``unknown role``, ``empty content``, ``system message not first``,
``conversation must start with a user turn``, ``two user turns in a row``,
``two assistant turns in a row``, ``tool turn without a preceding tool call``,
``conversation does not end on an assistant turn``, ``too long`` (from the renderer).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from sftkit.core.conversation import Conversation, Message
from sftkit.core.errors import DataError, RowRejected
from sftkit.data.layouts import RowError
from sftkit.data.types import LoadResult, OnError, Reject


def _check_content(i: int, m: Message) -> None:
    if m.role == "assistant" and m.tool_calls:
        return
    if not m.content.strip():
        raise RowError(f"empty content in message {i + 1} ({m.role})")


def _check_order(i: int, m: Message, prev: Message | None) -> None:
    where = f"message {i + 1}"
    if m.role == "system":
        if prev is not None:
            raise RowError(f"{where}: system message not first")
        return
    if prev is None or prev.role == "system":
        if m.role != "user":
            raise RowError(f"{where}: conversation must start with a user turn, got {m.role}")
        return
    if m.role == prev.role == "user":
        raise RowError(f"{where}: two user turns in a row")
    if m.role == prev.role == "assistant" and not prev.tool_calls:
        raise RowError(f"{where}: two assistant turns in a row")
    if m.role == "tool" and not (prev.role == "tool" or prev.tool_calls):
        raise RowError(f"{where}: tool turn without a preceding tool call")
    if prev.tool_calls and m.role != "tool":
        raise RowError(f"{where}: tool call without a tool result")


def check_conversation(conv: Conversation) -> Conversation:
    """Raise ``RowError`` if the conversation is unusable; drop empty system turns."""
    if conv.is_text:
        return conv
    conv.messages = [m for m in conv.messages if not (m.role == "system" and not m.content.strip())]
    prev: Message | None = None
    for i, m in enumerate(conv.messages):
        _check_content(i, m)
        _check_order(i, m, prev)
        prev = m
    if prev is None or prev.role != "assistant":
        raise RowError("conversation does not end on an assistant turn")
    return conv


def split_source(source: str | None) -> tuple[str, int]:
    """``"file:line"`` -> ``(file, line)`` (line 0 when unknown)."""
    if not source:
        return "", 0
    file, _, line = source.rpartition(":")
    return (file, int(line)) if line.isdigit() else (source, 0)


def fold_rendered(convs: Sequence[Conversation], results: Sequence[object]) -> tuple[list[object], list[Reject]]:
    """Split ``Renderer.render_many`` output into kept ``Rendered`` rows and
    ``Reject`` entries (``RowRejected`` -> reason). ``raw`` is the conversation
    as JSON (the verbatim row is in the file at ``file:line``)."""

    kept: list[object] = []
    rejects: list[Reject] = []
    for conv, r in zip(convs, results, strict=True):
        if isinstance(r, RowRejected):
            file, line = split_source(conv.source)
            reason = str(r).removeprefix(f"{conv.source}: ") if conv.source else str(r)
            rejects.append(Reject(file, line, f"too long: {reason}", json.dumps(conv.to_dict(), ensure_ascii=False)))
        else:
            kept.append(r)
    return kept, rejects


def write_rejects(rejects: Iterable[Reject], path: str | Path) -> int:
    """Write the quarantine: one JSON object per line
    ``{"file", "line", "reason", "raw"}`` with ``raw`` the row verbatim
    (undecodable bytes are kept as ``\\udcXX`` escapes). Returns the count."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with p.open("w", encoding="utf-8") as f:
        for r in rejects:
            f.write(json.dumps(r.to_dict(), ensure_ascii=True) + "\n")
            n += 1
    return n


def enforce(result: LoadResult | Iterable[Reject], on_error: OnError = "skip") -> None:
    """``on_error="fail"``: raise ``DataError`` naming the first reject; ``skip``: nothing."""
    if on_error not in ("skip", "fail"):
        raise DataError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    rejects = result.rejects if isinstance(result, LoadResult) else list(result)
    if on_error == "fail" and rejects:
        r = rejects[0]
        raise DataError(f"{r.where}: {r.reason} ({len(rejects)} row(s) rejected; fix the row or use on_error: skip)")

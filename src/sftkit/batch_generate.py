"""``sft generate``: answer every prompt of a data file, resumably.

Prompt-only rows (a conversation ending on a user turn, an alpaca row without
``output``) are accepted for JSON/JSONL input, although the training loader
rejects them (see ``load_prompts``). The prompt of a row is its conversation without the final assistant reply (the
reply, when the conversation ends with one, is kept as ``reference``); ``prompt``
in the output is the exact text the model saw (template applied). Output is JSON Lines, one
row per input row::

    {"source": "train.jsonl:12", "prompt": "<rendered prompt text>", "messages": [...],
     "output": "...", "reference": "...", "finish_reason": "stop"}

``source`` is ``<file name>:<line>``; it is the resume key: rows whose source is
already in the output file are skipped, so an interrupted run (or a deleted
output line) regenerates only what is missing. Rows are appended and flushed
one batch at a time, so an interruption loses at most one batch.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftkit.conversation import Conversation, Message
from sftkit.data import LoadResult, Reject, load_file
from sftkit.generate import Engine, GenParams


@dataclass(slots=True)
class GenerateSummary:
    total: int  # rows in the input file
    generated: int  # answered in this run
    skipped: int  # already in the output (resume)
    rejects: list[Reject] = field(default_factory=list)  # unusable input rows (with reasons)
    out: Path | None = None


def source_key(data: Path, conv: Conversation) -> str:
    """``file.jsonl:LINE`` from the loader's ``path:line`` (the path part may differ between runs)."""
    line = (conv.source or "").rsplit(":", 1)[-1]
    return f"{data.name}:{line}"


def done_sources(out: Path) -> set[str]:
    """Sources already answered in ``out``. A torn last line (a crash mid-write) is
    cut off so that appending continues on a clean line."""
    if not out.is_file():
        return set()
    raw = out.read_bytes()
    if raw and not raw.endswith(b"\n"):
        cut = raw.rfind(b"\n") + 1
        with out.open("r+b") as f:
            f.truncate(cut)
        raw = raw[:cut]
    seen: set[str] = set()
    for line in raw.decode("utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a damaged line: its row is regenerated
        if isinstance(row, dict) and isinstance(row.get("source"), str):
            seen.add(row["source"])
    return seen


def split_reply(conv: Conversation) -> tuple[list[Message], str | None]:
    """The prompt messages and the reference: a final assistant turn is the reply;
    a conversation ending on another role is all prompt (no reference)."""
    msgs = list(conv.messages)
    if msgs and msgs[-1].role == "assistant":
        return msgs[:-1], msgs[-1].content
    return msgs, None


def _prompt_conv(conv: Conversation) -> Conversation:
    return Conversation(messages=split_reply(conv)[0], tools=conv.tools, source=conv.source)


_PLACEHOLDER = "(sftkit: reply to generate)"
_TURN_KEYS = ("messages", "conversations", "conversation", "turns", "dialog")


def _with_placeholder(row: object) -> dict[str, object] | None:
    """``row`` with a placeholder reply appended, so that the loader (which needs
    training rows to end on a reply) validates a prompt-only row like any other;
    None when the row has no recognisable prompt shape."""
    if not isinstance(row, dict):
        return None
    row = dict(row)
    for key in _TURN_KEYS:
        turns = row.get(key)
        if isinstance(turns, list) and turns and isinstance(turns[-1], dict):
            sharegpt = "from" in turns[-1]
            reply = ({"from": "gpt", "value": _PLACEHOLDER} if sharegpt
                     else {"role": "assistant", "content": _PLACEHOLDER})
            row[key] = [*turns, reply]
            return row
    if "instruction" in row and not row.get("output"):
        row["output"] = _PLACEHOLDER
        return row
    return None


def load_prompts(data: Path, format: str | None = None) -> LoadResult:
    """``load_file``, plus prompt-only rows (no final reply), which the training
    loader rejects: they are re-checked with a placeholder reply that is then
    removed. Rows that still fail keep their original reject reason."""
    res = load_file(data, format=format)
    retry: dict[int, Reject] = {}
    patched: list[str] = []
    for rej in res.rejects:
        try:
            row = _with_placeholder(json.loads(rej.raw)) if isinstance(rej.raw, str) else None
        except json.JSONDecodeError:
            row = None
        if row is not None:
            retry[len(patched) + 1] = rej
            patched.append(json.dumps(row, ensure_ascii=False))
    if not patched:
        return res
    with tempfile.TemporaryDirectory(prefix="sftkit-gen-") as tmp:
        path = Path(tmp) / "prompts.jsonl"
        path.write_text("\n".join(patched) + "\n", encoding="utf-8")
        fmt = format or (res.format if res.format != "unknown" else None)
        again = load_file(path, format=fmt)
    recovered: set[int] = set()
    for conv in again.conversations:
        line = int((conv.source or ":0").rsplit(":", 1)[-1])
        if conv.messages and conv.messages[-1].content == _PLACEHOLDER:
            conv.messages.pop()
            orig = retry[line]
            conv.source = f"{data}:{orig.line}"
            res.conversations.append(conv)
            recovered.add(line)
    res.rejects = [r for i, r in retry.items() if i not in recovered] + [
        r for r in res.rejects if r not in retry.values()]
    res.conversations.sort(key=lambda c: int((c.source or ":0").rsplit(":", 1)[-1]))
    res.rejects.sort(key=lambda r: r.line)
    return res


def _usable(conv: Conversation) -> str | None:
    """Why a loaded conversation cannot be a prompt (None when it can)."""
    if conv.is_text:
        return "plain-text row: there is no conversation to answer"
    msgs = split_reply(conv)[0]
    if not msgs or all(m.role == "system" for m in msgs):
        return "no user turn before the reply: nothing to answer"
    return None


def run_generate(
    engine: Engine,
    data: Path,
    out: Path,
    params: GenParams,
    format: str | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> GenerateSummary:
    """Generate the missing rows of ``out`` for ``data``. ``on_total(n)`` is called
    once with the number of rows to generate, ``on_progress(done, n)`` after each batch."""
    res = load_prompts(data, format=format)
    rejects = list(res.rejects)
    todo: list[tuple[str, Conversation]] = []
    seen = done_sources(out)
    skipped = 0
    for conv in res.conversations:
        key = source_key(data, conv)
        why = _usable(conv)
        if why is not None:
            line = int(key.rsplit(":", 1)[-1]) if key.rsplit(":", 1)[-1].isdigit() else 0
            rejects.append(Reject(str(data), line, why, json.dumps(conv.to_dict(), ensure_ascii=False)))
            continue
        if key in seen:
            skipped += 1
            continue
        todo.append((key, conv))
    if on_total:
        on_total(len(todo))
    out.parent.mkdir(parents=True, exist_ok=True)
    done = 0
    step = max(1, engine.batch_size)
    with out.open("a", encoding="utf-8") as f:
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            prompts = [engine.prompt_for(_prompt_conv(c)) for _, c in chunk]
            results = engine.generate(prompts, params)
            for (key, conv), prompt, r in zip(chunk, prompts, results, strict=True):
                f.write(json.dumps(_row(key, conv, prompt, r.text, r.finish_reason), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            done += len(chunk)
            if on_progress:
                on_progress(done, len(todo))
    return GenerateSummary(total=res.total, generated=done, skipped=skipped, rejects=rejects, out=out)


def _row(key: str, conv: Conversation, prompt: str, output: str, finish: str) -> dict[str, Any]:
    msgs, reference = split_reply(conv)
    row: dict[str, Any] = {"source": key, "prompt": prompt, "messages": [m.to_dict() for m in msgs], "output": output}
    if reference is not None:
        row["reference"] = reference
    row["finish_reason"] = finish
    return row

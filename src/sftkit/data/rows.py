"""Rows that keep their identity through the data workflow (synth -> review -> augment).

``load_file`` maps every layout to a ``Conversation`` and drops what the layout does not know,
including a row's ``id`` and ``meta`` (provenance such as the source chunk of a drafted pair).
The review and augmentation steps must carry both through, so this module reads them back from
the raw rows (by line) and writes them out again beside ``messages``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sftkit.core.conversation import Conversation
from sftkit.core.errors import DataError
from sftkit.data.io import conv_record
from sftkit.data.load import load_file
from sftkit.data.readers import iter_rows
from sftkit.data.types import LoadResult


def load_rows(path: str | Path, format: str | None = None, **kw: Any) -> LoadResult:
    """``load_file`` with each row's own ``id`` and ``meta`` put back on the conversation
    (``conv.meta["id"]`` and the ``meta`` object's keys)."""
    res = load_file(path, format, **kw)
    _, raw_rows = iter_rows(Path(path))
    by_line = {r.line: r.value for r in raw_rows if isinstance(r.value, dict)}
    for conv in res.conversations:
        raw = by_line.get(_line_of(conv), {})
        if isinstance(raw.get("meta"), dict):
            conv.meta.update(raw["meta"])
        if isinstance(raw.get("id"), str | int) and str(raw["id"]).strip():
            conv.meta["id"] = str(raw["id"]).strip()
    return res


def _line_of(conv: Conversation) -> int:
    try:
        return int(str(conv.source).rsplit(":", 1)[1])
    except (IndexError, ValueError):
        return -1


def row_id(conv: Conversation) -> str:
    """The row's own ``id``, or a digest of its content: stable when other rows are added,
    removed or reordered, so a review sheet still finds its rows in a re-written file."""
    own = conv.meta.get("id")
    if own:
        return str(own)
    body = json.dumps(conv.to_dict(), ensure_ascii=False, sort_keys=True)
    return "sha1:" + hashlib.sha1(body.encode("utf-8")).hexdigest()[:12]


def record(conv: Conversation, rid: str | None = None) -> dict[str, Any]:
    """The JSONL object for ``conv``: ``id`` (its own, else a content digest), the layout's fields,
    ``meta`` (without the id)."""
    return conv_record(conv, rid or row_id(conv))


def write_records(rows: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write JSON objects one per line, whole or not at all (a crash leaves no half file)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.partial")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, p)
    return n


def read_records(path: str | Path, what: str) -> list[tuple[int, dict[str, Any]]]:
    """``(line, object)`` for every non-blank line of a JSONL file this workflow wrote;
    anything else is a ``DataError`` naming the file and line."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the {what} ({e})") from None
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{i}: the {what} line is not JSON ({e.msg}); fix or remove that line") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{i}: the {what} line is not a JSON object")
        out.append((i, obj))
    return out

"""Writing conversations back out (JSONL in the ``messages`` layout)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from sftkit.core.conversation import Conversation


def conv_record(conv: Conversation, rid: str | None = None) -> dict:
    """The JSONL object for ``conv``: its ``id`` (``rid``, else the row's own, if any), the layout's fields,
    ``label``, and ``meta`` (provenance such as a drafted pair's chunk and page) when it has any."""
    rid = rid or conv.meta.get("id")
    out = ({"id": rid} if rid else {}) | conv.to_dict()
    if conv.label is not None:
        out["label"] = conv.label
    meta = {k: v for k, v in conv.meta.items() if k != "id"}
    if meta:
        out["meta"] = meta
    return out


def write_jsonl(convs: Iterable[Conversation], path: str | Path) -> int:
    """One ``{"messages": ...}`` (or ``{"text": ...}``) object per line, with the row's ``id`` and ``meta``
    when it has them (see ``conv_record``); returns the count."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.partial")  # whole or not at all: a crash never leaves half a file
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for c in convs:
            f.write(json.dumps(conv_record(c), ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, p)
    return n

"""Writing conversations back out (JSONL in the ``messages`` layout)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from sftkit.core.conversation import Conversation


def conv_record(conv: Conversation) -> dict:
    out = conv.to_dict()
    if conv.label is not None:
        out["label"] = conv.label
    return out


def write_jsonl(convs: Iterable[Conversation], path: str | Path) -> int:
    """One ``{"messages": ...}`` (or ``{"text": ...}``) object per line; returns the count."""
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

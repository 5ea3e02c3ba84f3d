"""Short content digests: what a run, a cache entry or an answers file was made from."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes (first 16 hex digits), read in 1 MiB pieces."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def json_digest(obj: Any) -> str:
    """sha256 of ``obj`` as canonical JSON (sorted keys; first 16 hex digits)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def flatten_keys(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as dotted keys (``{"train": {"seed": 1}}`` -> ``{"train.seed": 1}``): what a
    comparison of two configs names when one value differs."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_keys(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out

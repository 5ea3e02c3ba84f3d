"""Before training: the data check, the length statistics and the memory estimate.

Thin adapters from the page's requests to ``sftkit.data`` (``load_file``, ``data.stats``) and
``sftkit.estimate``; they add nothing but JSON shaping and a cache of loaded tokenizers,
and for a file with no usable row they leave out the key names the data module's reasons
list (paths are confined to the console's folders by workspace.py before they get here).
"""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from sftkit.console import heavy
from sftkit.console.errors import bad_request
from sftkit.core.config import RunConfig
from sftkit.core.errors import DataError, ModelNotFound, TemplateError
from sftkit.data import load_file
from sftkit.data import stats as st
from sftkit.estimate import estimate_run
from sftkit.estimate.memory import EXPLAIN
from sftkit.estimate.recommend import cheapest_fix
from sftkit.hub.models import load_tokenizer, resolve

MAX_REJECTS_SHOWN = 50
_NO_LAYOUT = "no known layout fields"  # the start of sftkit.data.load's reason for a row in no layout
_tokenizer_lock = threading.Lock()


def check_files(files: list[tuple[str, Path, str | None]]) -> dict[str, Any]:
    """``[(split, path, format)]`` -> every row accepted or rejected, per file (as ``sft data check``)."""

    out = []
    for split, path, fmt in files:
        entry: dict[str, Any] = {"split": split, "path": str(path)}
        try:
            res = load_file(path, fmt)
        except (DataError, ValueError, OSError) as e:  # the file itself is unusable: say so, check the others
            entry["error"] = str(e)
            out.append(entry)
            continue
        rejects = [r.to_dict(with_raw=False) for r in res.rejects[:MAX_REJECTS_SHOWN]]
        if not res.valid:
            rejects = [{**r, "reason": _without_keys(str(r["reason"]))} for r in rejects]
        entry.update(format=res.format, total=res.total, valid=res.valid, rejected=res.rejected, rejects=rejects)
        out.append(entry)
    ok = all("error" not in f for f in out)
    return {"files": out, "ok": ok, "total": sum(f.get("total", 0) for f in out),
            "valid": sum(f.get("valid", 0) for f in out), "rejected": sum(f.get("rejected", 0) for f in out)}


def _without_keys(reason: str) -> str:
    """A file with no usable row may be no data file at all (a settings or credentials JSON in
    the workspace): the page does not list its key names. ``sft data check`` still does."""
    if reason.startswith(_NO_LAYOUT):
        return f"{_NO_LAYOUT} (key names are not shown for a file with no usable row); pass columns= to map them"
    return reason


@lru_cache(maxsize=4)
def _renderer(model_ref: str, template: str | None) -> Any:
    """The model's tokenizer under the run's template, without a cutoff (full lengths)."""
    from sftkit.infer.engine import build_renderer

    tok = load_tokenizer(resolve(model_ref).path)
    return build_renderer(tok, template)


def length_stats(paths: list[Path], model_ref: str, template: str | None, cutoff: int | None) -> dict[str, Any]:
    """Token lengths with the training template, the recommended cutoff_len, and what ``cutoff`` cuts."""
    heavy.ensure()

    convs = []
    try:
        for p in paths:
            convs += load_file(p).conversations
    except (DataError, OSError) as e:
        raise bad_request(f"data: {e}", "files") from None
    if not convs:
        raise bad_request("data: no usable rows in these files (run the data check to see why)", "files")
    try:
        with _tokenizer_lock:
            renderer = _renderer(model_ref, template)
    except (ModelNotFound, TemplateError, OSError, ValueError) as e:
        raise bad_request(f"model: cannot load the tokenizer/template of {model_ref!r}: {e}", "model") from None
    out = st.compute(convs, renderer, cutoff)
    lens = out.pop("_lengths")
    out["histogram"] = _histogram(lens.total)
    out["files"] = [str(p) for p in paths]
    return out


def _histogram(total: np.ndarray, bins: int = 24) -> dict[str, list[float]]:
    if not len(total):
        return {"edges": [], "counts": []}
    counts, edges = np.histogram(total, bins=min(bins, max(1, len(np.unique(total)))))
    return {"edges": [round(float(e), 1) for e in edges], "counts": [int(c) for c in counts]}


def estimate(cfg: RunConfig) -> dict[str, Any]:
    """``sft estimate CONFIG`` for this machine, as JSON (with the explanation of every term)."""
    heavy.ensure()

    try:
        est = estimate_run(cfg, count_data=True, lengths=True)
    except (ModelNotFound, OSError, ValueError) as e:
        raise bad_request(f"estimate: {e}", "model.name_or_path") from None
    out = est.to_json()
    fix = None if est.fits else cheapest_fix(est.shape, est.setup, est.device)
    out["cheapest_fix"] = {"change": fix[0], "total_gb": round(fix[1], 3)} if fix else None
    out["explain"] = EXPLAIN
    return out

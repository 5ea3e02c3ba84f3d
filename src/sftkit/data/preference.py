"""Preference data: files -> ``PreferencePair`` (DPO/ORPO/SimPO) or ``Feedback`` (KTO) rows -> ids.

Same contract as SFT data (``load.py``): every row of a file is either accepted or a
``Reject`` with ``file:line`` and a reason, the layout is detected per file from its rows
(a file mixing layouts is a ``DataError`` naming the first odd line), and the bytes -> rows
step is ``readers.py``. The layouts and the row checks are in ``pref_layouts.py``;
``columns={key: file_column}`` renames file columns to its keys.

Entry points::

    res = load_preference_file("dpo_en_demo.json")       # PrefLoad: rows + rejects, format detected
    pairs = require_pairs([res], "dpo")                   # dpo/orpo/simpo: pairs only
    feedback = unpair(res.rows)                           # kto: each pair -> desirable + undesirable
    kept, rejects = render_preference(pairs, renderer)    # RenderedPair/RenderedFeedback, file:line rejects
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftkit.core.errors import DataError, RowRejected
from sftkit.core.vocab import FEEDBACK_LAYOUTS, PAIR_LAYOUTS, PREF_KEYS, PREF_LAYOUTS
from sftkit.data.layouts import RowError
from sftkit.data.pref_layouts import (
    Feedback,
    PreferencePair,
    PrefRow,
    check_columns,
    detect_pref_layout,
    rename,
    to_pref_row,
)
from sftkit.data.readers import RawRow, iter_rows
from sftkit.data.types import OnError, Reject
from sftkit.data.validate import enforce, split_source
from sftkit.templates.pairs import RenderedFeedback, RenderedPair, render_feedback, render_pairs
from sftkit.templates.render import Overflow, Renderer

__all__ = [
    "FEEDBACK_LAYOUTS",
    "PAIR_LAYOUTS",
    "PREF_KEYS",
    "PREF_LAYOUTS",
    "Feedback",
    "PrefLoad",
    "PrefRow",
    "PreferencePair",
    "RenderedFeedback",
    "RenderedPair",
    "detect_pref_layout",
    "kto_balance",
    "load_preference_file",
    "render_preference",
    "require_pairs",
    "unpair",
]

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


@dataclass(slots=True)
class PrefLoad:
    """Every row of one file: accepted (``rows``) or ``rejects``; ``len(rows) + len(rejects) == total``."""

    rows: list[PrefRow]
    rejects: list[Reject]
    total: int
    format: str
    path: str
    file_type: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def paired(self) -> bool:
        return self.format in PAIR_LAYOUTS

    @property
    def valid(self) -> int:
        return len(self.rows)

    @property
    def rejected(self) -> int:
        return len(self.rejects)

    def to_report(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "format": self.format,
            "total": self.total,
            "valid": len(self.rows),
            "rejected": len(self.rejects),
        }


def _check_unicode(row: RawRow) -> None:
    """A lone ``\\uD800``-style escape is valid JSON but not text; only rows whose raw text has
    such an escape pay for the check."""
    if _SURROGATE_ESCAPE.search(row.raw) is None:
        return
    try:
        json.dumps(row.value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise RowError("invalid Unicode: a lone surrogate escape is not a character; fix or remove it") from None


# --- loading --------------------------------------------------------------------------


@dataclass(slots=True)
class _State:
    path: str
    forced: str | None
    columns: dict[str, str]
    layout: str | None = None
    layout_line: int = 0


def _layout_for(st: _State, row: RawRow, value: dict[str, Any]) -> str:
    if st.forced:
        return st.forced
    layout = detect_pref_layout(value)
    if layout is None:
        keys = ", ".join(sorted(map(str, row.value))[:8]) or "none"
        raise RowError(
            f"no preference fields (keys: {keys}); a pair needs chosen + rejected, feedback needs "
            "a label; pass columns= to map other names"
        )
    if st.layout is None:
        st.layout, st.layout_line = layout, row.line
    elif layout != st.layout:
        raise DataError(
            f"{st.path}:{row.line}: row is in the {layout} layout but the file is {st.layout} "
            f"(from line {st.layout_line}); split the file or force one with format"
        )
    return layout


def _one(st: _State, row: RawRow) -> PrefRow:
    if row.error is not None:
        raise RowError(row.error)
    if not isinstance(row.value, dict):
        raise RowError(f"row is not an object (got {type(row.value).__name__})")
    value = rename(row.value, st.columns)
    layout = _layout_for(st, row, value)
    _check_unicode(row)
    return to_pref_row(value, layout, f"{st.path}:{row.line}")


def _guarded(st: _State, row: RawRow, rows: list[PrefRow], rejects: list[Reject]) -> None:
    try:
        rows.append(_one(st, row))
    except RowError as e:
        rejects.append(Reject(st.path, row.line, str(e), row.raw))
    except RecursionError:
        rejects.append(Reject(st.path, row.line, "JSON nested too deeply", row.raw))
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - a row must never crash the loader
        rejects.append(Reject(st.path, row.line, f"unusable row ({type(e).__name__}: {e})", row.raw))


def load_preference_file(
    path: str | Path,
    format: str | None = None,
    columns: dict[str, str] | None = None,
    *,
    file_type: str | None = None,
    on_error: OnError = "skip",
) -> PrefLoad:
    """Read one preference file (see the module docstring for ``format`` and ``columns``).

    Raises ``DataError`` only for the file itself (missing, unreadable, unknown format, mixed
    layouts) or, under ``on_error="fail"``, for its first rejected row."""
    fmt = None if format in (None, "", "auto") else format
    if fmt is not None and fmt not in PREF_LAYOUTS:
        raise DataError(
            f"unknown preference format {format!r}; use one of {', '.join(PREF_LAYOUTS)} (or leave it out to detect it)"
        )
    st = _State(str(path), fmt, check_columns(columns))
    notes: list[str] = []
    ft, raw_rows = iter_rows(Path(path), file_type, notes)
    rows: list[PrefRow] = []
    rejects: list[Reject] = []
    total = 0
    for raw in raw_rows:
        total += 1
        _guarded(st, raw, rows, rejects)
    res = PrefLoad(rows, rejects, total, st.forced or st.layout or "unknown", str(path), ft, notes)
    enforce(rejects, on_error)
    return res


# --- what a stage takes ---------------------------------------------------------------


def require_pairs(loads: Sequence[PrefLoad], stage: str) -> list[PreferencePair]:
    """The pairs of every file, for a paired stage (dpo, orpo, simpo): unpaired feedback has
    no rejected reply to compare against, so such a file is an error, not a silent skip."""
    for res in loads:
        if res.rows and not res.paired:
            raise DataError(
                f"{res.path}: stage {stage} needs chosen/rejected pairs, but the file holds unpaired "
                f"feedback ({res.format}); use stage: kto, or give paired data"
            )
    return [r for res in loads for r in res.rows if isinstance(r, PreferencePair)]


def unpair(rows: Sequence[PrefRow]) -> list[Feedback]:
    """KTO rows: feedback as is; each pair becomes its chosen reply (desirable) followed by its
    rejected one (undesirable), both with the pair's prompt and source."""
    out: list[Feedback] = []
    for r in rows:
        if isinstance(r, Feedback):
            out.append(r)
        else:
            out += [Feedback(r.prompt, r.chosen, True, r.source), Feedback(r.prompt, r.rejected, False, r.source)]
    return out


def kto_balance(rows: Sequence[Feedback], undesirable_weight: float = 1.0) -> dict[str, Any]:
    """Counts per label and the ``desirable_weight`` range the KTO paper recommends (its Eq. 8:
    ``n_desirable * w_desirable / (n_undesirable * w_undesirable)`` in ``[1, 4/3]``)."""
    n_des = sum(1 for r in rows if r.desirable)
    n_und = len(rows) - n_des
    out: dict[str, Any] = {"desirable": n_des, "undesirable": n_und}
    if n_des and n_und:
        low = n_und * undesirable_weight / n_des
        out["desirable_weight_range"] = [round(low, 4), round(low * 4 / 3, 4)]
    return out


# --- rendering (templates/pairs.py) with every dropped row reported -------------------


def render_preference(
    rows: Sequence[PrefRow],
    renderer: Renderer,
    cutoff_len: int | None = None,
    overflow: Overflow | None = None,
) -> tuple[list[RenderedPair | RenderedFeedback], list[Reject]]:
    """Token ids for the trainers (``RenderedPair`` for pairs, ``RenderedFeedback`` for
    feedback, in row order) and a ``Reject`` for every row the template could not render
    consistently or that did not fit ``cutoff_len`` (see ``sftkit.templates.pairs``)."""
    pairs = [r for r in rows if isinstance(r, PreferencePair)]
    feedback = [r for r in rows if isinstance(r, Feedback)]
    done = iter(render_pairs(pairs, renderer, cutoff_len, overflow))
    done_fb = iter(render_feedback(feedback, renderer, cutoff_len, overflow))
    kept: list[RenderedPair | RenderedFeedback] = []
    rejects: list[Reject] = []
    for row in rows:
        result = next(done) if isinstance(row, PreferencePair) else next(done_fb)
        if isinstance(result, RowRejected):
            file, line = split_source(row.source)
            raw = json.dumps(_row_dict(row), ensure_ascii=False)
            rejects.append(Reject(file, line, str(result), raw))
        else:
            kept.append(result)
    return kept, rejects


def _row_dict(row: PrefRow) -> dict[str, Any]:
    prompt = [m.to_dict() for m in row.prompt.messages]
    if isinstance(row, PreferencePair):
        return {"prompt": prompt, "chosen": [row.chosen.to_dict()], "rejected": [row.rejected.to_dict()]}
    return {"prompt": prompt, "completion": [row.completion.to_dict()], "label": row.desirable}

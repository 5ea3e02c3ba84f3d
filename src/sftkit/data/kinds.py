"""Which kind of data a file holds: conversations (SFT), preference rows, or plain documents.

``sft data check`` and ``sft run``'s data step read any of them and report each the same way
(rows, valid, rejected with file:line). The kind is told by the file, not guessed per row:

* ``format`` names a preference layout -> preference; ``.txt`` -> plain documents (stage pt);
* otherwise the first row that parses is looked at: ``chosen``/``rejected`` keys, or a
  boolean ``label`` beside a reply (``messages``/``conversations``/``completion``/``output``),
  mark a preference file. A ``label`` that is not a boolean (a class name, as in classification
  data) leaves the file SFT data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from sftkit.core.vocab import PREF_LAYOUTS
from sftkit.data.load import load_file
from sftkit.data.preference import PrefLoad, load_preference_file
from sftkit.data.pretrain import load_text_file
from sftkit.data.readers import iter_rows
from sftkit.data.types import LoadResult

Kind = Literal["sft", "preference", "text"]
_REPLY_KEYS = ("messages", "conversations", "completion", "output")


def looks_preference(row: Any) -> bool:
    if not isinstance(row, dict):
        return False
    if "chosen" in row or "rejected" in row:
        return True
    return isinstance(row.get("label"), bool) and any(k in row for k in _REPLY_KEYS)


def file_kind(path: str | Path, format: str | None = None) -> Kind:
    """The kind of data in ``path`` (reads up to the first row that parses)."""
    p = Path(path)
    if format and format.lower() in PREF_LAYOUTS:
        return "preference"
    if p.suffix.lower() == ".txt":
        return "text"
    if not p.is_file():
        return "sft"  # the SFT loader names the missing file
    _, rows = iter_rows(p)
    for row in rows:
        if row.error is None:
            return "preference" if looks_preference(row.value) else "sft"
    return "sft"


def load_any(path: str | Path, format: str | None = None,
             columns: dict[str, str] | None = None) -> LoadResult | PrefLoad:
    """Every row of ``path``, accepted or rejected with file:line, whatever its kind: the result has
    ``total``, ``valid``, ``rejected``, ``rejects``, ``format``, ``path`` and ``notes``."""
    kind = file_kind(path, format)
    if kind == "preference":
        return load_preference_file(path, format=format, columns=columns)
    if kind == "text":
        return load_text_file(path, (columns or {}).get("text", "text"))
    return load_file(path, format=format, columns=columns)

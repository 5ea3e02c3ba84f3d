"""``load_file``: one file -> ``LoadResult`` (every row accepted or rejected)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from sftkit.core.conversation import Conversation
from sftkit.core.digest import file_hash
from sftkit.core.errors import DataError
from sftkit.core.vocab import is_dataset_ref, normalize_format
from sftkit.data.layouts import ColumnMap, RowError, detect_layout, to_conversation
from sftkit.data.readers import RawRow, iter_rows
from sftkit.data.types import LoadResult, OnError, Reject
from sftkit.data.validate import check_conversation, enforce
from sftkit.hub.datasets import parse_dataset_ref, resolve_dataset

# A \uD800-\uDFFF escape: JSON allows it, but a lone one is not text (tokenizers and UTF-8 refuse it).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _check_unicode(conv: Conversation, raw: str) -> None:
    """Reject lone surrogates from ``\\uXXXX`` escapes (also inside JSON strings such as ``tools``).
    Only rows whose raw text holds such an escape are checked, so clean rows cost one regex scan."""
    if _SURROGATE_ESCAPE.search(raw) is None:
        return
    text = json.dumps([conv.to_dict(), conv.label], ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = f"\\u{ord(text[e.start]):04x}"
        raise RowError(f"invalid Unicode: a lone surrogate escape ({bad}) is not a character; "
                       "fix or remove the escape") from None


@dataclass(slots=True)
class _State:
    path: str
    forced: str | None
    cmap: ColumnMap
    layout: str | None = None
    layout_line: int = 0
    convs: list[Conversation] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


def _layout_for(st: _State, row: RawRow, canon: dict, src: str | None) -> str:
    if st.forced:
        return st.forced
    layout = detect_layout(canon, src)
    if layout is None:
        keys = ", ".join(sorted(map(str, row.value))[:8]) or "none"
        raise RowError(f"no known layout fields (keys: {keys}); pass columns= to map them")
    if st.layout is None:
        st.layout, st.layout_line = layout, row.line
    elif layout != st.layout:
        raise DataError(
            f"{st.path}:{row.line}: row is in the {layout} layout but the file is {st.layout} "
            f"(from line {st.layout_line}); split the file or force one with --format"
        )
    return layout


def _one(st: _State, row: RawRow) -> None:
    if row.error is not None:
        raise RowError(row.error)
    if not isinstance(row.value, dict):
        raise RowError(f"row is not an object (got {type(row.value).__name__})")
    canon, src = st.cmap.canon(row.value)
    layout = _layout_for(st, row, canon, src)
    conv = check_conversation(to_conversation(canon, layout, st.cmap, src))
    _check_unicode(conv, row.raw)
    conv.source = f"{st.path}:{row.line}"
    task = row.value.get("task")
    if isinstance(task, str) and task.strip():  # a task type: evaluation reports metrics per task
        conv.meta["task"] = task.strip()
    st.convs.append(conv)


def _guarded(st: _State, row: RawRow) -> None:
    try:
        _one(st, row)
    except RowError as e:
        st.rejects.append(Reject(st.path, row.line, str(e), row.raw))
    except RecursionError:
        st.rejects.append(Reject(st.path, row.line, "JSON nested too deeply", row.raw))
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - a row must never crash the loader
        st.rejects.append(Reject(st.path, row.line, f"unusable row ({type(e).__name__}: {e})", row.raw))


def load_file(
    path: str | Path,
    format: str | None = None,
    columns: dict[str, str] | None = None,
    *,
    file_type: str | None = None,
    on_error: OnError = "skip",
) -> LoadResult:
    """Read one data file (or a downloaded hub dataset) into conversations.

    ``path``: a file, or a dataset id ``hf:ORG/NAME[@REV][:SPLIT]`` /
    ``modelscope:ORG/NAME[@REV][:SPLIT]`` already fetched with ``sft download --dataset``
    (its selected files are read from the local cache, one after another, each detecting its
    layout; rows are named ``REF/FILE:LINE``). ``format``: the row layout (``messages``,
    ``sharegpt``, ``alpaca``, ``cot``, ``text``; ``None``/``"auto"`` detects it from the rows; a
    file mixing layouts raises ``DataError`` naming the first offending line). ``columns``:
    ``{canonical: file_column}`` (see ``sftkit.data.layouts``). ``file_type``:
    ``jsonl``/``json``/``csv``/``tsv``/``parquet`` (default: from the extension).
    ``on_error="fail"`` raises ``DataError`` on the first rejected row.

    Raises ``DataError`` only for the file itself (missing, unreadable, unknown
    type/format, mixed layouts); bad rows become ``Reject`` entries. A dataset that is not
    in the cache is a ``SourceUnavailable`` naming the download command.
    """
    if is_dataset_ref(path):
        result = _load_dataset(str(path), format, columns, file_type)
    else:
        result = _load_one(Path(path), str(path), format, columns, file_type)
    enforce(result, on_error)
    return result


def _load_one(p: Path, name: str, format: str | None, columns: dict[str, str] | None,
              file_type: str | None) -> LoadResult:
    st = _State(name, normalize_format(format), ColumnMap(columns))
    notes: list[str] = []
    ft, rows = iter_rows(p, file_type, notes)
    total = 0
    for row in rows:
        total += 1
        _guarded(st, row)
    return LoadResult(st.convs, st.rejects, total, st.forced or st.layout or "unknown", name, ft, notes)


def _load_dataset(text: str, format: str | None, columns: dict[str, str] | None,
                  file_type: str | None) -> LoadResult:
    """Every selected file of a cached dataset, accounted for as one source named by its id."""
    ref = parse_dataset_ref(text)
    snap = resolve_dataset(ref)
    parts = [_load_one(snap.path / f, f"{ref.repo}/{f}", format, columns, file_type) for f in snap.select()]
    layouts = sorted({r.format for r in parts})
    return LoadResult([c for r in parts for c in r.conversations], [j for r in parts for j in r.rejects],
                      sum(r.total for r in parts), "+".join(layouts), str(ref),
                      "+".join(sorted({r.file_type for r in parts})), [n for r in parts for n in r.notes])


def source_hash(path: str | Path) -> str:
    """The content identity of a data source: the file's hash, or a cached dataset's selected files'."""
    if is_dataset_ref(path):
        ref = parse_dataset_ref(str(path))
        return resolve_dataset(ref).digest()
    return file_hash(Path(path))


def load_files(
    paths: list[str | Path], format: str | None = None, columns: dict[str, str] | None = None, **kw: object
) -> list[LoadResult]:
    """``load_file`` for each path (each file detects its own layout)."""
    return [load_file(p, format, columns, **kw) for p in paths]  # type: ignore[arg-type]

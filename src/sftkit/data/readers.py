"""File readers: bytes on disk -> ``RawRow`` (line, verbatim text, parsed value or error).

Readers never interpret the layout and never raise on bad row content: a row
that cannot be parsed comes back with ``error`` set. Only problems with the
file itself (missing, unreadable, unknown type) raise ``DataError``.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftkit.core.errors import DataError

BOM = "\ufeff"
FILE_TYPES = ("jsonl", "json", "csv", "tsv", "parquet")
_DECODER = json.JSONDecoder()
_WS = " \t\r\n"


@dataclass(slots=True)
class RawRow:
    line: int
    raw: str
    value: Any = None
    error: str | None = None


def _has_surrogates(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def parse_json(text: str) -> tuple[Any, str | None]:
    """``json.loads`` that turns every failure into a reason string."""
    try:
        return json.loads(text), None
    except RecursionError:
        return None, "JSON nested too deeply"
    except (ValueError, TypeError) as e:
        msg = str(e).split(":")[0] if isinstance(e, json.JSONDecodeError) else str(e)
        return None, f"invalid JSON ({msg})"


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the path") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a data file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e}); check permissions") from None


def sniff_file_type(path: Path, head: bytes) -> str:
    """File type from the extension, else from the first non-blank byte."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        return "jsonl"
    if suffix in (".csv", ".tsv", ".parquet"):
        return suffix[1:]
    first = head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if suffix == ".json" or first in (b"[", b"{"):
        return "json" if first == b"[" else "jsonl"
    if not first:
        return "jsonl"  # empty file: no rows either way
    raise DataError(
        f"{path}: cannot tell the file type (extension {suffix or 'none'}); use .jsonl, .json, .csv, .tsv or .parquet"
    )


def iter_rows(path: Path, file_type: str | None = None, notes: list[str] | None = None) -> tuple[str, Iterator[RawRow]]:
    """``(file_type, rows)`` for a data file; file-level remarks (not rows) go to ``notes``."""
    if file_type == "parquet" or (file_type is None and path.suffix.lower() == ".parquet"):
        return "parquet", _parquet_rows(path)
    data = _read_bytes(path)
    ft = file_type or sniff_file_type(path, data[:4096])
    if ft not in FILE_TYPES:
        raise DataError(f"{path}: unknown file type {ft!r}; expected one of {', '.join(FILE_TYPES)}")
    if ft == "jsonl":
        return ft, _jsonl_rows(data)
    text = data.decode("utf-8", errors="surrogateescape").removeprefix(BOM)
    if ft == "json":
        return ft, _json_array_rows(text, path, notes)
    return ft, _csv_rows(text, "\t" if ft == "tsv" else ",")


# --- JSONL -------------------------------------------------------------------


def _jsonl_rows(data: bytes) -> Iterator[RawRow]:
    for i, bline in enumerate(data.removeprefix(b"\xef\xbb\xbf").splitlines(), start=1):
        if not bline.strip():
            continue
        try:
            line = bline.decode("utf-8")
        except UnicodeDecodeError as e:
            raw = bline.decode("utf-8", errors="surrogateescape")
            yield RawRow(i, raw, error=f"invalid UTF-8 (byte {e.start})")
            continue
        value, err = parse_json(line)
        yield RawRow(i, line, value, err)


# --- JSON array --------------------------------------------------------------


class _LineCounter:
    """Line number of a character offset, counted incrementally."""

    def __init__(self, text: str) -> None:
        self.text, self.pos, self.line = text, 0, 1

    def at(self, offset: int) -> int:
        self.line += self.text.count("\n", self.pos, offset)
        self.pos = offset
        return self.line


def _skip_ws(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in _WS:
        i += 1
    return i


def _decode_at(text: str, i: int) -> tuple[Any, int, str | None]:
    try:
        value, end = _DECODER.raw_decode(text, i)
        return value, end, None
    except RecursionError:
        return None, -1, "JSON nested too deeply"
    except json.JSONDecodeError as e:
        return None, -1, f"invalid JSON ({e.msg})"


_NOT_A_START = frozenset("}],")  # lines that close or continue an element


def _indent(text: str, i: int) -> int:
    return i - (text.rfind("\n", 0, i) + 1)


def _resync(text: str, i: int) -> int:
    """Start of the next element after a broken one at ``i`` (or the end): the next line,
    no deeper indented than the broken element, that does not close one. Nested lines of a
    pretty-printed element are deeper, so each broken element stays one row of its own
    (and the scan is linear: no re-parsing of what follows)."""
    limit = _indent(text, i)
    j = i
    while True:
        j = text.find("\n", j + 1)
        if j < 0:
            return len(text)
        k = _skip_ws(text, j)
        if k < len(text) and text[k] not in _NOT_A_START and _indent(text, k) <= limit:
            return k


def _element(text: str, i: int, line: int) -> tuple[RawRow, int, str | None]:
    """One array element at ``i``: ``(row, where the next element starts, what follows)``;
    what follows is ``","``, ``"]"``, ``""`` (end of text) or ``None`` after a broken element."""
    value, end, err = _decode_at(text, i)
    if err is None:
        j = _skip_ws(text, end)
        sep = text[j : j + 1]
        raw = text[i:end]
        if sep in (",", "]", ""):
            row = RawRow(line, raw, error="invalid UTF-8") if _has_surrogates(raw) else RawRow(line, raw, value)
            return row, _skip_ws(text, j + 1) if sep == "," else j, sep
        if "\n" in text[end:j]:  # the next element starts on a later line: only the comma is missing
            return RawRow(line, raw, value), j, "missing"
        err = "invalid JSON (unexpected text after the element)"
    nxt = _resync(text, i)
    return RawRow(line, text[i:nxt].rstrip(_WS + ",]"), error=err), nxt, None


def _json_array_rows(text: str, path: Path, notes: list[str] | None = None) -> Iterator[RawRow]:
    """One row per element; a broken element is one reject and reading resumes at the next one."""
    i = _skip_ws(text, 0)
    if i >= len(text):
        return
    if text[i] != "[":
        raise DataError(f"{path}: a .json file must hold one JSON array of rows; use .jsonl for one row per line")
    lines = _LineCounter(text)
    i = _skip_ws(text, i + 1)
    if text[i : i + 1] == "]":
        return
    missing_comma = False
    while i < len(text):
        row, i, sep = _element(text, i, lines.at(i))
        if missing_comma and row.error is None:
            row = RawRow(row.line, row.raw, error="invalid JSON (missing ',' before this element)")
        missing_comma = sep == "missing"
        yield row
        if sep == "]":
            return
    if notes is not None:
        notes.append(f"{path}: the JSON array is not closed with ']' (truncated file?)")


# --- CSV ---------------------------------------------------------------------


def _csv_rows(text: str, delimiter: str) -> Iterator[RawRow]:
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    lines = text.splitlines(keepends=True)
    reader = csv.reader(lines, delimiter=delimiter)
    header: list[str] | None = None
    prev_end = 0
    while True:
        try:
            rec = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            start, prev_end = prev_end + 1, reader.line_num
            yield RawRow(start, "".join(lines[start - 1 : prev_end]), error=f"invalid CSV ({e})")
            continue
        start, prev_end = prev_end + 1, reader.line_num
        if not rec or not any(f.strip() for f in rec):
            continue
        if header is None:
            header = [h.strip() for h in rec]
            continue
        raw = "".join(lines[start - 1 : prev_end]).rstrip("\r\n")
        yield _csv_record(start, raw, header, rec)


def _csv_record(line: int, raw: str, header: list[str], rec: list[str]) -> RawRow:
    if _has_surrogates(raw):
        return RawRow(line, raw, error="invalid UTF-8")
    if len(rec) != len(header):
        return RawRow(line, raw, error=f"CSV row has {len(rec)} fields, the header has {len(header)}")
    return RawRow(line, raw, dict(zip(header, rec, strict=True)))


# --- Parquet -----------------------------------------------------------------


def _parquet_rows(path: Path) -> Iterator[RawRow]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow: `pip install pyarrow`") from None
    if not path.is_file():
        raise DataError(f"{path}: file not found; check the path")
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises many types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    n = 0
    for batch in pf.iter_batches(batch_size=4096):
        for row in batch.to_pylist():
            n += 1
            yield RawRow(n, json.dumps(row, ensure_ascii=False, default=str), row)

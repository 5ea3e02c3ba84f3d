"""``sft data extract``: documents (.txt .md .html .pdf, files or folders) -> clean text chunks.

Each chunk is ``{"id": "<doc-stem>#p<page>-c<n>", "doc", "page", "text", "chars"}``: the id
names the page it came from, so every question drafted from it can be traced back to a page a
reviewer can open. Every input file is accounted for: it yields chunks or is listed in
``skipped`` with the reason (unreadable, not UTF-8, empty, a scanned PDF with no text layer).
Chunks that repeat an earlier one exactly (a disclaimer on every filing) are dropped and listed
in ``duplicates``, so the teacher is not asked about the same text twice.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftkit.core.errors import DataError
from sftkit.data.chunking import chunk_paragraphs
from sftkit.data.clean import normalize_chars, paragraphs, strip_page_furniture
from sftkit.data.docread import DOC_TYPES, Unusable, read_pages


@dataclass(slots=True)
class ExtractResult:
    """What ``extract`` produced and what it left out, with reasons."""

    chunks: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)  # {"path", "pages", "chunks", "removed_lines"}
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}
    duplicates: list[dict[str, str]] = field(default_factory=list)  # {"id", "same_as"}
    short: list[str] = field(default_factory=list)  # ids of chunks below min_chars (a lone heading)

    def summary(self) -> dict[str, Any]:
        return {"files": len(self.files), "chunks": len(self.chunks), "skipped": self.skipped,
                "duplicates": len(self.duplicates), "short": len(self.short),
                "chars": sum(c["chars"] for c in self.chunks)}


def find_documents(paths: Sequence[str | Path], skipped: list[dict[str, str]]) -> list[Path]:
    """The files named and every file under the folders named (sorted, so chunk order is
    stable). A missing path is recorded in ``skipped``; so is a file of another type in a folder."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            for f in sorted(x for x in p.rglob("*") if x.is_file()):
                if f.suffix.lower() in DOC_TYPES:
                    found.append(f)
                else:
                    skipped.append({"path": str(f), "reason": f"not a document type ({' '.join(DOC_TYPES)})"})
        elif p.is_file():
            found.append(p)
        else:
            skipped.append({"path": str(p), "reason": "no such file or folder"})
    return list(dict.fromkeys(found))


def doc_keys(files: list[Path]) -> dict[Path, str]:
    """The id prefix of each file: its stem, or (when two files share a stem) its path."""
    stems = [f.stem for f in files]
    return {f: f.stem if stems.count(f.stem) == 1 else re.sub(r"[\\/#]", "_", f.as_posix()) for f in files}


def check_sizes(size: int, overlap: int) -> None:
    if size < 50:
        raise DataError(f"--size {size}: a chunk must hold at least 50 characters (400-800 suits most teachers)")
    if not 0 <= overlap <= size // 2:
        raise DataError(f"--overlap {overlap}: must be between 0 and half the chunk size ({size // 2})")


def extract(paths: Sequence[str | Path], size: int = 400, overlap: int = 50, min_chars: int = 10) -> ExtractResult:
    """Read, clean, chunk and de-duplicate every document under ``paths``."""
    check_sizes(size, overlap)
    res = ExtractResult()
    files = find_documents(paths, res.skipped)
    keys = doc_keys(files)
    seen: dict[str, str] = {}  # normalised chunk text -> id of its first occurrence
    for f in files:
        try:
            pages = read_pages(f)
        except Unusable as e:
            res.skipped.append({"path": str(f), "reason": str(e)})
            continue
        chunks, removed = document_chunks(f, keys[f], pages, size, overlap)
        kept = [c for c in chunks if _keep(c, res, seen, min_chars)]
        if not kept:
            why = "an exact repeat of earlier text or too short" if chunks else "no text left after cleaning"
            res.skipped.append({"path": str(f), "reason": f"no chunk kept: {why}"})
            continue
        res.chunks.extend(kept)
        res.files.append({"path": str(f), "pages": len(pages), "chunks": len(kept), "removed_lines": removed})
    return res


def document_chunks(f: Path, key: str, pages: list[str], size: int, overlap: int
                    ) -> tuple[list[dict[str, Any]], list[str]]:
    """All chunks of one document, page by page (a chunk never spans two pages, so its page
    number is exact), and the header/footer lines removed."""
    pages, removed = strip_page_furniture([normalize_chars(p) for p in pages])
    out = []
    for page_no, text in enumerate(pages, 1):
        for n, chunk in enumerate(chunk_paragraphs(paragraphs(text), size, overlap), 1):
            out.append({"id": f"{key}#p{page_no}-c{n}", "doc": f.as_posix(), "page": page_no,
                        "text": chunk, "chars": len(chunk)})
    return out, removed


def _keep(chunk: dict[str, Any], res: ExtractResult, seen: dict[str, str], min_chars: int) -> bool:
    if chunk["chars"] < min_chars:
        res.short.append(chunk["id"])
        return False
    norm = re.sub(r"\s+", "", chunk["text"])
    if norm in seen:
        res.duplicates.append({"id": chunk["id"], "same_as": seen[norm]})
        return False
    seen[norm] = chunk["id"]
    return True

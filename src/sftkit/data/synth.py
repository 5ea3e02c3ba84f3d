"""``sft data synth``: a teacher model drafts question/answer pairs grounded in each chunk.

This is the guide's "模型生成+人工筛选" (a strong model drafts, people review): the drafts go
to ``sft data sample``/``review`` next. Each kept pair is a training row in the ``messages``
layout with its provenance, ``"meta": {"chunk", "doc", "page", "teacher"}``, and a stable id
``<chunk id>#q<k>``. Every draft that fails the grounding check (``sftkit.data.draft``) goes to
the rejects file with its reason, and so does a reply that could not be read, so every chunk is
either drafted or reported.

The teacher is any callable from a batch of chats to their replies (``Teacher``); the CLI builds
one from a model reference (the one generation ``Engine``) or an OpenAI-compatible URL
(``sftkit.infer.teacher``). Decoding is greedy, so a rerun drafts the same pairs. Rows are written
after every batch; ``resume=True`` skips the chunks a previous run already finished.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from sftkit.core.errors import DataError
from sftkit.data.draft import PROMPTS, build_messages, check_pair, parse_pairs, years
from sftkit.data.rows import read_records

Chat = list[dict[str, str]]


class Teacher(Protocol):
    """Answers a batch of chats, one reply per chat, in order."""

    name: str

    def __call__(self, chats: list[Chat]) -> list[str]: ...


@dataclass(slots=True)
class SynthResult:
    chunks: int = 0
    drafted: int = 0  # chunks with at least one kept pair
    pairs: int = 0
    rejected: int = 0
    resumed: int = 0  # chunks a previous run had finished
    reasons: Counter[str] = field(default_factory=Counter)
    empty: list[dict[str, str]] = field(default_factory=list)  # {"chunk", "reason"}: no pair kept

    def summary(self) -> dict[str, Any]:
        return {"chunks": self.chunks, "drafted": self.drafted, "pairs": self.pairs, "rejected": self.rejected,
                "resumed": self.resumed, "reasons": dict(self.reasons.most_common()), "empty": self.empty}


def load_chunks(path: str | Path) -> list[dict[str, Any]]:
    """The chunks ``sft data extract`` wrote; each needs an ``id`` and a ``text``."""
    chunks = []
    for line, obj in read_records(path, "chunks file"):
        if not isinstance(obj.get("id"), str) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
            raise DataError(f"{path}:{line}: a chunk needs a string 'id' and a non-empty 'text' "
                            "(write the file with sft data extract)")
        chunks.append(obj)
    if not chunks:
        raise DataError(f"{path}: no chunks in the file; run sft data extract on your documents first")
    return chunks


def _chunk_of(obj: dict[str, Any]) -> str | None:
    meta = obj.get("meta")
    return meta.get("chunk") if isinstance(meta, dict) else obj.get("chunk")


def finished_chunks(out: Path, rejects: Path, chunk_ids: set[str]) -> set[str]:
    """Chunks a previous run wrote to ``out`` or ``rejects``. A line cut off by a crash is dropped
    (its chunk is drafted again); a chunk id not among ``chunk_ids`` means the files came from
    another chunks file, which is refused rather than mixed."""
    done: set[str] = set()
    for path in (out, rejects):
        if not path.exists():
            continue
        raw = path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            path.write_bytes(raw[: raw.rfind(b"\n") + 1])
        for line, obj in read_records(path, "synth output"):
            cid = _chunk_of(obj)
            if cid not in chunk_ids:
                raise DataError(f"{path}:{line}: drafted from chunk {cid!r}, which is not in this chunks file; "
                                "resume only with the chunks file that run used, or choose another --out")
            done.add(cid)
    return done


def _rows(chunk: dict[str, Any], reply: str, teacher: str, min_support: float, system: str | None,
          doc_years: set[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Kept rows and rejects for one chunk's reply."""
    meta = {"chunk": chunk["id"], "doc": chunk.get("doc"), "page": chunk.get("page"), "teacher": teacher}
    pairs, error = parse_pairs(reply)
    if error:
        return [], [{**meta, "reason": error, "reply": reply}]
    kept, rejected, seen = [], [], set()
    for k, pair in enumerate(pairs, 1):
        why = check_pair(pair, chunk["text"], min_support, doc_years)
        if why is None and pair["question"] in seen:
            why = "the same question twice"
        if why:
            rejected.append({**meta, "reason": why, **pair})
            continue
        seen.add(pair["question"])
        msgs = [{"role": "system", "content": system}] if system else []
        msgs += [{"role": "user", "content": pair["question"]}, {"role": "assistant", "content": pair["answer"]}]
        kept.append({"id": f"{chunk['id']}#q{k}", "messages": msgs, "meta": meta})
    return kept, rejected


def _write(f: TextIO, rows: list[dict[str, Any]]) -> None:
    f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def check_settings(pairs: int, lang: str, min_support: float) -> None:
    """Refuse bad settings before a teacher model is loaded (which takes a while)."""
    if lang not in PROMPTS:
        raise DataError(f"--lang {lang!r}: use one of {', '.join(PROMPTS)}")
    if not 1 <= pairs <= 20:
        raise DataError(f"--pairs {pairs}: ask for 1 to 20 pairs per chunk")
    if not 0 <= min_support <= 1:
        raise DataError(f"--min-support {min_support}: a share between 0 and 1")


def synth(chunks: list[dict[str, Any]], teacher: Teacher, out: str | Path, rejects: str | Path, *,
          pairs: int = 3, lang: str = "zh", batch: int = 8, resume: bool = False, system: str | None = None,
          min_support: float = 0.3) -> SynthResult:
    """Draft ``pairs`` questions per chunk; kept rows to ``out``, rejected drafts to ``rejects``."""
    check_settings(pairs, lang, min_support)
    out, rejects = Path(out), Path(rejects)
    done = finished_chunks(out, rejects, {c["id"] for c in chunks}) if resume else set()
    res = SynthResult(chunks=len(chunks), resumed=len(done))
    todo = [c for c in chunks if c["id"] not in done]
    doc_years: dict[Any, set[str]] = {}
    for c in chunks:
        doc_years.setdefault(c.get("doc"), set()).update(years(c["text"]))
    mode = "a" if resume else "w"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open(mode, encoding="utf-8") as fo, rejects.open(mode, encoding="utf-8") as fr:
        for start in range(0, len(todo), batch):
            part = todo[start : start + batch]
            replies = teacher([build_messages(c, pairs, lang) for c in part])
            for chunk, reply in zip(part, replies, strict=True):
                kept, rejected = _rows(chunk, reply, teacher.name, min_support, system, doc_years[chunk.get("doc")])
                _write(fo, kept)
                _write(fr, rejected)
                _account(res, chunk, kept, rejected)
            fo.flush()
            fr.flush()
    return res


def _account(res: SynthResult, chunk: dict[str, Any], kept: list[dict[str, Any]], rejected: list[dict[str, Any]]
             ) -> None:
    res.pairs += len(kept)
    res.rejected += len(rejected)
    res.reasons.update(r["reason"].split(":")[0] for r in rejected)
    if kept:
        res.drafted += 1
    else:
        why = rejected[0]["reason"] if rejected else "the teacher drafted nothing"
        res.empty.append({"chunk": chunk["id"], "reason": why})

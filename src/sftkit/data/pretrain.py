"""Continued pre-training data (``stage: pt``): plain documents -> fixed-length token blocks.

* **Rows.** ``.txt``: one document per line (blank lines are not rows, as in the SFT readers;
  a line that is not UTF-8 is a reject). JSONL/JSON/CSV/TSV/Parquet: the ``text`` field of each
  row (``column=`` for another name), read by the SFT loader in its ``text`` layout, so a
  missing, empty or non-string ``text`` is a reject with file:line like any SFT row.
* **Tokens.** No chat template: each document is tokenized on its own (in batches, by the
  fast tokenizer's Rust encoder), preceded by BOS when the tokenizer adds one to a lone text
  (Llama-style), and followed by EOS so the model learns where documents end.
* **Blocks.** Documents are concatenated and cut into blocks of exactly ``cutoff_len``
  tokens; loss is on every token (labels = input_ids). A document longer than a block
  continues in the next one. The last, partial block is kept by default (``drop_last=False``):
  LLaMA-Factory and HF's ``run_clm`` drop it, but on a small corpus that can be most of the
  data (or all of it), and the collator only has to pad that one block. With
  ``drop_last=True`` its tokens are dropped and counted in the report. Either way the report
  accounts for every token: ``tokens`` == the blocks' lengths summed + ``dropped_tokens``.

A document whose own text holds a special token's string (a literal ``<|im_end|>``) is
tokenized to that token, as every HF tokenizer does; such documents are counted in the report
(``special_token_text``), not changed.

Packed blocks let attention cross document boundaries (as LLaMA-Factory and ``run_clm`` do);
``position_ids`` gives positions that restart after each EOS, for a collator that wants
block-diagonal attention instead.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

from sftkit.core.conversation import Conversation
from sftkit.core.errors import DataError
from sftkit.data.load import load_file
from sftkit.data.types import LoadResult, OnError, Reject
from sftkit.data.validate import enforce

ENCODE_BATCH = 1024  # documents per tokenizer call: big enough for the Rust encoder to use every core


def _txt_lines(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """``(line number, text, error)`` for each non-blank line."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the path") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e}); check permissions") from None
    for i, bline in enumerate(data.removeprefix(b"\xef\xbb\xbf").splitlines(), start=1):
        if not bline.strip():
            continue
        try:
            yield i, bline.decode("utf-8"), None
        except UnicodeDecodeError as e:
            yield i, bline.decode("utf-8", errors="surrogateescape"), f"invalid UTF-8 (byte {e.start})"


def _load_txt(path: Path) -> LoadResult:
    docs: list[Conversation] = []
    rejects: list[Reject] = []
    total = 0
    for line, text, err in _txt_lines(path):
        total += 1
        if err is not None:
            rejects.append(Reject(str(path), line, err, text))
        else:
            docs.append(Conversation(text=text, source=f"{path}:{line}"))
    return LoadResult(docs, rejects, total, "text", str(path), "txt")


def load_text_file(
    path: str | Path, column: str = "text", *, file_type: str | None = None, on_error: OnError = "skip"
) -> LoadResult:
    """One file's documents (``Conversation`` s with ``text``) and rejects; ``.txt`` is one
    document per line, any other data file is read for its ``column`` field."""
    p = Path(path)
    if file_type == "txt" or (file_type is None and p.suffix.lower() == ".txt"):
        res = _load_txt(p)
        enforce(res, on_error)
        return res
    columns = None if column == "text" else {"text": column}
    return load_file(p, "text", columns, file_type=file_type, on_error=on_error)


def _adds_bos(tokenizer: Any) -> int | None:
    """The BOS id when the tokenizer puts one before a lone text (Llama-style), else ``None``."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer(["x"], add_special_tokens=True)["input_ids"][0]
    return bos if ids and ids[0] == bos else None


def _encode(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    rust = getattr(tokenizer, "_tokenizer", None)
    # the raw encoder only when tokenizer.json itself sets no truncation/padding (which it would apply silently)
    if rust is not None and hasattr(rust, "encode_batch") and not rust.truncation and not rust.padding:
        return [e.ids for e in rust.encode_batch(texts, add_special_tokens=False)]
    return [list(x) for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def tokenize_documents(texts: Sequence[str], tokenizer: Any) -> list[list[int]]:
    """Each document's ids: [BOS] + text + EOS (BOS only when the tokenizer adds one)."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise DataError(
            "the tokenizer has no EOS token, so documents cannot be separated; use a model whose "
            "tokenizer defines eos_token"
        )
    head = [b] if (b := _adds_bos(tokenizer)) is not None else []
    out: list[list[int]] = []
    for i in range(0, len(texts), ENCODE_BATCH):
        out += [[*head, *ids, eos] for ids in _encode(tokenizer, list(texts[i : i + ENCODE_BATCH]))]
    return out


@dataclass(slots=True)
class Packed:
    """Blocks of ``cutoff_len`` tokens (the last one shorter unless dropped)."""

    blocks: list[list[int]]
    tokens: int
    dropped_tokens: int = 0

    @property
    def last_block_tokens(self) -> int:
        return len(self.blocks[-1]) if self.blocks else 0


def pack(docs: Sequence[Sequence[int]], cutoff_len: int, drop_last: bool = False) -> Packed:
    """Concatenate the documents' ids and cut them into ``cutoff_len`` blocks."""
    if cutoff_len < 1:
        raise DataError(f"cutoff_len must be at least 1 for pre-training blocks, got {cutoff_len}")
    flat = list(chain.from_iterable(docs))
    n = len(flat)
    end = n - n % cutoff_len if drop_last else n
    blocks = [flat[i : i + cutoff_len] for i in range(0, end, cutoff_len)]
    return Packed(blocks, n, n - end)


def position_ids(block: Sequence[int], eos_id: int) -> list[int]:
    """Positions restarting after every EOS: with these and no attention mask, transformers
    keeps each document's attention to itself inside a packed block."""
    out, pos = [], 0
    for t in block:
        out.append(pos)
        pos = 0 if t == eos_id else pos + 1
    return out


@dataclass
class PretrainData:
    blocks: list[list[int]]
    rejects: list[Reject]
    report: dict[str, Any] = field(default_factory=dict)


def special_token_text(docs: Sequence[Sequence[int]], sources: Sequence[str | None], tokenizer: Any) -> list[str]:
    """Sources of documents whose own text tokenized to a special token: tokenizers read a
    literal ``<|im_end|>`` in the text as the token itself, so such a page would carry an EOS
    (or a turn marker) in its middle. Reported, not changed: it may be on purpose."""
    special = set(getattr(tokenizer, "all_special_ids", None) or [])
    lead = 1 if _adds_bos(tokenizer) is not None else 0
    return [src or "?" for ids, src in zip(docs, sources, strict=True) if not special.isdisjoint(ids[lead:-1])]


def prepare_pretrain(
    paths: Sequence[str | Path],
    tokenizer: Any,
    cutoff_len: int,
    *,
    column: str = "text",
    drop_last: bool = False,
    on_error: OnError = "skip",
) -> PretrainData:
    """Read every file, tokenize every document, pack the blocks; the report counts rows per
    file, documents, tokens, blocks and the tokens of the last block (kept or dropped)."""
    loads = [load_text_file(p, column, on_error=on_error) for p in paths]
    convs = [c for res in loads for c in res.conversations]
    rejects = [r for res in loads for r in res.rejects]
    if not convs:
        first = f" (first: {rejects[0].where}: {rejects[0].reason})" if rejects else ""
        raise DataError(f"no usable document in {', '.join(map(str, paths))}: {len(rejects)} row(s) rejected{first}")
    ids = tokenize_documents([c.text or "" for c in convs], tokenizer)
    flagged = special_token_text(ids, [c.source for c in convs], tokenizer)
    packed = pack(ids, cutoff_len, drop_last)
    if not packed.blocks:
        raise DataError(
            f"the documents hold {packed.tokens} tokens, less than one block of cutoff_len={cutoff_len}, "
            "and drop_last drops the partial block; lower cutoff_len or keep the last block"
        )
    report = {
        "files": [
            {"path": r.path, "format": r.file_type, "total": r.total, "valid": r.valid, "rejected": r.rejected}
            for r in loads
        ],
        "documents": len(convs),
        "rejected": len(rejects),
        "tokens": packed.tokens,
        "cutoff_len": cutoff_len,
        "blocks": len(packed.blocks),
        "last_block_tokens": packed.last_block_tokens,
        "dropped_tokens": packed.dropped_tokens,
        "special_token_text": {"documents": len(flagged), "first": flagged[:5]},
    }
    return PretrainData(packed.blocks, rejects, report)

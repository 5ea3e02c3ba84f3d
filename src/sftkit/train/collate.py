"""Examples -> batches: padding collator, and contamination-free packing.

Packing concatenates several examples into one row of at most ``max_len`` tokens.
Position ids restart at 0 for each example and neither an attention mask nor a KV
cache is used, which makes transformers build a block-diagonal causal mask
(sdpa/eager/flash): a token only ever attends to its own example. The first label of every example is masked,
so no example is trained to predict its start from its neighbour's end.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sftkit.templates.render import IGNORE, Rendered

Row = dict[str, list[int]]


class Examples:
    """A sized, indexable dataset of rows as the Trainer expects them."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    @classmethod
    def from_rendered(cls, examples: Sequence[Rendered]) -> Examples:
        return cls([{"input_ids": e.input_ids, "labels": e.labels} for e in examples])

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> Row:
        return self.rows[i]


def pack(examples: Sequence[Rendered], max_len: int) -> Examples:
    """First-fit-decreasing bins of at most ``max_len`` tokens (deterministic)."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(examples[i].input_ids)
        slot = next((b for b, free in enumerate(room) if free >= n), None)
        if slot is None:
            bins.append([i])
            room.append(max_len - n)
        else:
            bins[slot].append(i)
            room[slot] -= n
    rows = []
    for members in bins:
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for i in sorted(members):  # original order inside a row: reproducible, easy to inspect
            e = examples[i]
            ids += e.input_ids
            labels += [IGNORE, *e.labels[1:]]
            pos += list(range(len(e.input_ids)))
        rows.append({"input_ids": ids, "labels": labels, "position_ids": pos})
    return Examples(rows)


class Collator:
    """Right-pads a batch to its longest row (rounded up to a multiple of 8).

    Unpacked rows get an attention mask; packed rows get position ids instead (and
    no mask, see the module docstring). Padding is never trained.
    """

    def __init__(self, pad_id: int, multiple: int = 8) -> None:
        self.pad_id = pad_id
        self.multiple = multiple

    def __call__(self, rows: list[Row]) -> dict[str, Any]:
        import torch

        n = max(len(r["input_ids"]) for r in rows)
        n = -(-n // self.multiple) * self.multiple
        ids = torch.full((len(rows), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), n), IGNORE, dtype=torch.long)
        packed = "position_ids" in rows[0]
        extra = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            k = len(r["input_ids"])
            ids[i, :k] = torch.tensor(r["input_ids"])
            labels[i, :k] = torch.tensor(r["labels"])
            if packed:
                extra[i, :k] = torch.tensor(r["position_ids"])
                extra[i, k:] = torch.arange(n - k)  # padding: a segment of its own
            else:
                extra[i, :k] = 1
        out: dict[str, Any] = {"input_ids": ids, "labels": labels}
        out["position_ids" if packed else "attention_mask"] = extra
        if packed:
            # transformers only derives the block-diagonal mask from position ids when no
            # KV cache exists; with use_cache on it silently builds a plain causal mask.
            out["use_cache"] = False
        return out


class FlatCollator:
    """Padding-free batches for flash attention: the rows of a batch become one row.

    transformers' flash-attention path treats a batch as packed sequences only when it
    is a single row whose position ids restart (``_is_packed_sequence``); a batch of
    several packed rows would let examples inside a row attend to each other. So the
    batch is concatenated, position ids restart per row (packed rows keep their own),
    and the first label of every row is masked (no row learns its start from the
    previous row's end). sdpa/eager get the same block-diagonal mask from the
    position ids, which is how this is tested on CPU.
    """

    def __init__(self, pad_id: int, multiple: int = 8, seq_lens: bool = False) -> None:
        self.inner = Collator(pad_id, multiple)
        self.seq_lens = seq_lens

    def __call__(self, rows: list[Row]) -> dict[str, Any]:
        flat: Row = {"input_ids": [], "labels": [], "position_ids": []}
        for r in rows:
            flat["input_ids"] += r["input_ids"]
            flat["labels"] += [IGNORE, *r["labels"][1:]]
            flat["position_ids"] += r.get("position_ids") or list(range(len(r["input_ids"])))
        out = self.inner([flat])
        if self.seq_lens:
            out.update(seq_len_kwargs(out["position_ids"][0].tolist()))
        return out


def seq_len_kwargs(pos: list[int]) -> dict[str, Any]:
    """Example boundaries of one flat row as the varlen kernels take them (transformers' flash-attention
    kwargs): computed here on the CPU so the GPU never waits for them."""
    import torch

    starts = [i for i, p in enumerate(pos) if p == 0] or [0]
    if starts[0] != 0:
        starts.insert(0, 0)
    cu = torch.tensor([*starts, len(pos)], dtype=torch.int32)
    longest = int((cu[1:] - cu[:-1]).max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}

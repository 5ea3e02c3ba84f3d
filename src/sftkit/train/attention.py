"""Segment attention: exact attention for packed and right-padded training batches, at the cost of the
real sequences only.

A packed row holds several examples; position ids restart at 0 where each one begins (see
``sftkit.train.collate``). transformers' ``sdpa`` path turns that into a block-diagonal 4-D mask and the CPU
kernel then computes every query against every key of the row: the cost of one 1,024-token sequence,
whatever the examples' lengths. Here each example runs as its own causal SDPA call
(``is_causal=True``), so a row of examples of lengths L1..Ln costs about sum(Li^2)/2 instead of
(sum Li)^2, and no mask is read. The result equals the block-diagonal mask's (tested). On a CPU a segment
runs through ``sftkit.train.blockattn`` (exact, 1.6-2x faster than torch's CPU flash kernel at these
lengths) unless it is too long for that one's memory bound or attention dropout is on.

Only the training forward takes this path (``module.training``, queries as long as keys, position ids
given). Evaluation and generation, where batches may be left-padded or use a KV cache, go to
transformers' ``sdpa`` function with the mask it built. Training batches come from sftkit's collators:
packed rows, or rows padded on the right, where causal attention never reaches the padding.

Registered under the name ``NAME`` with transformers' attention and mask interfaces; ``supports()``
says whether a model's attention is plain enough (no sliding window, soft-capping or sinks).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

NAME = "sftkit_segments"
# Families whose attention is plain scaled-dot-product (checked against sdpa in the tests).
_FAMILIES = {"llama", "qwen2", "qwen3", "mistral"}


def _segment_lengths(pos: list[int]) -> list[int]:
    """Lengths of the runs that start where a position id is 0 (and at index 0)."""
    starts = [i for i, p in enumerate(pos) if p == 0 and i > 0]
    bounds = [0, *starts, len(pos)]
    return [b - a for a, b in pairwise(bounds)]


def segment_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                      scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """transformers' attention-function signature: q [B,H,T,D], k/v [B,Hkv,T,D] -> ([B,T,H,D], None)."""
    import torch
    from torch.nn.functional import scaled_dot_product_attention as sdpa
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from sftkit.train import blockattn

    position_ids = kwargs.get("position_ids")
    if not module.training or position_ids is None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    gqa = query.shape[1] != key.shape[1]
    batch = query.shape[0]
    pos = position_ids.expand(batch, -1).tolist()
    device = query.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    blocks = device == "cpu" and not dropout

    def one(q: Any, k: Any, v: Any) -> Any:  # one causal sequence: [H, L, D] -> [H, L, D]
        if blocks and blockattn.fits(q.shape[0], q.shape[1], dtype):
            return blockattn.attention(q, k, v, scale, dtype)
        return sdpa(q[None], k[None], v[None], dropout_p=dropout, is_causal=True, scale=scale, enable_gqa=gqa)[0]

    if not blocks and all(len(_segment_lengths(p)) == 1 for p in pos):  # unpacked, right-padded rows: one call
        out = sdpa(query, key, value, dropout_p=dropout, is_causal=True, scale=scale, enable_gqa=gqa)
        return out.transpose(1, 2).contiguous(), None
    rows = []
    for q, k, v, p in zip(query.unbind(0), key.unbind(0), value.unbind(0), pos, strict=True):
        lengths = _segment_lengths(p)
        parts = [one(qs, ks, vs) for qs, ks, vs in zip(q.split(lengths, 1), k.split(lengths, 1),
                                                         v.split(lengths, 1), strict=True)]
        rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))
    return torch.stack(rows).transpose(1, 2).contiguous(), None


def register() -> str:
    """Make ``NAME`` a valid ``attn_implementation`` (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, segment_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # evaluation and generation fall back to sdpa with it
    return NAME


def supports(config: Any, max_len: int) -> bool:
    """True when the model family's attention is plain causal SDPA for sequences up to ``max_len``."""
    if getattr(config, "model_type", None) not in _FAMILIES:
        return False
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and window < max_len:
        return False
    return not any(getattr(config, k, None) for k in ("attn_logit_softcapping", "sliding_window_pattern"))

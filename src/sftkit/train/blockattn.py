"""Exact causal attention for one training sequence on a CPU, in blocks of query rows.

torch's CPU flash kernel is made for long sequences: on the segments of a packed SFT batch (a few dozen to a
thousand tokens) its backward pass costs three times its forward, and per segment it was 1.6-2x slower than
this plain computation (bundled model shape, 9 query and 3 key/value heads of 64, bf16, fwd+bwd, best of
15: 5.2 vs 3.2 ms at 256 tokens, 17.2 vs 8.7 ms at 512, 41.0 vs 24.0 ms at 1,024).

``BlockAttention`` walks the queries in blocks of ``ROWS`` rows. Block [r0, r1) sees keys [0, r1) only (the
rest are in its causal future), so each block's softmax is the whole row's, exactly; scores are fp32, the
probabilities are kept in the compute dtype for the backward pass. Grouped-query attention never repeats
the keys and values: the query heads of one key/value head are one batch of rows against it.

Memory: the kept probabilities are about heads x L (L + ROWS) / 2 values per layer (1.8 MB for the bundled
model at L = 256, 11 MB at 1,024; counted by ``sftkit.estimate.memory.block_probs_bytes``, which the
estimate of a CPU run uses too). ``fits`` bounds them per call (``MAX_KEPT_BYTES``); longer segments,
attention dropout and non-CPU tensors go to torch's SDPA (``sftkit.train.attention`` decides).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch

from sftkit.estimate.memory import BLOCK_MAX_KEPT_BYTES, BLOCK_ROWS, block_probs_bytes

ROWS = BLOCK_ROWS  # query rows per block: a block's scores stay in the cores' caches (best of 64/128/256)
MAX_KEPT_BYTES = BLOCK_MAX_KEPT_BYTES  # the probabilities kept for the backward pass, per call


def fits(heads: int, length: int, dtype: torch.dtype) -> bool:
    """Whether a segment's kept probabilities (``block_probs_bytes``, the estimator's own count) stay within
    ``MAX_KEPT_BYTES``."""
    return block_probs_bytes(heads, length, torch.empty((), dtype=dtype).element_size()) <= MAX_KEPT_BYTES


@lru_cache(maxsize=8)
def _future(rows: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """-inf above the diagonal, 0 elsewhere: added to a block's own keys, it hides each query's future (an
    add runs several times faster on a CPU than a bool ``masked_fill``)."""
    return torch.full((rows, rows), float("-inf"), dtype=dtype, device=device).triu_(1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, dtype: torch.dtype) -> torch.Tensor:
    """Causal attention of one sequence: q [H, L, D], k/v [Hkv, L, D] (H a multiple of Hkv) -> [H, L, D] in
    ``dtype`` (the compute dtype: autocast's, or the inputs')."""
    return BlockAttention.apply(q, k, v, scale, dtype)


class BlockAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                dtype: torch.dtype) -> torch.Tensor:
        heads, length, dim = q.shape
        kv = k.shape[0]
        group = heads // kv
        q0, k0, v0 = q.to(dtype), k.to(dtype), v.to(dtype)  # kept in the compute dtype, as SDPA under autocast
        qs = (q0 * scale).reshape(kv, group, length, dim)
        future = _future(ROWS, dtype, q.device)
        out = torch.empty(kv, group, length, dim, dtype=dtype, device=q0.device)
        probs = []
        for r0 in range(0, length, ROWS):
            r1 = min(length, r0 + ROWS)
            n = r1 - r0
            # the product is already rounded to ``dtype``; softmax computes in fp32 and rounds once at the end
            scores = torch.bmm(qs[:, :, r0:r1].reshape(kv, group * n, dim), k0[:, :r1].transpose(1, 2))
            scores.view(kv, group, n, r1)[..., r0:].add_(future[:n, :n])  # keys before r0 are all visible
            p = torch.softmax(scores, dim=-1)
            out[:, :, r0:r1] = torch.bmm(p, v0[:, :r1]).view(kv, group, n, dim)
            probs.append(p)
        ctx.save_for_backward(q0, k0, v0, out, *probs)
        ctx.scale, ctx.dtype, ctx.in_dtypes = scale, dtype, (q.dtype, k.dtype, v.dtype)
        return out.view(heads, length, dim)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        q0, k0, v0, out, *probs = ctx.saved_tensors
        dtype = ctx.dtype
        heads, length, dim = q0.shape
        kv = k0.shape[0]
        group = heads // kv
        go = grad.to(dtype).reshape(kv, group, length, dim)
        q0 = q0.reshape(kv, group, length, dim)
        delta = (go.float() * out.float()).sum(-1, keepdim=True)  # rowsum(dO * O): softmax's backward term
        dq = torch.empty(kv, group, length, dim, dtype=dtype, device=q0.device)
        dk = torch.zeros(kv, length, dim, dtype=torch.float32, device=q0.device)
        dv = torch.zeros(kv, length, dim, dtype=torch.float32, device=q0.device)
        for i, r0 in enumerate(range(0, length, ROWS)):
            r1 = min(length, r0 + ROWS)
            n = r1 - r0
            p = probs[i]
            gob = go[:, :, r0:r1].reshape(kv, group * n, dim)
            dv[:, :r1] += torch.bmm(p.transpose(1, 2), gob)
            ds = torch.bmm(gob, v0[:, :r1].transpose(1, 2))  # dP, rounded to ``dtype`` as the scores were
            ds.view(kv, group, n, r1).sub_(delta[:, :, r0:r1]).mul_(p.view(kv, group, n, r1))  # dS = P (dP - delta)
            dq[:, :, r0:r1] = torch.bmm(ds, k0[:, :r1]).view(kv, group, n, dim)
            dk[:, :r1] += torch.bmm(ds.transpose(1, 2), q0[:, :, r0:r1].reshape(kv, group * n, dim))
        qd, kd, vd = ctx.in_dtypes
        return (dq.mul_(ctx.scale).view(heads, length, dim).to(qd), dk.mul_(ctx.scale).to(kd), dv.to(vd), None, None)

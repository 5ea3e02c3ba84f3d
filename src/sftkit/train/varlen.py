"""``sftkit_varlen``: PyTorch's own variable-length flash attention for padding-free batches (CUDA).

A padding-free batch (``FlatCollator``) is the batch's examples concatenated into one row, position ids
restarting at 0 where each example begins. Here those restarts become ``cu_seqlens`` and
``torch.nn.attention.varlen.varlen_attn`` (flash kernels inside torch, no flash-attn package) runs every
example as its own causal sequence in one kernel call: no padding, no [T x T] mask, no per-example loop.

``varlen_attn``'s signature changed between torch releases (causality as ``is_causal=True`` or as
``window_size=(-1, 0)``; ``enable_gqa`` and ``scale`` present or not); ``_call`` adapts to the one installed:
kv heads are repeated when grouped-query attention is not accepted, and the scale is folded into the
queries when it cannot be passed. ``probe`` runs the kernel once on the device against per-example causal
sdpa, forward and backward; ``sftkit.train.plan.confirm_attention`` falls back to sdpa when it fails.

The kernel only exists on CUDA: the CPU tests substitute a reference kernel with torch's signature
(``KERNEL``) to check the wiring (boundaries, shapes, grouped heads, scale, fallbacks) against sdpa.
Evaluation with a padding mask and generation (queries shorter than keys) go to transformers' sdpa.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

NAME = "sftkit_varlen"
KERNEL: Callable[..., Any] | None = None  # None: torch.nn.attention.varlen.varlen_attn (tests substitute one)
_LAST: dict[str, Any] = {}  # the last boundaries: {"of": weakref to position_ids, "cu": ..., "longest": ...}


def kernel() -> Callable[..., Any]:
    if KERNEL is not None:
        return KERNEL
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn


def cu_seqlens(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Example boundaries of flattened rows: where a position id is 0 (and where each row starts).

    Every layer receives the same position_ids tensor, so the boundaries are computed once per forward
    (one host sync for the longest example) and reused while that tensor lives."""
    if _LAST and _LAST["of"]() is position_ids:
        return _LAST["cu"], _LAST["longest"]
    rows, length = position_ids.reshape(-1, position_ids.shape[-1]).shape
    flat = position_ids.reshape(-1)
    starts = (flat == 0).nonzero().flatten()
    row_starts = torch.arange(rows, device=flat.device) * length  # a row never continues the previous one
    bounds = torch.cat([starts, row_starts, torch.tensor([flat.numel()], device=flat.device)])
    cu = torch.unique(bounds).to(torch.int32)  # sorted, deduplicated
    longest = int((cu[1:] - cu[:-1]).max())
    _LAST.update(of=weakref.ref(position_ids), cu=cu, longest=longest)
    return cu, longest


def _call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, longest: int,
          scale: float) -> torch.Tensor:
    """Causal varlen attention on [T, H, D] tensors with whatever signature this torch has."""
    fn = kernel()
    params = inspect.signature(fn).parameters
    kw: dict[str, Any] = {}
    if "is_causal" in params:
        kw["is_causal"] = True
    elif "window_size" in params:
        kw["window_size"] = (-1, 0)  # causal in torch >= 2.10
    else:
        raise TypeError("this torch's varlen_attn takes neither is_causal nor window_size")
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            kw["enable_gqa"] = True
        else:
            groups = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    if "scale" in params:
        kw["scale"] = scale
    elif abs(scale * q.shape[-1] ** 0.5 - 1) > 1e-6:
        q = q * (scale * q.shape[-1] ** 0.5)  # the kernel's own scale is 1/sqrt(D)
    return fn(q, k, v, cu, cu, longest, longest, **kw)


def _compute_dtype(q: torch.Tensor) -> torch.dtype:
    dev = q.device.type
    if q.dtype == torch.float32 and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return q.dtype


def varlen_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: Any, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: q [B,H,T,D], k/v [B,Hkv,T,D] -> ([B,T,H,D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    if attention_mask is not None or position_ids is None or query.shape[2] != key.shape[2]:
        # padded evaluation, generation with a cache: transformers' sdpa with the mask it built
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    batch, heads, length, dim = query.shape
    scale = scaling or dim**-0.5
    cu, longest = _boundaries(position_ids, batch, kwargs)
    dtype = _compute_dtype(query)
    if dropout or (KERNEL is None and dtype not in (torch.bfloat16, torch.float16)):
        return _block_diagonal(query, key, value, cu, dropout, scale), None  # exact, without the kernel

    def flat(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(batch * length, x.shape[1], dim).to(dtype)

    out = _call(flat(query), flat(key), flat(value), cu, longest, scale)
    return out.reshape(batch, length, heads, dim), None


def _boundaries(position_ids: torch.Tensor, batch: int, kwargs: dict[str, Any]) -> tuple[torch.Tensor, int]:
    cu = kwargs.get("cu_seq_lens_q")
    if cu is not None and kwargs.get("max_length_q") is not None and batch == 1:
        return cu.to(torch.int32), int(kwargs["max_length_q"])  # from the collator: no host sync
    return cu_seqlens(position_ids.expand(batch, -1) if position_ids.shape[0] != batch else position_ids)


def _block_diagonal(query, key, value, cu, dropout, scale) -> torch.Tensor:
    """fp32 (flash kernels are 16-bit) or attention dropout: sdpa with the block-diagonal causal mask."""
    batch, _, length, _ = query.shape
    seg = torch.zeros(batch * length, dtype=torch.int32, device=query.device)
    seg[cu[1:-1].long()] = 1
    seg = seg.cumsum(0).view(batch, length)
    causal = torch.ones(length, length, dtype=torch.bool, device=query.device).tril()
    mask = (seg[:, :, None] == seg[:, None, :]) & causal
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask[:, None], dropout_p=dropout,
                                         scale=scale, enable_gqa=query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous()


def _mask(*args: Any, **kwargs: Any) -> Any:
    """No mask for padding-free rows (the kernel reads the boundaries); sdpa's mask when there is padding."""
    from transformers.masking_utils import sdpa_mask

    if kwargs.get("attention_mask") is None:
        return None
    return sdpa_mask(*args, **kwargs)


def register() -> str:
    """Make ``NAME`` a valid ``attn_implementation`` (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, varlen_attention)
    AttentionMaskInterface.register(NAME, _mask)
    return NAME


def _reference(q, k, v, lengths, scale):
    """Each example as its own causal sdpa call ([T, H, D] in, fp32 compute)."""
    outs = []
    for qs, ks, vs in zip(q.split(lengths), k.split(lengths), v.split(lengths), strict=True):
        o = F.scaled_dot_product_attention(qs.transpose(0, 1).float(), ks.transpose(0, 1).float(),
                                           vs.transpose(0, 1).float(), is_causal=True, scale=scale,
                                           enable_gqa=qs.shape[1] != ks.shape[1])
        outs.append(o.transpose(0, 1))
    return torch.cat(outs)


def probe(device: Any, dtype: str = "bfloat16") -> str | None:
    """None when the kernel gives per-example causal attention on ``device`` (values and gradients of
    q, k, v, grouped kv heads, a non-default scale); else what went wrong, in one line."""
    gen = torch.Generator().manual_seed(0)
    lengths = [5, 17, 1, 9]
    shape = (sum(lengths), 4, 64)
    dt = getattr(torch, dtype)
    try:
        q, k, v = (torch.randn(shape if i == 0 else (shape[0], 2, 64), generator=gen) for i in range(3))
        grad = torch.randn(shape, generator=gen)
        pos = torch.cat([torch.arange(n) for n in lengths])[None].to(device)
        cu, longest = cu_seqlens(pos)
        leaves = [t.to(device, dt).requires_grad_() for t in (q, k, v)]
        out = _call(*leaves, cu, longest, 0.1)
        out.backward(grad.to(device, dt))
        refs = [t.detach().float().requires_grad_() for t in (q, k, v)]
        want = _reference(*refs, lengths, 0.1)
        want.backward(grad)
    except Exception as e:  # noqa: BLE001 - any failure means: do not use this kernel here
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}".rstrip(": ")
    worst = max((a.float().cpu() - b).abs().max().item() for a, b in
                zip([out, *(t.grad for t in leaves)], [want, *(t.grad for t in refs)], strict=True))
    tol = 2e-3 if dt == torch.float32 else 5e-2
    return None if worst <= tol else f"differs from causal sdpa by {worst:.3g} (tolerance {tol})"

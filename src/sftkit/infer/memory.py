"""How many prompts one generation batch may hold on the device, and what running out looks like.

The batch size is the smaller of what the caller allows (``batch_size``), the limit learned from an
out-of-memory error (halved each time), and what the free memory holds for the KV cache::

    KV bytes per token = layers x kv_heads x head_dim x 2 (keys and values) x dtype bytes
    tokens per row     = longest prompt in the batch + max_new_tokens
    rows               = floor(KV_SHARE x free bytes / (KV bytes per token x tokens per row))

``KV_SHARE`` keeps the other half of the free memory for the prefill's activations and the
allocator's slack; where that misjudges, the out-of-memory halving corrects it. Example: a 7B Llama
(32 layers, 8 kv heads of 128, bf16) needs 128 KiB per token; with 40 GB free and rows of
512 + 256 tokens, 0.5 x 40e9 / (131072 x 768) = 198 rows. On the CPU there is no memory cap:
``batch_size`` decides.
"""

from __future__ import annotations

from typing import Any

import torch

KV_SHARE = 0.5


def kv_bytes_per_token(model: Any) -> int | None:
    """Bytes the KV cache holds per token for ``model`` (None when its config does not say)."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    try:
        layers = int(text.num_hidden_layers)
        heads = int(text.num_attention_heads)
        kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    except (AttributeError, TypeError, ValueError):
        return None
    try:
        itemsize = next(model.parameters()).element_size()
    except (StopIteration, AttributeError):
        itemsize = 4
    return layers * kv_heads * head_dim * 2 * itemsize


def free_bytes(device: torch.device) -> int | None:
    """Memory this process can still allocate on ``device``: the driver's free memory plus what
    PyTorch's allocator holds but does not use. None on the CPU (no cap)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type == "mps":
        return int(torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory())
    return None


def rows_that_fit(free: int | None, per_token: int | None, tokens_per_row: int, limit: int) -> int:
    """The formula of the module docstring, at least 1 and at most ``limit``."""
    if not free or not per_token or tokens_per_row < 1:
        return max(1, limit)
    return max(1, min(limit, int(KV_SHARE * free // (per_token * tokens_per_row))))


def is_oom(e: BaseException) -> bool:
    """CUDA's ``torch.OutOfMemoryError`` (``torch.cuda.OutOfMemoryError``), or MPS's RuntimeError saying so."""
    return isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e))


def release(device: torch.device) -> None:
    """Hand the failed batch's cached blocks back before the retry."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()

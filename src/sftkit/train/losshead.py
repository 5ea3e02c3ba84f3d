"""A causal-LM loss head that never holds the [tokens x vocab] logits in full.

The plain head computes ``logits = lm_head(hidden)`` for every position, upcasts them to fp32 and runs
cross-entropy: for SmolLM2 (V=49,152) a batch of 8,192 tokens is 1.6 GB of fp32 logits plus as much again
for their gradient, and on SFT data most of those rows are prompt tokens whose loss is masked anyway.

``linear_cross_entropy`` instead
1. keeps only the rows whose label is not ``ignore_index`` (the prompt never reaches the head), then
2. walks those rows in chunks of ``chunk_tokens``: logits in the compute dtype (as ``lm_head`` would make
   them), upcast to fp32, loss = -log_softmax(logits)[target], and
3. forms the gradients of the same chunk while its logits are at hand (``softmax - onehot`` times ``W`` for
   the hidden states, its transpose times ``h`` into an fp32 ``grad_W``), so the backward only scales them.
   ``recompute=True`` keeps nothing but the inputs and redoes the chunks in the backward instead (one more
   matmul, no ``grad_W``-sized buffer between forward and backward).

Peak extra memory is one chunk of logits (a few copies of ``chunk_tokens x V`` fp32) plus, between forward
and backward, ``grad_h`` (trained rows x H) and, only when the head weight trains, an fp32 ``grad_W`` (V x H).
On CUDA with ``liger-kernel`` installed, ``backend="auto"`` hands the selected rows to Liger's fused kernel.

Label convention (transformers'): ``linear_cross_entropy`` takes labels already aligned with ``hidden`` (row i
predicts ``labels[i]``); ``shift_labels`` makes them from a model's input labels. ``loss_from_model`` and
``install`` take the unshifted labels, as ``model(input_ids, labels=labels)`` does, and shift them inside.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100
# One chunk of fp32 logits at most this big: the chunk loop holds at most ~2.5 such buffers at once (fp32
# logits and their log-softmax, or that and the gradient's compute-dtype copy), ~0.65 GB whatever N is; the
# chunk's matmul ([chunk x H] @ [H x V]) stays large enough to run at full speed on CPU and GPU.
CHUNK_LOGIT_BYTES = 256 * 2**20
_MIN_CHUNK, _MAX_CHUNK = 128, 8192
# config fields with which a model rescales its logits after lm_head; we only implement softcapping
_LOGIT_RESCALERS = ("logit_scale", "logits_scaling", "output_logits_scale")


class LossHeadUnsupported(ValueError):
    """The model's head is not a plain Linear followed by cross-entropy: use the model's own loss."""


def shift_labels(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Labels aligned with the hidden states: position i predicts token i+1, the last predicts nothing."""
    return F.pad(labels, (0, 1), value=ignore_index)[..., 1:]


def default_chunk_tokens(vocab_size: int) -> int:
    """Rows per chunk so that one chunk of fp32 logits is at most CHUNK_LOGIT_BYTES (1,365 for V=49,152)."""
    return max(_MIN_CHUNK, min(_MAX_CHUNK, CHUNK_LOGIT_BYTES // (4 * vocab_size)))


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    chunk_tokens: int | None = None,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "sum",
    logit_softcap: float | None = None,
    recompute: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """Cross-entropy of ``F.linear(hidden, weight, bias)`` against ``labels`` (already shifted), in fp32.

    ``hidden`` is [..., H], ``labels`` the matching [...]. ``reduction="mean"`` divides by the number of
    trained rows, and gives 0 (not NaN, as ``F.cross_entropy`` does) when there are none; the result is
    still connected to ``hidden`` and ``weight``, so backward runs and yields zero gradients.
    ``logit_softcap`` c applies ``c * tanh(logits / c)`` before the softmax (Gemma 2).
    ``backend``: "chunked" (ours), "liger" (Liger's fused kernel; CUDA), "auto" (liger when usable).
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"linear_cross_entropy: reduction must be 'sum' or 'mean', got {reduction!r}")
    h, targets = _trained_rows(hidden, weight, labels, ignore_index)
    if _use_liger(backend, h, recompute):
        total = _liger_sum(h, weight, bias, targets, logit_softcap)
    else:
        chunk = chunk_tokens or default_chunk_tokens(weight.shape[0])
        # forward runs with grad disabled inside the Function: decide here whether gradients are wanted
        eager = not recompute and torch.is_grad_enabled()
        total = _ChunkedLinearCE.apply(h, weight, bias, targets, int(chunk), logit_softcap, eager)
    return total / max(1, targets.numel()) if reduction == "mean" else total


def _trained_rows(hidden, weight, labels, ignore_index) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden rows and targets whose loss counts; flags labels the vocabulary cannot hold."""
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"linear_cross_entropy: hidden {tuple(hidden.shape)} does not match labels "
                         f"{tuple(labels.shape)}; hidden must be [..., H] and labels the same [...]")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"linear_cross_entropy: weight {tuple(weight.shape)} is not [vocab, "
                         f"{hidden.shape[-1]}] (the head's weight for hidden size {hidden.shape[-1]})")
    h = hidden.reshape(-1, hidden.shape[-1])
    flat = labels.reshape(-1).to(h.device)
    keep = (flat != ignore_index).nonzero().squeeze(1)  # a host sync, as F.cross_entropy's own checks
    targets = flat.index_select(0, keep)
    bad = (targets < 0) | (targets >= weight.shape[0])
    if bool(bad.any()):
        raise ValueError(f"linear_cross_entropy: label {int(targets[bad][0])} is outside the vocabulary "
                         f"[0, {weight.shape[0]}) and is not ignore_index={ignore_index}")
    if keep.numel() != flat.numel():
        h = h.index_select(0, keep)
    return h, targets


class _ChunkedLinearCE(torch.autograd.Function):
    """Summed cross-entropy over rows of ``h``, one chunk of logits at a time in forward and backward."""

    @staticmethod
    def forward(ctx, h, weight, bias, targets, chunk, softcap, eager):
        need = ctx.needs_input_grad[:3] if eager else (False, False, False)
        total, grads = _sweep(h, weight, bias, targets, chunk, softcap, need)
        ctx.chunk, ctx.softcap, ctx.eager = chunk, softcap, eager
        # under autocast (Trainer bf16=True) the recomputed chunks must use the forward's compute dtype
        device = h.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.save_for_backward(*(grads if eager else (h, weight, bias, targets)))
        return total

    @staticmethod
    def backward(ctx, grad_total):
        if ctx.eager:
            grads = ctx.saved_tensors
        else:
            h, weight, bias, targets = ctx.saved_tensors
            device, enabled, dtype = ctx.autocast
            with torch.autocast(device, dtype=dtype, enabled=enabled):
                _, grads = _sweep(h, weight, bias, targets, ctx.chunk, ctx.softcap, ctx.needs_input_grad[:3])
        # the loss is a scalar: its gradient only rescales the ones computed chunk by chunk
        scaled = tuple(None if g is None else g * grad_total.to(g.dtype) for g in grads)
        return (*scaled, None, None, None, None)


def _sweep(h, weight, bias, targets, chunk, softcap, need):
    """The summed loss and, where ``need`` asks, the gradients of (h, weight, bias) for a loss weight of 1."""
    need_h, need_w, need_b = need
    total = torch.zeros((), dtype=torch.float32, device=h.device)
    grad_h = torch.empty_like(h) if need_h else None
    # accumulated across chunks in fp32 so that bf16/fp16 heads do not lose the small per-chunk terms
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
    grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
    weight = _compute_weight(weight, h.device.type)
    for start in range(0, h.shape[0], chunk):
        h_c, t_c = h[start:start + chunk], targets[start:start + chunk]
        raw = F.linear(h_c, weight, bias)  # the compute dtype, as lm_head (or autocast) makes it
        compute_dtype = raw.dtype
        logits, dcap = _fp32_logits(raw, softcap, any(need))
        del raw  # `del`s keep at most two chunk-sized buffers alive at once, none across iterations
        # log_softmax is one fused pass on CPU and GPU; torch.logsumexp measured ~3x slower here
        logp = torch.log_softmax(logits, dim=-1)
        del logits
        total -= logp.gather(1, t_c[:, None]).sum()
        if any(need):
            # back in the compute dtype, as the plain head's gradient flows back through logits.float()
            d_logits = _softmax_minus_onehot(logp, t_c, dcap).to(compute_dtype)
            del logp, dcap
            _accumulate(d_logits, h_c, weight, grad_h, grad_w, grad_b, start)
            del d_logits
        else:
            del logp, dcap
    return total, (grad_h, _cast(grad_w, weight), _cast(grad_b, bias))


def _compute_weight(weight, device_type):
    """The head's weight as autocast would hand it to each chunk's two matmuls, cast once per sweep rather than
    twice per chunk (autocast keeps no cast of a frozen weight: 19 ms each for SmolLM2's head on a CPU)."""
    if torch.is_autocast_enabled(device_type) and weight.dtype == torch.float32 and not weight.requires_grad:
        return weight.to(torch.get_autocast_dtype(device_type))
    return weight


def _accumulate(d_logits, h_c, weight, grad_h, grad_w, grad_b, start):
    """Adds one chunk's share of the gradients (each row of grad_h belongs to exactly one chunk)."""
    if grad_h is not None:
        grad_h[start:start + d_logits.shape[0]] = d_logits @ weight
    if grad_w is not None:
        grad_w += d_logits.T @ h_c
    if grad_b is not None:
        grad_b += d_logits.sum(0)


def _fp32_logits(raw, softcap, need_grad):
    """One chunk's logits in fp32 (softcapped if asked) and d(capped)/d(raw)."""
    logits = raw.float()  # raw itself when already fp32: a temporary, so softcapping may overwrite it
    if softcap is None:
        return logits, None
    capped = logits.div_(softcap).tanh_()
    dcap = 1 - capped.square() if need_grad else None
    return capped.mul_(softcap), dcap


def _softmax_minus_onehot(logp, targets, dcap):
    """d(sum of losses)/d(logits) for one chunk, overwriting ``logp`` (no longer needed) to save a copy."""
    grad = logp.exp_()
    grad[torch.arange(targets.numel(), device=grad.device), targets] -= 1
    return grad.mul_(dcap) if dcap is not None else grad


def _cast(grad, like):
    return None if grad is None else grad.to(like.dtype)


def _use_liger(backend: str, h: torch.Tensor, recompute: bool) -> bool:
    if backend not in ("auto", "chunked", "liger"):
        raise ValueError(f"linear_cross_entropy: backend must be 'auto', 'chunked' or 'liger', got {backend!r}")
    if backend == "chunked" or (backend == "auto" and (recompute or h.device.type != "cuda")):
        return False
    try:
        import liger_kernel.transformers  # noqa: F401  (Triton kernels; they need a CUDA driver)
    except ImportError:
        if backend == "liger":
            raise ValueError("linear_cross_entropy: backend='liger' needs `pip install liger-kernel`") from None
        return False
    return True


def _liger_sum(h, weight, bias, targets, softcap):
    """Liger's fused linear cross-entropy on the already selected rows, summed (its API varies by release)."""
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    extra = {"softcap": softcap} if softcap is not None else {}
    out = LigerFusedLinearCrossEntropyLoss(reduction="sum", **extra)(weight, h, targets, bias)
    return (out[0] if isinstance(out, tuple) else out).float()


# ---- plugging into a Hugging Face causal LM -------------------------------------------------------------

def causal_lm(model: nn.Module) -> nn.Module:
    """The transformers *ForCausalLM under a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def unsupported_reason(model: nn.Module) -> str | None:
    """Why the chunked head cannot stand in for this model's own loss, or None when it can."""
    causal = causal_lm(model)
    name = type(causal).__name__
    if getattr(causal, "loss_type", None) != "ForCausalLM":
        return f"{name} does not use the causal-LM loss (loss_type={getattr(causal, 'loss_type', None)!r})"
    if not isinstance(getattr(causal, causal.base_model_prefix, None), nn.Module):
        return f"{name} has no decoder body at .{causal.base_model_prefix}"
    head = causal.get_output_embeddings()
    if type(head) is not nn.Linear:  # a LoRA-wrapped or quantised head computes more than weight @ h
        return f"{name}'s output head is a {type(head).__name__}, not a plain nn.Linear (LoRA or quantised lm_head)"
    if head.weight.dim() != 2 or head.weight.numel() == 0 or not head.weight.is_floating_point():
        return f"lm_head.weight is {tuple(head.weight.shape)} {head.weight.dtype} (sharded by ZeRO-3/FSDP or quantised)"
    for field in _LOGIT_RESCALERS:
        if getattr(causal.config, field, None) not in (None, 1, 1.0):
            return f"config.{field}={getattr(causal.config, field)} rescales the logits (not implemented here)"
    return None


def loss_from_model(
    model: nn.Module,
    input_ids: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    num_items_in_batch: torch.Tensor | int | None = None,
    *,
    chunk_tokens: int | None = None,
    backend: str = "auto",
    **kwargs: Any,
) -> torch.Tensor:
    """``model(input_ids, labels=labels, num_items_in_batch=...).loss`` without the full logits.

    Same semantics as transformers' ForCausalLMLoss: labels are unshifted (or pass ``shift_labels=``),
    -100 is ignored, the loss is summed over trained tokens and divided by ``num_items_in_batch`` when it is
    given, else averaged (0, not NaN, when no token trains). Other keyword arguments go to the decoder body
    (packing's flash-attention kwargs, inputs_embeds, ...). Raises LossHeadUnsupported for heads it cannot
    reproduce (see ``unsupported_reason``).
    """
    causal = causal_lm(model)
    reason = unsupported_reason(causal)
    if reason:
        raise LossHeadUnsupported(f"chunked loss head: {reason}; train with the model's own loss instead")
    targets = kwargs.pop("shift_labels", None)
    if targets is None and labels is None:
        raise ValueError("loss_from_model: pass labels (or shift_labels=); without them there is no loss")
    for unused in ("return_dict", "logits_to_keep"):
        kwargs.pop(unused, None)
    out = getattr(causal, causal.base_model_prefix)(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
    head = causal.get_output_embeddings()
    hidden = out[0].to(head.weight.device)
    targets = shift_labels(labels) if targets is None else targets
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = linear_cross_entropy(hidden, head.weight, targets, bias=head.bias, chunk_tokens=chunk_tokens,
                                reduction=reduction, backend=backend,
                                logit_softcap=getattr(causal.config, "final_logit_softcapping", None))
    if num_items_in_batch is not None:
        count = num_items_in_batch
        loss = loss / (count.to(loss.device) if torch.is_tensor(count) else count)
    return loss


def install(model: nn.Module, *, chunk_tokens: int | None = None, backend: str = "auto") -> Callable[[], None]:
    """Route ``model(..., labels=...)`` through the chunked head; returns a function that undoes it.

    The *ForCausalLM's own ``forward`` is shadowed on the instance, so every caller (the Trainer, DDP,
    peft's wrapper) keeps calling the model as before. With labels the output carries the loss and
    ``logits=None``; without labels the original forward runs (generation, evaluation of logits).
    """
    from transformers.modeling_outputs import CausalLMOutputWithPast

    causal = causal_lm(model)
    reason = unsupported_reason(causal)
    if reason:
        raise LossHeadUnsupported(f"chunked loss head: {reason}; train with the model's own loss instead")
    original = causal.forward

    def forward(input_ids=None, attention_mask=None, position_ids=None, labels=None, **kwargs):
        if labels is None and kwargs.get("shift_labels") is None:
            return original(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs)
        loss = loss_from_model(causal, input_ids, labels, attention_mask, position_ids,
                               chunk_tokens=chunk_tokens, backend=backend, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=None)

    causal.forward = forward  # an instance attribute shadows the class's method in nn.Module.__call__

    def restore() -> None:
        if causal.__dict__.get("forward") is forward:
            del causal.forward

    return restore

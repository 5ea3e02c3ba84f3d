"""Fused LoRA linear layers: the base projection, the adapter and its dropout in one autograd function.

peft computes a LoRA layer as ``base(x) + lora_B(lora_A(dropout(x))) * scaling``: a dropout pass over the
input (a random draw, a compare, a multiply and a select), two thin matrix products, a multiply of the
whole output by ``scaling``, an add, and in the backward pass the same element-wise chain again plus an
fp32 cast of every gradient under autocast. With the small hidden sizes of the models people fine-tune on
a CPU these passes cost as much as the base matrix product itself (the bundled 135M model, LoRA r=8 on all
linear layers: the adapters doubled the linear layers' time).

``FusedLoRA`` computes the same function with fewer passes over [tokens x features]:

* the dropout zeroes the dropped elements in the 16-bit copy of the input the base product needs anyway
  (positions, ``sftkit.train.dropout.draw_drops``; a one-byte 0/1 multiplier for large p or off the CPU);
  its ``1/(1-p)`` factor and ``scaling`` are folded into the thin [tokens x r] product and into
  ``addmm``'s ``alpha``, so the adapter's output is added to the base output in place (``addmm_``), never
  scaled or added as a separate tensor;
* backward: the input gradient is one matrix product with the frozen weight plus the adapter's part at the
  kept elements (``add_kept``); the adapters' gradients come from [tokens x r] products.

The dropped elements are drawn as ``sftkit.train.dropout.FastDropout`` draws them (one draw per layer
and step, in the same order): with the same seed
the fused layer and peft's layer with ``FastDropout`` drop the same elements and agree to rounding
(tests/test_fastlora.py). The compute dtype is autocast's where it is on, else the input's.

``install(model)`` turns peft's LoRA ``Linear`` layers into ``FusedLinear``, which takes the fused path for
a plain call (one active adapter on a frozen ``nn.Linear``, no DoRA, no LoRA bias, not merged) and peft's
own forward for anything else (several adapters, a call with ``adapter_names``, quantised layers are
another class and are left alone). Not for ZeRO-3/FSDP, whose hooks gather each sub-module's
weights when that sub-module runs (the plan keeps peft's forward there).
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from torch import nn

from sftkit.train.dropout import (
    LEVELS,
    FastDropout,
    add_kept,
    draw_drops,
    dropped_levels,
    keep_scale,
    zero_dropped,
)


def _drop_threshold(drop: nn.Module) -> int:
    """How many of the 65,536 16-bit levels are dropped (0: no dropout now)."""
    if not drop.training:
        return 0
    if isinstance(drop, FastDropout):
        return drop.dropped
    if isinstance(drop, nn.Dropout):
        return dropped_levels(drop.p)
    return 0


class FusedLoRA(torch.autograd.Function):
    """y = x W^T + b + scaling * (dropout(x) A^T) B^T, with W and b frozen."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor,
                b: torch.Tensor, scaling: float, dropped: int, dtype: torch.dtype) -> torch.Tensor:
        lead, features = x.shape[:-1], x.shape[-1]
        x2 = x.reshape(-1, features).to(dtype, memory_format=torch.contiguous_format)  # drops index row-major
        w = weight.to(dtype)
        out = torch.addmm(bias.to(dtype), x2, w.t()) if bias is not None else x2 @ w.t()
        scale = keep_scale(dropped)
        drops = None
        if dropped:  # zeroed in place after the base product: in the 16-bit copy, or in a copy of our own
            drops = draw_drops(x2.shape, dropped, x.device)
            if x2.data_ptr() == x.data_ptr():  # no cast was needed: x2 is the caller's tensor
                x2 = x2.clone(memory_format=torch.contiguous_format)
            x2 = zero_dropped(x2, drops)
        h = (x2 @ a.to(dtype).t()).mul_(scale)  # [tokens, r]: the dropout's scale costs nothing here
        out.addmm_(h, b.to(dtype).t(), alpha=scaling)
        if not ctx.needs_input_grad[0]:  # only the input's gradient reads them
            w = drops = None
        ctx.save_for_backward(w, a, b, x2, drops, h)  # w: the compute-dtype weight (autocast keeps its cast too)
        ctx.scaling, ctx.keep_scale, ctx.dtype, ctx.x_dtype, ctx.x_shape = scaling, scale, dtype, x.dtype, x.shape
        return out.view(*lead, out.shape[-1])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        w, a, b, x2, drops, h = ctx.saved_tensors
        dtype, scaling = ctx.dtype, ctx.scaling
        g = grad.reshape(-1, grad.shape[-1]).to(dtype)
        gh = (g @ b.to(dtype)).mul_(scaling)  # [tokens, r]
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[4]:
            # [r, out] then transposed: twice as fast as g^T h on a CPU for these thin shapes
            grad_b = (h.t() @ g).mul_(scaling).t().contiguous().to(b.dtype)
        if ctx.needs_input_grad[3]:
            grad_a = (gh.t() @ x2).mul_(ctx.keep_scale).to(a.dtype)
        if ctx.needs_input_grad[0]:
            grad_x = g @ w
            if drops is None:
                grad_x.addmm_(gh, a.to(dtype), alpha=ctx.keep_scale)
            else:
                add_kept(grad_x, gh @ a.to(dtype), drops, ctx.keep_scale)
            grad_x = grad_x.view(ctx.x_shape).to(ctx.x_dtype)
        return grad_x, None, None, grad_a, grad_b, None, None, None


class FusedLinear(LoraLinear):
    """peft's LoRA ``Linear`` whose plain calls go through ``FusedLoRA`` (installed by swapping the class, so a
    copy of the model, peft's adapter switching and saving behave as before)."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        name = None if args or kwargs else self._fusable_adapter()
        if name is None:
            return super().forward(x, *args, **kwargs)
        a, b = self.lora_A[name].weight, self.lora_B[name].weight
        base = self.base_layer
        device = x.device.type
        if torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
        elif x.dtype == base.weight.dtype == a.dtype:
            dtype = x.dtype
        else:  # peft computes the adapter in its weights' dtype here: keep its forward
            return super().forward(x, *args, **kwargs)
        dropped = _drop_threshold(self.lora_dropout[name])
        if dropped >= LEVELS:  # p within 1/131,072 of 1: nothing would be kept; peft's dropout handles it
            return super().forward(x, *args, **kwargs)
        return FusedLoRA.apply(x, base.weight, base.bias, a, b, float(self.scaling[name]), dropped, dtype)

    def _fusable_adapter(self) -> str | None:
        """The one adapter this layer applies, when the fused path computes it exactly as peft would."""
        base = self.base_layer
        if self.disable_adapters or self.merged or type(base) is not nn.Linear or base.weight.requires_grad:
            return None
        if base.bias is not None and base.bias.requires_grad:
            return None
        active = [n for n in self.active_adapters if n in self.lora_A]
        if len(active) != 1:
            return None
        name = active[0]
        if name in self.lora_variant or self.lora_bias.get(name):
            return None
        a, b = self.lora_A[name], self.lora_B[name]
        return name if type(a) is nn.Linear and type(b) is nn.Linear and b.bias is None else None


def install(model: Any) -> int:
    """Route every peft LoRA ``Linear`` of ``model`` through ``FusedLoRA`` (idempotent); returns how many.
    A layer that is not plain at call time (merged, several adapters active, DoRA) uses peft's forward."""
    count = 0
    for module in model.modules():
        if type(module) is LoraLinear:
            module.__class__ = FusedLinear
        count += type(module) is FusedLinear
    return count

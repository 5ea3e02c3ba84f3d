"""Estimate = memory breakdown per device + time, for a shape, a setup and a device."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from sftkit.estimate.device import Device
from sftkit.estimate.memory import (
    GB,
    Setup,
    activation_bytes,
    autocast_copy_bytes,
    logits_loss_bytes,
    param_state_bytes,
    trainable_params,
)
from sftkit.estimate.shape import ModelShape

DEFAULT_STEPS = 1000  # time basis when neither data nor max_steps say how long the run is
# glibc malloc keeps freed per-step blocks (activations, loss buffers) in its arenas, so a CPU
# process's peak RSS exceeds the live peak by about half the per-step transient memory.
# Measured once (bench/RESULTS_estimate.md, lora-256 run: (peak RSS - static terms) / transient
# = 1.5) and used unchanged for every configuration; GPUs' caching allocator is not modelled.
CPU_ALLOCATOR_RETENTION = 0.5
# The band the estimate is tested to against measured peaks (tests/test_estimate_gpu.py: every sftkit run of
# shared/data/gpu/h200_2026-12-04.json within +-15%). Preflight refuses only below the band's lower edge.
ACCURACY = 0.15


@dataclass
class Estimate:
    shape: ModelShape
    setup: Setup
    device: Device
    breakdown: dict[str, float]  # bytes per device; sums to the peak
    host_bytes: float  # CPU RAM for offloaded states (ZeRO offload)
    trainable: int
    flops_per_token: float
    step_seconds: float
    steps: int
    time_basis: str
    recommendations: list[Any] = field(default_factory=list)

    @property
    def total_gb(self) -> float:
        return sum(self.breakdown.values()) / GB

    @property
    def breakdown_gb(self) -> dict[str, float]:
        return {k: v / GB for k, v in self.breakdown.items()}

    @property
    def fits(self) -> bool:
        return self.total_gb <= self.device.memory_gb

    @property
    def lower_gb(self) -> float:
        """The least the run can need by this estimate: its total less the tested error band."""
        return self.total_gb * (1 - ACCURACY)

    @property
    def tokens_per_step(self) -> int:
        s = self.setup
        return s.seq_len * s.micro_batch * s.grad_accum * s.gpus

    @property
    def est_hours(self) -> float:
        return self.steps * self.step_seconds / 3600

    def to_json(self) -> dict[str, Any]:
        return {
            "total_gb": round(self.total_gb, 3),
            "lower_gb": round(self.lower_gb, 3),
            "breakdown": {k: round(v, 3) for k, v in self.breakdown_gb.items()},
            "fits": self.fits,
            "device": {"name": self.device.name, "memory_gb": round(self.device.memory_gb, 2),
                       "count": self.setup.gpus},
            "host_offload_gb": round(self.host_bytes / GB, 3),
            "model": {"name": self.shape.name, "params": self.shape.n_params, "trainable": self.trainable},
            "tokens_per_step": self.tokens_per_step,
            "step_seconds": round(self.step_seconds, 3),
            "steps": self.steps,
            "est_hours": round(self.est_hours, 4),
            "time_basis": self.time_basis,
            "recommendations": [r.to_json() for r in self.recommendations],
        }


def _shard(parts: dict[str, float], setup: Setup, shape: ModelShape) -> tuple[dict[str, float], float]:
    """ZeRO: stage 1 shards optimizer states (and master weights), 2 adds gradients, 3 adds weights.
    Offload moves the optimizer side to host RAM (and with stage 3 the weights, keeping ~2 layers resident)."""
    n = max(1, setup.gpus)
    out, host = dict(parts), 0.0
    if setup.zero >= 1:
        for k in ("optimizer_states", "master_weights", "optimizer_step_temp"):
            out[k] /= n
    if setup.zero >= 2:
        out["gradients"] /= n
    if setup.zero >= 3:
        out["weights"] /= n
        out["lora_adapters"] /= n
    if setup.offload and setup.zero >= 1:
        for k in ("optimizer_states", "master_weights", "optimizer_step_temp"):
            host += out[k]
            out[k] = 0.0
        if setup.zero >= 3:
            resident = 2 * shape.layer_params * (parts["weights"] / shape.n_params)
            host += out["weights"] - resident
            out["weights"] = resident
    return out, host


def memory(shape: ModelShape, setup: Setup) -> tuple[dict[str, float], float]:
    """Per-device breakdown (bytes) whose sum is the peak, and host bytes for offload."""
    parts, host = _shard(param_state_bytes(shape, setup), setup, shape)
    acts = activation_bytes(shape, setup)
    loss = logits_loss_bytes(shape, setup)
    casts = autocast_copy_bytes(shape, setup)
    grads, temp = parts["gradients"], parts["optimizer_step_temp"]
    # With one micro-batch per step gradients appear while activations are freed (backward
    # runs top-down), and Trainer frees them after step(); the peak is then the larger of
    # "start of backward" (all activations, head gradient) and "optimizer step" (all gradients
    # + step temporaries). Accumulating micro-batches keeps gradients alive throughout.
    dynamic_all = acts + loss + casts + grads + temp
    if setup.grad_accum == 1 and setup.zero < 2:
        head = grads * shape.embed_params / max(1, shape.n_params) if setup.method == "full" else 0.0
        peak = max(acts + loss + casts + head, grads + temp)
    else:
        peak = grads + max(acts + loss + casts, temp)
    breakdown = {
        "weights": parts["weights"],
        "lora_adapters": parts["lora_adapters"],
        "gradients": grads,
        "master_weights": parts["master_weights"],
        "optimizer_states": parts["optimizer_states"],
        "optimizer_step_temp": temp,
        "activations": acts,
        "autocast_weight_copies": casts,
        "logits_loss": loss,
        "not_simultaneous": peak - dynamic_all,  # negative: terms above that are never alive together
        "allocator_retention": CPU_ALLOCATOR_RETENTION * (peak - grads) if setup.device == "cpu" else 0.0,
        "framework_overhead": setup.overhead_bytes,
    }
    return breakdown, host


def flops_per_token(shape: ModelShape, setup: Setup) -> float:
    """6N when every weight trains (forward 2N, backward 4N); LoRA/QLoRA ~4N (no weight
    gradients for frozen weights); +2N for checkpointing's recomputed forward; attention
    scores add 12 x layers x q_dim x seq (forward + backward)."""
    n = shape.n_params
    if setup.method == "full":
        f = 6 * n
    elif setup.method == "freeze":
        k = min(setup.freeze_layers, shape.layers)
        f = 2 * n + 4 * (k * shape.layer_params + shape.vocab * shape.hidden)
    else:
        f = 4 * n + 6 * trainable_params(shape, setup)
    if setup.gradient_checkpointing:
        f += 2 * n
    return f + 12 * shape.layers * shape.q_dim * setup.seq_len


def step_seconds(shape: ModelShape, setup: Setup, device: Device) -> float:
    rate = device.tflops * 1e12 * device.efficiency
    if device.kind == "cuda" and not setup.autocast and setup.weight_dtype == "float32" and setup.method != "qlora":
        rate /= 2  # fp32 weights without autocast run on TF32, about half the bf16 rate
    if setup.method == "qlora":
        rate /= 1.3  # NF4 weights are de-quantised before every matmul
    tokens = setup.seq_len * setup.micro_batch * setup.grad_accum  # per device
    return flops_per_token(shape, setup) * tokens / rate


def estimate(shape: ModelShape, setup: Setup, device: Device, steps: int | None = None,
             time_basis: str | None = None) -> Estimate:
    setup = replace(setup, flash_attention=setup.flash_attention and device.flash_attention,
                    overhead_bytes=device.overhead_gb * GB, device=device.kind)
    breakdown, host = memory(shape, setup)
    return Estimate(shape, setup, device, breakdown, host, trainable_params(shape, setup),
                    flops_per_token(shape, setup), step_seconds(shape, setup, device),
                    steps if steps is not None else DEFAULT_STEPS,
                    time_basis or f"{DEFAULT_STEPS} optimizer steps (assumed: no data and no max_steps given)")


def steps_for(rows: int, epochs: float, setup: Setup) -> int:
    per_step = setup.micro_batch * setup.grad_accum * setup.gpus
    return max(1, math.ceil(rows / per_step) * math.ceil(epochs)) if epochs >= 1 else max(1, math.ceil(
        rows * epochs / per_step))

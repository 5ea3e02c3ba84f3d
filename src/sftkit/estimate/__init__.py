"""Plan before you train: peak memory per device, time, and recommendations with reasons.

    from sftkit.estimate import estimate_run, estimate_for, preflight
    est = estimate_run(cfg)                    # a RunConfig: shape from config.json, no weights loaded
    est = estimate_for("7B", Setup(method="qlora", seq_len=2048, micro_batch=4), gpu("A100-40GB"))
    preflight(cfg, device_memory_gb=None)      # raises DoesNotFit with the breakdown and the cheapest fix

docs/estimate.md explains every term; bench/RESULTS_estimate.md checks them on this machine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from sftkit.core.errors import DoesNotFit
from sftkit.data.kinds import load_any
from sftkit.data.stats import make_renderer, render_all
from sftkit.estimate.core import Estimate, estimate, flops_per_token, memory, steps_for
from sftkit.estimate.device import (
    GPUS,
    CpuProfile,
    Device,
    available_ram_gb,
    cpu_device,
    cpu_profile,
    detect_device,
    gpu,
)
from sftkit.estimate.memory import Setup
from sftkit.estimate.recommend import Recommendation, all_for, cheapest_fix
from sftkit.estimate.shape import LINEARS, SIZES, ModelShape, from_hf_config, from_path, from_size

__all__ = [
    "GPUS", "LINEARS", "SIZES", "CpuProfile", "Device", "DoesNotFit", "Estimate", "ModelShape", "Recommendation",
    "Setup", "available_ram_gb", "cpu_device", "cpu_profile", "detect_device", "estimate", "estimate_for",
    "estimate_run", "flops_per_token", "format_breakdown", "from_hf_config", "from_path", "from_size", "gpu",
    "memory", "preflight", "setup_from_config", "shape_for",
]

_OPTIMS = {"adamw_8bit": "adamw_8bit", "adamw_bnb_8bit": "adamw_8bit", "paged_adamw_8bit": "paged_adamw_8bit",
           "sgd": "sgd", "adafactor": "adafactor", "adamw_torch_fused": "adamw_fused"}




def shape_for(model: str | Path) -> ModelShape:
    """'7B'-style size, a config.json path, or any model reference sftkit resolves."""
    text = str(model)
    if text[:1].isdigit() and not Path(text).exists():
        return from_size(text)
    return from_path(model)


def setup_from_config(cfg: Any, plan: Mapping[str, str] | None = None) -> Setup:
    """A RunConfig as sftkit trains it: HF Trainer + torch AdamW, whose states take the
    parameters' dtype (no fp32 master copy unless DeepSpeed adds one). ``plan``: the training plan's
    values (``sftkit.train.plan``: attn_implementation, dtype, loss_head, packing) for what the config
    leaves to the device; without one, ``auto`` reads as the CPU's choices."""
    m, t = cfg.method, cfg.train
    p = dict(plan or {})
    targets = LINEARS if m.target_modules == "all-linear" else tuple(x for x in LINEARS if x in m.target_modules)
    auto_dtype = "bfloat16" if m.type.value == "qlora" else "float32"
    dtype = p.get("dtype") or (cfg.model.dtype if cfg.model.dtype != "auto" else auto_dtype)
    attn = p.get("attn_implementation") or cfg.model.attn_implementation or "sdpa"
    packing = p.get("packing") or ("packed" if t.packing else "padded")
    head = p.get("loss_head") or ("plain" if t.loss_head == "plain" else "chunked")
    # preference stages put two sequences per row through the model: chosen + rejected (kto: + a KL completion)
    sequences = 2 if getattr(cfg, "stage", "sft") in ("dpo", "kto", "orpo", "simpo") else 1
    return Setup(
        method=m.type.value, seq_len=cfg.data.cutoff_len, micro_batch=t.per_device_train_batch_size * sequences,
        grad_accum=t.gradient_accumulation_steps, gpus=int(os.environ.get("WORLD_SIZE", "1")),
        weight_dtype=dtype, autocast="bf16" if t.bf16 else "fp16" if t.fp16 else None,
        optim=_OPTIMS.get(t.optim, "adamw"), gradient_checkpointing=t.gradient_checkpointing,
        lora_r=m.r, lora_targets=targets, lora_dropout=m.dropout, freeze_layers=m.freeze_trainable_layers,
        flash_attention=attn != "eager", mask_bias=attn in ("sdpa", "eager") and packing != "padding_free",
        block_attention=attn == "sftkit_segments",
        loss_head=head if head in ("plain", "chunked", "liger") else "plain", liger=t.use_liger_kernel,
    )


def _data_info(cfg: Any, lengths: bool) -> tuple[int | None, list[int] | None]:
    """Training rows (after the validation split) and, optionally, rendered lengths of up to 2,000 rows."""

    loaded = [load_any(src.path, src.format, src.columns or None) for src in cfg.data.train]
    rows = sum(res.valid for res in loaded)  # conversations, preference rows or documents
    convs = [c for res in loaded for c in getattr(res, "conversations", []) if not c.is_text]
    if not cfg.data.val and cfg.data.val_size > 0:
        rows -= max(1, round(rows * cfg.data.val_size))
    lens = None
    if lengths and convs:

        rendered, _ = render_all(make_renderer(cfg.model.name_or_path), convs[:2000])
        lens = [len(r.input_ids) for r in rendered]
    return rows, lens


def estimate_run(cfg: Any, device: Device | None = None, count_data: bool = True, lengths: bool = False,
                 max_len: int | None = None, changes: dict[str, Any] | None = None,
                 plan: Mapping[str, str] | None = None) -> Estimate:
    """Estimate for a RunConfig on ``device`` (default: this machine's first GPU, else its CPU).
    ``changes``: Setup fields to override (what-if questions from the command line); ``plan``: the
    training plan's values for that device (``setup_from_config``)."""
    shape = from_path(cfg.model.name_or_path, cfg.model.trust_remote_code)
    setup = replace(setup_from_config(cfg, plan), **{k: v for k, v in (changes or {}).items() if v is not None})
    if max_len:
        setup = replace(setup, seq_len=min(setup.seq_len, max_len))
    device = device or detect_device()
    rows, lens = None, None
    if count_data:
        try:
            rows, lens = _data_info(cfg, lengths)
        except (OSError, ValueError):  # unreadable data is `sft data check`'s job; estimate without it
            rows, lens = None, None
    return estimate_for(shape, setup, device, rows=rows, lengths=lens, epochs=cfg.train.num_train_epochs,
                        max_steps=cfg.train.max_steps, has_val=bool(cfg.data.val))


def estimate_for(shape: ModelShape | str, setup: Setup, device: Device, rows: int | None = None,
                 lengths: list[int] | None = None, epochs: float = 3.0, max_steps: int = -1,
                 has_val: bool = False) -> Estimate:
    shape = shape if isinstance(shape, ModelShape) else shape_for(shape)
    if max_steps > 0:
        steps, basis = max_steps, f"max_steps={max_steps}"
    elif rows:
        steps, basis = steps_for(rows, epochs, setup), f"{rows:,} rows x {epochs:g} epochs"
    else:
        steps, basis = None, None
    est = estimate(shape, setup, device, steps, basis)
    if lengths:  # time follows the real mean length (padding to the batch's longest is ignored)
        mean = min(setup.seq_len, max(8, round(sum(lengths) / len(lengths))))
        est.step_seconds = estimate(shape, replace(setup, seq_len=mean), device).step_seconds
    est.recommendations = all_for(shape, est.setup, device, rows, lengths, has_val)
    return est


def format_breakdown(est: Estimate) -> str:
    rows = [f"  {k:<24} {v:8.2f} GB" for k, v in est.breakdown_gb.items() if abs(v) >= 0.005]
    return "\n".join([*rows, f"  {'total':<24} {est.total_gb:8.2f} GB  (device {est.device.memory_gb:.1f} GB)"])


def preflight(cfg: Any, device_memory_gb: float | None = None, max_len: int | None = None,
              plan: Mapping[str, str] | None = None) -> Estimate:
    """Check a run before any weights load. Returns the Estimate when it may fit (``est.fits`` False:
    the estimate is above the device but its lower bound is not: train, and say so); raises ``DoesNotFit``
    (message: breakdown + cheapest fix) only when even the lower bound (``Estimate.lower_gb``: the estimate
    less its tested error band) exceeds the device, so a run the measured peaks say fits is never refused.

    ``device_memory_gb`` None: the first CUDA GPU's free memory, or on CPU the available RAM.
    ``max_len``: the longest row that will really be trained, when the data is already
    tokenized (batches are padded to their longest row, not to ``cutoff_len``).
    """
    device = detect_device()
    if device_memory_gb is not None:
        device = replace(device, memory_gb=device_memory_gb)
    est = estimate_run(cfg, device, count_data=False, max_len=max_len, plan=plan)
    if est.lower_gb <= device.memory_gb:
        return est
    fix = cheapest_fix(est.shape, est.setup, device)
    hint = (f"cheapest fix: {fix[0]} (-> {fix[1]:.1f} GB)" if fix else
            "even gradient checkpointing, smaller micro-batches, LoRA/QLoRA and a shorter cutoff_len together do "
            "not fit: use more or larger devices (DeepSpeed ZeRO shards the states across them)")
    raise DoesNotFit(f"estimated peak {est.total_gb:.1f} GB per device (at least {est.lower_gb:.1f} GB) exceeds "
                     f"{device.name} {device.memory_gb:.1f} GB:\n{format_breakdown(est)}\n{hint} "
                     f"(`sft estimate CONFIG` explains; --force to train anyway)", est)

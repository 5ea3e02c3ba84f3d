"""``sft estimate``: peak memory per device, time, and recommendations before training.

With ``--json`` the last stdout line is one JSON object:
``{"total_gb", "lower_gb", "breakdown", "fits", "tokens_per_step", "est_hours",
"recommendations": [{"what", "value", "why", "rule", "seed"}], ...}``: ``rule`` is the guide's rule a
recommendation applies, ``seed`` where a seed's figure differs from it. For a CONFIG also the training plan
for the device (``--device cuda`` plans for a GPU on a machine without one):
``"plan": {"attn_implementation", "dtype", "loss_head", "packing"}``, ``"plan_reasons"`` (same keys),
``"plan_device"``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from sftkit.core.config import RunConfig
from sftkit.core.configio import load_config
from sftkit.core.errors import UsageError
from sftkit.estimate import (
    Device,
    Estimate,
    Setup,
    cpu_device,
    detect_device,
    estimate_for,
    estimate_run,
    gpu,
    preflight,
)
from sftkit.estimate.memory import EXPLAIN
from sftkit.estimate.recommend import cheapest_fix
from sftkit.hub.device import Capabilities, assumed_gpu, detect
from sftkit.train.plan import TrainPlan, model_config_of, plan

__all__ = ["estimate_cmd", "preflight"]

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)

ASSUMED_GPU = "H100-80GB"  # `--device cuda` on a machine without one, and no --gpu / --gpu-memory


def _device(gpu_name: str | None, gpu_memory: float | None, kind: str | None = None) -> Device:
    if kind not in (None, "cuda", "cpu"):
        raise UsageError(f"--device {kind}: use cuda or cpu (default: this machine's)")
    if kind == "cpu":
        if gpu_name:
            raise UsageError("--device cpu with --gpu: choose one")
        dev = cpu_device()
    elif gpu_name:
        dev = gpu(gpu_name)
    elif gpu_memory is not None:
        dev = Device(f"GPU {gpu_memory:g} GB", gpu_memory, 100.0)  # unknown GPU: assume a mid-range 100 TFLOPs
    else:
        dev = detect_device()
        if kind == "cuda" and dev.kind != "cuda":
            dev = replace(gpu(ASSUMED_GPU), name=f"{ASSUMED_GPU} (assumed: no GPU here)")
    return replace(dev, memory_gb=gpu_memory) if gpu_memory is not None else dev


def _caps(dev: Device) -> Capabilities:
    """What the plan reads: this machine's, or the stated GPU with this install's packages."""
    here = detect()
    if dev.kind == "cpu":
        return replace(here, cuda=False, capability=None, bf16=False, name="")
    if here.cuda:
        return here
    return assumed_gpu(bf16=dev.bf16, capability=dev.capability, name=dev.name)


def _plan(cfg: RunConfig, dev: Device) -> TrainPlan:
    return plan(cfg, _caps(dev), model_config_of(cfg))


def _apply(setup: Setup, **changes: object) -> Setup:
    return replace(setup, **{k: v for k, v in changes.items() if v is not None})


def _print(est: Estimate, fix: tuple[str, float] | None) -> None:
    s, sh = est.setup, est.shape
    console.print(f"[bold]{sh.name}[/]: {sh.n_params / 1e9:.3g}B parameters, {est.trainable:,} trainable; "
                  f"method={s.method} seq={s.seq_len} micro-batch={s.micro_batch} accum={s.grad_accum} "
                  f"devices={s.gpus}x {est.device.name} ({est.device.memory_gb:.1f} GB)"
                  f"{f' ZeRO-{s.zero}' if s.zero else ''}{' +offload' if s.offload else ''}"
                  f"{' +grad-ckpt' if s.gradient_checkpointing else ''}")
    t = Table(title="Peak memory per device", title_justify="left")
    for c in ("term", "GB", "what it is"):
        t.add_column(c, overflow="fold")
    for k, v in est.breakdown_gb.items():
        if abs(v) >= 0.005:
            t.add_row(k, f"{v:.2f}", EXPLAIN.get(k, ""))
    verdict = "[green]fits[/]" if est.fits else "[red]does NOT fit[/]"
    t.add_row("[bold]total[/]", f"[bold]{est.total_gb:.2f}[/]", verdict)
    console.print(t)
    if est.host_bytes:
        console.print(f"host RAM for offloaded states: {est.host_bytes / 1e9:.1f} GB")
    if fix and not est.fits:
        console.print(f"cheapest fix: {fix[0]} -> {fix[1]:.1f} GB")
    console.print(f"time: {est.flops_per_token / 1e9:.2f} GFLOP/token, {est.tokens_per_step:,} tokens/step, "
                  f"{est.step_seconds:.2f} s/step -> {est.est_hours:.2f} h for {est.time_basis}")
    r = Table(title="Recommendations", title_justify="left")
    for c in ("what", "value", "why", "the guide's rule (and where a seed differs)"):
        r.add_column(c, overflow="fold")
    for rec in est.recommendations:
        r.add_row(rec.what, str(rec.value), rec.why, "\n".join(x for x in (rec.rule, rec.seed) if x))
    console.print(r)


def estimate_cmd(
    config: Annotated[Path | None, typer.Argument(help="Run config YAML; omit and give --model-size instead.")] = None,
    gpus: Annotated[int, typer.Option("--gpus", help="Data-parallel devices.", min=1)] = 1,
    gpu_memory: Annotated[float | None, typer.Option("--gpu-memory", help="Memory per device, GB.")] = None,
    gpu_name: Annotated[str | None, typer.Option("--gpu", help="Known GPU: A100-40GB, A100-80GB, H100, 4090, "
                                                 "3090, V100, T4, L4, A10.")] = None,
    model_size: Annotated[str | None, typer.Option("--model-size", help="7B, 1.5B, ... (Llama-like shape), a "
                                                   "config.json path, or a model reference.")] = None,
    method: Annotated[str | None, typer.Option(help="full, lora, qlora or freeze.")] = None,
    seq_len: Annotated[int | None, typer.Option("--seq-len", help="Tokens per row (cutoff_len).", min=1)] = None,
    batch: Annotated[int | None, typer.Option("--batch", help="Micro-batch per device.", min=1)] = None,
    grad_accum: Annotated[int | None, typer.Option("--grad-accum", help="Accumulation steps.", min=1)] = None,
    gradient_checkpointing: Annotated[bool | None, typer.Option(
        "--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations in backward.")] = None,
    zero: Annotated[int | None, typer.Option("--zero", help="DeepSpeed ZeRO stage 0-3.", min=0, max=3)] = None,
    offload: Annotated[bool, typer.Option("--offload", help="ZeRO CPU offload.")] = False,
    device: Annotated[str | None, typer.Option("--device", help="cuda or cpu: plan and estimate for that kind of "
                                               f"device (default: this machine's; cuda without a GPU here: "
                                               f"{ASSUMED_GPU} unless --gpu says which).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object as the last stdout line.")] = False,
) -> None:
    """Estimate peak memory per device and training time, and recommend settings with reasons."""
    dev = _device(gpu_name, gpu_memory, device)
    changes = {"method": method, "seq_len": seq_len, "micro_batch": batch, "grad_accum": grad_accum,
               "gradient_checkpointing": gradient_checkpointing}
    deepspeed = {"zero": zero or 0, "offload": offload, "master_copy": zero is not None}
    chosen: TrainPlan | None = None
    if config is not None:
        cfg = load_config(config)
        chosen = _plan(cfg, dev)
        est = estimate_run(cfg, dev, count_data=True, lengths=True,
                           changes={"gpus": gpus, **changes, **deepspeed}, plan=chosen.values())
    elif model_size is not None:
        # No config: the usual GPU recipe - bf16 weights, LoRA unless told otherwise.
        setup = _apply(Setup(weight_dtype="bfloat16" if dev.bf16 else "float16", gpus=gpus,
                             autocast=None), **changes, **deepspeed)
        if setup.method in ("full", "freeze") and zero is None:
            setup = replace(setup, master_copy=True)  # standard mixed precision keeps fp32 master + states
        est = estimate_for(model_size, setup, dev)
    else:
        raise UsageError("give a run CONFIG or --model-size (e.g. --model-size 7B --method qlora)")
    fix = None if est.fits else cheapest_fix(est.shape, est.setup, est.device)
    if as_json:
        out = est.to_json()
        out["cheapest_fix"] = {"change": fix[0], "total_gb": round(fix[1], 3)} if fix else None
        if chosen is not None:
            out.update(plan=chosen.values(), plan_reasons=chosen.reasons(), plan_device=chosen.device)
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
        return
    _print(est, fix)
    if chosen is not None:
        console.print(f"[bold]plan[/] on {chosen.device} (what sft train would choose):")
        for line in chosen.lines():
            console.print(f"  {line}", soft_wrap=True)


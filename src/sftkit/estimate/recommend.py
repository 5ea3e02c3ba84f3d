"""Recommendations with the reason beside each, and the seeds' rule of thumb where it differs."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from sftkit.data.stats import recommend_cutoff
from sftkit.estimate.core import estimate
from sftkit.estimate.device import Device
from sftkit.estimate.memory import GB, Setup
from sftkit.estimate.shape import ModelShape


@dataclass(frozen=True, slots=True)
class Recommendation:
    what: str
    value: Any
    why: str
    seed: str = ""  # the seeds' figure, when it differs from ours (and why)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _fits(shape: ModelShape, setup: Setup, device: Device) -> float:

    return estimate(shape, setup, device).total_gb


def method(shape: ModelShape, setup: Setup, device: Device) -> Recommendation:
    """The most capable method whose peak fits with 10% headroom (allocator fragmentation)."""
    budget = device.memory_gb * 0.9
    need = {m: _fits(shape, replace(setup, method=m, master_copy=setup.master_copy and m == "full"), device)
            for m in ("full", "lora", "qlora")}
    shown = ", ".join(f"{m} {g:.1f} GB" for m, g in need.items())
    choice = next((m for m in ("full", "lora", "qlora") if need[m] <= budget), None)
    seed = "seeds: 7B full >= 80 GB, LoRA ~16 GB, QLoRA ~10 GB; full ~ 12 x params"
    if choice is None:
        return Recommendation("method", "qlora + gradient checkpointing / shorter cutoff",
                              f"nothing fits {device.memory_gb:.0f} GB at this length and batch ({shown}); "
                              "see the cheapest fix", seed)
    why = {"full": "full fine-tuning fits: it learns the most when data is plentiful",
           "lora": "full fine-tuning does not fit; LoRA keeps the frozen weights and trains small adapters",
           "qlora": "only a 4-bit base fits; QLoRA trades ~30% speed for ~4x smaller weights"}[choice]
    return Recommendation("method", choice, f"{why} (peaks per device: {shown}; budget {budget:.1f} GB)", seed)


def learning_rate(shape: ModelShape, method_name: str) -> Recommendation:
    b = shape.n_params / 1e9
    if method_name in ("lora", "qlora"):
        lr = 2e-4 if b < 13 else (1e-4 if b < 60 else 5e-5)
        why = "adapters start at zero and are low-rank: they need a larger step than the full weights"
        seed = "seeds: LoRA 5e-5 (one seed), 1e-4 to 2e-4 (another); we follow the latter, as the LoRA/QLoRA papers do"
    else:
        lr = 2e-5 if b < 3 else (1e-5 if b < 60 else 5e-6)
        why = "every weight moves: small steps keep what pre-training learnt"
        seed = "seeds: full 1e-5 (general 4e-5 to 5e-5); small models take larger, 70B+ smaller"
    return Recommendation("learning_rate", lr, f"{why}; {b:.2f}B parameters", seed)


def epochs(rows: int | None) -> Recommendation:
    seed = "seeds: 3-10 epochs, fewer with more data"
    if rows is None:
        return Recommendation("num_train_epochs", 3, "no data counted: 3 is a safe start; watch validation loss", seed)
    e = 5 if rows < 1000 else 3 if rows < 10_000 else 2 if rows < 100_000 else 1
    return Recommendation("num_train_epochs", e, f"{rows:,} training rows: small sets need more passes, "
                          "large sets over-fit with repeats", seed if e in (1, 2) else "")


def lora_rank(rows: int | None, method_name: str) -> Recommendation | None:
    if method_name not in ("lora", "qlora"):
        return None
    r = 16 if rows is not None and rows >= 10_000 else 8
    return Recommendation("lora_r", r, f"rank {r}: enough capacity for "
                          f"{'a large' if r == 16 else 'a small or medium'} data set; raise it if the loss plateaus "
                          "high", "seeds: rank 8-16 (~2 GB); our adapter memory is much smaller (see breakdown) - "
                          "the seed's 2 GB likely includes activations")


def cutoff(lengths: list[int] | None, current: int) -> Recommendation | None:
    if not lengths:
        return None
    import numpy as np


    arr = np.asarray(lengths)
    c = recommend_cutoff(arr, 0.95)
    over = float((arr > current).mean())
    return Recommendation("cutoff_len", c, f"covers 95% of rows (longest {int(arr.max())}); the current "
                          f"{current} cuts {over:.1%} of rows; memory grows linearly with it",
                          "seeds: pick from the length CDF, drop > 5% overlong - same rule")


def val_share(rows: int | None) -> Recommendation | None:
    if rows is None:
        return None
    if rows < 1000:
        share = min(0.2, max(0.1, 100 / rows))
        why = "small set: 10-20%, and at least 100 rows, so the validation loss means something"
    elif rows > 10_000:
        share = min(0.1, max(0.05, 1000 / rows))
        why = "large set: 5-10% (at least 1,000 rows) is plenty"
    else:
        share = 0.1
        why = "medium set: 10%"
    note = " (under 100 rows in any split: collect more data first)" if rows * share < 100 else ""
    return Recommendation("val_size", round(share, 3), why + note,
                          "seeds: < 1,000 rows 0.1-0.2 with >= 100; > 10,000 rows 0.05-0.1 with >= 1,000")


def grad_accum(setup: Setup, target: int = 32) -> Recommendation:
    per = setup.micro_batch * setup.gpus
    acc = max(1, math.ceil(target / per))
    return Recommendation("gradient_accumulation_steps", acc,
                          f"effective batch {per} x {acc} = {per * acc} (target {target}) without more memory: "
                          "accumulation only adds time", "seeds: effective batch 16/32/64/128")


def all_for(shape: ModelShape, setup: Setup, device: Device, rows: int | None = None,
            lengths: list[int] | None = None, has_val: bool = False) -> list[Recommendation]:
    """Every recommendation; the learning rate and rank follow the recommended method, and no
    validation share is suggested when the run already has a validation file."""
    m = method(shape, setup, device)
    chosen = m.value if m.value in ("full", "lora", "qlora") else setup.method
    recs = [m, learning_rate(shape, chosen), epochs(rows), lora_rank(rows, chosen), cutoff(lengths, setup.seq_len),
            None if has_val else val_share(rows), grad_accum(setup)]
    return [r for r in recs if r is not None]


def _fix_candidates(setup: Setup) -> list[tuple[str, Setup]]:
    """Single changes, in order of least quality/speed cost."""
    out: list[tuple[str, Setup]] = []
    if not setup.gradient_checkpointing:
        out.append(("enable train.gradient_checkpointing (~30% slower)", replace(setup, gradient_checkpointing=True)))
    if setup.micro_batch > 1:
        half = setup.micro_batch // 2
        out.append((f"per_device_train_batch_size={half}, gradient_accumulation_steps={setup.grad_accum * 2} "
                    "(same effective batch)", replace(setup, micro_batch=half, grad_accum=setup.grad_accum * 2)))
    if setup.method == "full":
        out.append(("method.type=lora", replace(setup, method="lora", master_copy=False)))
    if setup.method in ("full", "lora"):
        out.append(("method.type=qlora (needs bitsandbytes)",
                    replace(setup, method="qlora", master_copy=False, gradient_checkpointing=True)))
    if setup.seq_len > 512:
        out.append((f"data.cutoff_len={setup.seq_len // 2}", replace(setup, seq_len=setup.seq_len // 2)))
    return out


def cheapest_fix(shape: ModelShape, setup: Setup, device: Device) -> tuple[str, float] | None:
    """The first single change whose peak fits; else the changes applied one after another (in the same
    order) until it fits; (description, GB), or None when even all of them together do not fit."""
    for desc, s in _fix_candidates(setup):
        gb = _fits(shape, s, device)
        if gb <= device.memory_gb:
            return desc, gb
    steps: list[str] = []
    current = setup
    for _ in range(8):  # each round applies the cheapest remaining change; halving can repeat
        options = _fix_candidates(current)
        if not options:
            return None
        desc, current = options[0]
        steps.append(desc)
        gb = _fits(shape, current, device)
        if gb <= device.memory_gb:
            return " + ".join(steps), gb
    return None


__all__ = ["GB", "Recommendation", "all_for", "cheapest_fix"]

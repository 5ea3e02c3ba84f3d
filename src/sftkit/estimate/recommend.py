"""Recommendations with the reason beside each and the guide's rule it applies.

The rules are the guide's (seeds 003, 参数调优篇): the method follows the data size first and the
memory second (LoRA/QLoRA below ~1,000 rows; full fine-tuning only with plenty of data, > 10,000
rows, and memory to spare); the effective batch never exceeds the training rows; epochs, learning
rate, LoRA rank and validation share follow its tables. ``rule`` quotes the rule, ``why`` shows this
run's numbers, ``seed`` says where a seed's figure differs from ours and why.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from sftkit.data.stats import recommend_cutoff
from sftkit.estimate.core import estimate
from sftkit.estimate.device import Device
from sftkit.estimate.memory import GB, Setup
from sftkit.estimate.shape import ModelShape

FEW_ROWS = 1_000  # the guide: below this LoRA/QLoRA (and a 10-20% validation share)
PLENTY_ROWS = 10_000  # the guide's "large data set"; LIMA / InstructGPT used ~10k rows for SFT


@dataclass(frozen=True, slots=True)
class Recommendation:
    what: str
    value: Any
    why: str
    seed: str = ""  # the seeds' figure, when it differs from ours (and why)
    rule: str = ""  # the guide's rule this applies

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _fits(shape: ModelShape, setup: Setup, device: Device) -> float:

    return estimate(shape, setup, device).total_gb


_METHOD_RULE = ("guide 7/18: LoRA/QLoRA below ~1,000 rows (PEFT lowers the over-fitting risk); full fine-tuning "
                "has the higher ceiling but over-fits easily and needs ~12 x params of memory: only with plenty of "
                f"data (> {PLENTY_ROWS:,} rows) and memory")


def _by_data(rows: int | None) -> tuple[tuple[str, ...], str]:
    """Methods in order of preference for this much data, and why."""
    if rows is None:
        return ("lora", "qlora"), ("no training rows counted: LoRA is the safe default (full fine-tuning pays off "
                                   f"only with > {PLENTY_ROWS:,} rows)")
    if rows < FEW_ROWS:
        return ("lora", "qlora"), (f"{rows:,} training rows (< {FEW_ROWS:,}): full fine-tuning would over-fit them; "
                                   "LoRA trains small adapters on the frozen weights")
    if rows < PLENTY_ROWS:
        return ("lora", "qlora"), (f"{rows:,} training rows: LoRA learns this much data about as well as full "
                                   f"fine-tuning at a fraction of the memory (full pays off above {PLENTY_ROWS:,})")
    return ("full", "lora", "qlora"), f"{rows:,} training rows: enough data for full fine-tuning's higher ceiling"


def method(shape: ModelShape, setup: Setup, device: Device, rows: int | None = None) -> Recommendation:
    """The method the data size calls for, falling back to a smaller footprint until one fits with 10%
    headroom (allocator fragmentation)."""
    budget = device.memory_gb * 0.9
    need = {m: _fits(shape, replace(setup, method=m, master_copy=setup.master_copy and m == "full"), device)
            for m in ("full", "lora", "qlora")}
    shown = ", ".join(f"{m} {g:.1f} GB" for m, g in need.items())
    order, data_why = _by_data(rows)
    choice = next((m for m in order if need[m] <= budget), None)
    seed = "seeds: 7B full >= 80 GB, LoRA ~16 GB, QLoRA ~10 GB; full ~ 12 x params"
    if choice is None:
        return Recommendation("method", "qlora + gradient checkpointing / shorter cutoff",
                              f"{data_why}; but nothing fits {device.memory_gb:.0f} GB at this length and batch "
                              f"({shown}); see the cheapest fix", seed, _METHOD_RULE)
    memory_why = "" if choice == order[0] else (
        f"; {order[0]} does not fit, " + ("LoRA keeps the frozen weights and trains small adapters"
                                          if choice == "lora" else "only a 4-bit base fits: QLoRA trades ~30% "
                                          "speed for ~4x smaller weights"))
    return Recommendation("method", choice, f"{data_why}{memory_why} (peaks per device: {shown}; budget "
                          f"{budget:.1f} GB)", seed, _METHOD_RULE)


def learning_rate(shape: ModelShape, method_name: str) -> Recommendation:
    b = shape.n_params / 1e9
    rule = ("guide 16.1: full fine-tuning 1e-5 (keeps what pre-training learnt); LoRA can take a larger rate; "
            "small models (1-7B) larger, 70B+ smaller")
    if method_name in ("lora", "qlora"):
        lr = 2e-4 if b < 13 else (1e-4 if b < 60 else 5e-5)
        why = "adapters start at zero and are low-rank: they need a larger step than the full weights"
        seed = ("seeds: LoRA 5e-5 (guide 003), 2e-4 (the Qwen2 recipes 002/004); we follow the recipes, as the "
                "LoRA/QLoRA papers do")
    else:
        lr = 2e-5 if b < 3 else (1e-5 if b < 60 else 5e-6)
        why = "every weight moves: small steps keep what pre-training learnt"
        seed = "seeds: full 1e-5 (general 4e-5 to 5e-5); small models take larger, 70B+ smaller"
    return Recommendation("learning_rate", lr, f"{why}; {b:.2f}B parameters, {method_name}", seed, rule)


def epochs(rows: int | None) -> Recommendation:
    rule = "guide 16.2: 3-10 epochs, fewer the more data; stop early when the validation loss turns up"
    seed = "seeds: 3-10 epochs; above 10,000 rows we go below 3, since every pass over that much data costs hours"
    if rows is None:
        return Recommendation("num_train_epochs", 3, "no data counted: 3 is a safe start; watch validation loss",
                              "", rule)
    e = 5 if rows < FEW_ROWS else 3 if rows < PLENTY_ROWS else 2 if rows < 100_000 else 1
    return Recommendation("num_train_epochs", e, f"{rows:,} training rows: small sets need more passes, "
                          "large sets over-fit with repeats", seed if e in (1, 2) else "", rule)


def lora_rank(rows: int | None, method_name: str) -> Recommendation | None:
    if method_name not in ("lora", "qlora"):
        return None
    r = 16 if rows is not None and rows >= PLENTY_ROWS else 8
    return Recommendation("lora_r", r, f"rank {r}: enough capacity for "
                          f"{'a large' if r == 16 else 'a small or medium'} data set; raise it if the loss plateaus "
                          "high", "seeds: rank 8-16 (~2 GB); our adapter memory is much smaller (see breakdown) - "
                          "the seed's 2 GB likely includes activations",
                          "guide 16.5: rank 8-16; small ranks are stable, large ones fit complex tasks; raise it "
                          "when the model does not learn")


def cutoff(lengths: list[int] | None, current: int) -> Recommendation | None:
    if not lengths:
        return None
    import numpy as np


    arr = np.asarray(lengths)
    c = recommend_cutoff(arr, 0.95)
    over = float((arr > current).mean())
    return Recommendation("cutoff_len", c, f"covers 95% of rows (longest {int(arr.max())}); the current "
                          f"{current} cuts {over:.1%} of rows; memory grows linearly with it",
                          "seeds: pick from the length CDF, drop > 5% overlong - same rule",
                          "guide 16.4: set it from the length distribution; drop rows beyond it when over 5% are")


def val_share(rows: int | None) -> Recommendation | None:
    if rows is None:
        return None
    if rows < FEW_ROWS:
        share = min(0.2, max(0.1, 100 / rows))
        why = "small set: 10-20%, and at least 100 rows, so the validation loss means something"
    elif rows > PLENTY_ROWS:
        share = min(0.1, max(0.05, 1000 / rows))
        why = "large set: 5-10% (at least 1,000 rows) is plenty"
    else:
        share = 0.1
        why = "medium set: 10%"
    note = " (under 100 rows in any split: collect more data first)" if rows * share < 100 else ""
    return Recommendation("val_size", round(share, 3), why + note,
                          "seeds: < 1,000 rows 0.1-0.2 with >= 100; > 10,000 rows 0.05-0.1 with >= 1,000",
                          "guide 16.6: < 1,000 rows 0.1-0.2 (>= 100 rows); > 10,000 rows 0.05-0.1 (>= 1,000 rows)")


def _batch_target(rows: int | None, target: int) -> int:
    """The effective batch to aim for: ``target``, but small sets get at least 4 optimizer steps per epoch
    (a power of two <= rows / 4), so an update never averages over more rows than there are."""
    if rows is None or rows >= 4 * target:
        return target
    return max(1, 2 ** int(math.log2(max(1, rows // 4))))


def grad_accum(setup: Setup, rows: int | None = None, target: int = 32) -> Recommendation:
    per = setup.micro_batch * setup.gpus
    want = _batch_target(rows, target)
    acc = max(1, want // per) if per < want else 1
    rule = ("guide 16.3: effective batch = per-device batch x accumulation x GPUs, 16/32/64/128; larger converges "
            "faster but over-fits more easily; never more than the training rows")
    why = f"effective batch {per} x {acc} = {per * acc}"
    if rows is not None and want < target:
        why += f" for {rows:,} training rows: at least 4 optimizer steps per epoch (a batch of {target} would be "
        why += "larger than the data)" if target > rows else "only a few steps per epoch)"
    else:
        why += f" (target {target}) without more memory: accumulation only adds time"
    if rows is not None and per > rows:
        why += (f"; the per-device batch x devices ({per}) alone exceeds the {rows:,} rows: lower "
                "per_device_train_batch_size")
    return Recommendation("gradient_accumulation_steps", acc, why, "seeds: effective batch 16/32/64/128", rule)


def all_for(shape: ModelShape, setup: Setup, device: Device, rows: int | None = None,
            lengths: list[int] | None = None, has_val: bool = False) -> list[Recommendation]:
    """Every recommendation; the learning rate and rank follow the recommended method, and no
    validation share is suggested when the run already has a validation file."""
    m = method(shape, setup, device, rows)
    chosen = m.value if m.value in ("full", "lora", "qlora") else setup.method
    recs = [m, learning_rate(shape, chosen), epochs(rows), lora_rank(rows, chosen), cutoff(lengths, setup.seq_len),
            None if has_val else val_share(rows), grad_accum(setup, rows)]
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

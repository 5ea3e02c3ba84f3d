"""Training diagnostics that say what to do: the loss-curve readings of the guide, made automatic.

The guide reads a run from its curves (训练过程特征, 参数调优篇): validation loss turning up while the
training loss keeps falling is over-fitting; a first epoch that memorised the data shows as a sudden
drop at the start of the second; a loss that does not fall means a learning rate, mask, template or
capacity problem; a loss that climbs means the learning rate is too high. Each check here is a pure
function of the logged losses (``find``), so its thresholds are tested on synthetic curves;
``sftkit.train.watch.Diagnostics`` feeds it the Trainer's real logs during a run. A finding names
the numbers that triggered it, the likely causes the guide lists, and what to change.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

Point = tuple[int, float, float]  # (step, loss, epoch)


@dataclass(frozen=True, slots=True)
class Thresholds:
    rising_evals: int = 2
    """Over-fitting: validation loss rose this many evaluations in a row while training loss fell."""
    flat_after_steps: int = 30
    """Flat loss: after this many optimizer steps ..."""
    flat_min_drop: float = 0.02
    """... the training loss fell by less than this share of where it started."""
    near_zero: float = 0.05
    """Memorised: training loss under this ..."""
    early_share: float = 0.5
    """... within this share of the planned steps."""
    epoch_drop: float = 0.5
    """Memorised: the loss at the start of epoch 2 is below this share of the loss at the end of epoch 1."""
    diverge_rise: float = 0.5
    """Diverging: the recent training loss is this share above its lowest (and above where it started)."""
    window: int = 3
    """Logged losses averaged to smooth a reading."""


@dataclass(slots=True)
class Context:
    """What the run was set up with: the numbers a diagnosis quotes."""

    learning_rate: float
    method: str = "lora"
    lora_r: int | None = None
    epochs: float = 3.0
    train_rows: int = 0
    duplicate_rows: int = 0
    trainable_share: float | None = None  # tokens that carry loss / all training tokens
    mask: str = "assistant"
    warmup_ratio: float = 0.0
    max_grad_norm: float = 1.0
    load_best: bool = False


@dataclass(slots=True)
class Finding:
    kind: str  # overfitting | memorised | flat | diverging
    step: int
    title: str
    message: str
    causes: list[str]
    actions: list[str]
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _lr_note(ctx: Context) -> str:
    usual = "~2e-4" if ctx.method in ("lora", "qlora") else "~1e-5"
    return f"learning rate {ctx.learning_rate:g} ({ctx.method}: the guide's usual {usual})"


def _memorising_causes(ctx: Context) -> list[str]:
    out = []
    if ctx.duplicate_rows:
        out.append(f"data duplicates: {ctx.duplicate_rows} of {ctx.train_rows} training rows are exact duplicates")
    out.append(f"too many passes over too little data: {ctx.epochs:g} epochs over {ctx.train_rows:,} rows")
    out.append(_lr_note(ctx))
    if ctx.method == "full" and ctx.train_rows < 1000:
        out.append("full fine-tuning of under 1,000 rows (the guide: LoRA/QLoRA for small sets)")
    if ctx.mask == "all":
        out.append("masking: data.mask=all trains on the prompts too, which repeat across rows")
    return out


def overfitting(evals: list[Point], train: list[Point], ctx: Context, th: Thresholds) -> Finding | None:
    n = th.rising_evals
    if len(evals) < n + 1:
        return None
    span = evals[-(n + 1):]
    if not all(b[1] > a[1] for a, b in pairwise(span)):
        return None
    before = [t[1] for t in train if t[0] <= span[0][0]][-th.window:]
    after = [t[1] for t in train if span[0][0] < t[0] <= span[-1][0]][-th.window:]
    if not before or not after or _mean(after) >= _mean(before):
        return None  # both rising is divergence, not over-fitting
    best = min(evals, key=lambda e: e[1])
    curve = " -> ".join(f"{e[1]:.4g} (step {e[0]})" for e in span)
    return Finding(
        "overfitting", span[-1][0], f"over-fitting: validation loss rose for {n} evaluations while training "
        "loss fell",
        f"validation loss {curve} while training loss fell {_mean(before):.4g} -> {_mean(after):.4g}; the lowest "
        f"validation loss was {best[1]:.4g} at step {best[0]} (epoch {best[2]:.2g}). The guide: 训练loss↓ 验证loss↑ "
        "is over-fitting (过拟合): the model memorises the training rows instead of generalising.",
        _memorising_causes(ctx),
        [f"train fewer epochs: validation loss was lowest at epoch {best[2]:.2g} of {ctx.epochs:g}",
         "train.early_stopping_patience: 2 stops when it turns (and finishes with the best weights)",
         "lower the learning rate, add data (or de-duplicate it: sft data dedup), or raise method.dropout"],
        {"evals": [list(e[:2]) for e in span], "train_before": _mean(before), "train_after": _mean(after),
         "best_step": best[0], "best_eval_loss": best[1]})


def flat(train: list[Point], ctx: Context, th: Thresholds) -> Finding | None:
    if len(train) < 2 * th.window or train[-1][0] < th.flat_after_steps:
        return None
    first, last = _mean([t[1] for t in train[: th.window]]), _mean([t[1] for t in train[-th.window:]])
    drop = (first - last) / first if first > 0 else 0.0
    if drop >= th.flat_min_drop:
        return None
    share = f"{ctx.trainable_share:.0%} of training tokens carry loss" if ctx.trainable_share is not None else ""
    causes = [_lr_note(ctx) + ": too low a rate barely moves the weights",
              f"masking (data.mask={ctx.mask}){': ' + share if share else ''}: check which tokens are trained "
              "with `sft template render`",
              "template: the rows rendered with a template the model does not know (`sft template check`)",
              "conflicting answers to the same prompt cancel out (`sft data lint`)"]
    if ctx.method in ("lora", "qlora"):
        causes.append(f"capacity: LoRA rank {ctx.lora_r} (the guide: raise the rank when the model does not learn)")
    return Finding(
        "flat", train[-1][0], f"loss is flat: training loss has not fallen after {train[-1][0]} steps",
        f"training loss {first:.4g} (steps {train[0][0]}-{train[th.window - 1][0]}) -> {last:.4g} (steps "
        f"{train[-th.window][0]}-{train[-1][0]}): {-drop:+.1%} after {train[-1][0]} optimizer steps (a learning run "
        f"falls by {th.flat_min_drop:.0%} or more).",
        causes,
        ["raise train.learning_rate (e.g. 10x) and check the curve again after a few dozen steps",
         "run `sft template check` and `sft template render` on a training row: the loss must cover the replies",
         "raise method.r (LoRA) if the rate is already at the guide's value"],
        {"first": first, "last": last, "drop": drop, "steps": train[-1][0]})


def near_zero(train: list[Point], ctx: Context, th: Thresholds, planned_steps: int) -> Finding | None:
    early = [t for t in train if t[0] <= th.early_share * planned_steps]
    hit = next((t for t in early if t[1] < th.near_zero), None)
    if hit is None:
        return None
    return Finding(
        "memorised", hit[0], "training loss is ~0 early: the model memorised its training data",
        f"training loss {hit[1]:.3g} at step {hit[0]} of {planned_steps} ({hit[0] / max(1, planned_steps):.0%} of "
        f"the run; the check: under {th.near_zero:g} in the first {th.early_share:.0%}). A model that reproduces its "
        "training answers this early has learnt them by heart and rarely generalises (expected only when the "
        "replies are a few fixed strings, such as class labels: then watch the validation loss).",
        _memorising_causes(ctx),
        ["remove duplicates (sft data dedup FILE --out DEDUPED) and hold out a validation set to watch",
         "train fewer epochs or on more data; lower the learning rate",
         "check the mask with `sft template render`: only the replies should carry loss"],
        {"loss": hit[1], "step": hit[0], "planned_steps": planned_steps})


def epoch_drop(train: list[Point], ctx: Context, th: Thresholds) -> Finding | None:
    end1 = [t for t in train if t[2] <= 1.0][-th.window:]
    start2 = [t for t in train if 1.0 < t[2] <= 2.0][: th.window]
    if len(end1) < th.window or len(start2) < th.window:
        return None
    a, b = _mean([t[1] for t in end1]), _mean([t[1] for t in start2])
    if b >= th.epoch_drop * a:
        return None
    return Finding(
        "memorised", start2[-1][0], "loss dropped sharply at the start of epoch 2: epoch 1 memorised the data",
        f"mean training loss {a:.4g} at the end of epoch 1 -> {b:.4g} at the start of epoch 2 ({b / a - 1:+.0%}). "
        "The guide (训练过程特征): a sudden drop in the second epoch means the model already remembered the "
        "training set in the first; what follows is memorisation.",
        _memorising_causes(ctx),
        ["watch the validation loss: stop (train.early_stopping_patience) when it turns up",
         "fewer epochs (1-2 may be enough for this model and data), a lower learning rate, or more data"],
        {"end_of_epoch_1": a, "start_of_epoch_2": b})


def diverging(train: list[Point], ctx: Context, th: Thresholds) -> Finding | None:
    w = th.window
    if len(train) < 3 * w:
        return None
    smooth = [_mean([t[1] for t in train[i : i + w]]) for i in range(len(train) - w + 1)]
    low_i = min(range(len(smooth) - 1), key=smooth.__getitem__)
    now = smooth[-1]
    if now < (1 + th.diverge_rise) * smooth[low_i] or now <= smooth[0]:
        return None
    causes = [_lr_note(ctx) + ": too high a rate overshoots"]
    if not ctx.max_grad_norm:
        causes.append("no gradient clipping (train.max_grad_norm 0)")
    if not ctx.warmup_ratio:
        causes.append("no warm-up (train.warmup_ratio 0): the first steps hit untrained adapters at full rate")
    return Finding(
        "diverging", train[-1][0], "training loss is rising: the run diverges",
        f"training loss rose from its low of {smooth[low_i]:.4g} (steps {train[low_i][0]}-{train[low_i + w - 1][0]}) "
        f"to {now:.4g} (steps {train[-w][0]}-{train[-1][0]}), {now / smooth[low_i] - 1:+.0%}, above where it "
        f"started ({smooth[0]:.4g}).",
        causes,
        ["lower train.learning_rate (e.g. 10x)", "train.max_grad_norm: 1.0 and train.warmup_ratio: 0.03"],
        {"low": smooth[low_i], "now": now, "start": smooth[0]})


def find(train: list[Point], evals: list[Point], ctx: Context, planned_steps: int,
         th: Thresholds | None = None) -> list[Finding]:
    """Every check that fires on these curves (at most one finding per check)."""
    th = th or Thresholds()
    found = [overfitting(evals, train, ctx, th), diverging(train, ctx, th), epoch_drop(train, ctx, th),
             near_zero(train, ctx, th, planned_steps), flat(train, ctx, th)]
    return [f for f in found if f is not None]


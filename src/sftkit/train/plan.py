"""Per-device training defaults, chosen in one place: attention kernel, weight dtype, loss head, batch layout,
LoRA kernel.

``plan(cfg, caps)`` turns what the config leaves open (``model.dtype: auto``, ``model.attn_implementation``
unset, ``train.loss_head: auto``, ``train.lora_kernel: auto``) into a ``TrainPlan``: one ``Choice`` (value +
reason) per decision. A value the config states is kept and says so. ``sft train`` prints the plan and
records it (a ``# plan:`` comment block under config.yaml, ``plan`` / ``plan_reasons`` in
train_summary.json); ``sft estimate --json`` returns it, also for a device that is not here
(``--device cuda``), so every choice is testable on a CPU.

What a GPU user gets (LLaMA-Factory / Unsloth habits), and why:
  * attention: flash-attn's varlen kernel when installed, else PyTorch's own (``sftkit_varlen``), both
    padding-free; else sdpa with the block-diagonal mask from position ids. Never the per-example loop
    (``sftkit_segments``), which wins on a CPU and costs 5.8x on an H200 (shared/data/gpu).
  * weights: bf16 for lora/qlora/freeze (frozen weights need no fp32), fp32 for full fine-tuning.
  * loss head: never the full [tokens x vocab] logits (``sftkit.train.losshead``, or Liger's on CUDA).
  * LoRA layers: sftkit's fused layer (``sftkit.train.fastlora``: base projection, dropout and adapter in one
    autograd function, peft's values) wherever the adapter is plain LoRA on an unsharded ``nn.Linear``.
Two choices are confirmed on the device after planning (``confirm``): torch's varlen kernel is run once
against sdpa, and the loss head against the loaded model; either falls back, with the reason, when it fails.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sftkit.core.config import Method, RunConfig
from sftkit.core.stagecfg import Stage
from sftkit.hub.device import Capabilities
from sftkit.hub.models import resolve
from sftkit.train import attention

KEYS = ("attn_implementation", "dtype", "loss_head", "packing", "lora_kernel")
FLASH_MIN_CAPABILITY = (8, 0)  # flash kernels (flash-attn 2, torch varlen): Ampere and newer
VARLEN = "sftkit_varlen"
PADDING_FREE_KERNELS = ("flash_attention_2", VARLEN)


@dataclass(frozen=True)
class Choice:
    value: str
    reason: str


@dataclass(frozen=True)
class TrainPlan:
    attn_implementation: Choice
    dtype: Choice
    loss_head: Choice
    packing: Choice
    device: str
    lora_kernel: Choice

    def values(self) -> dict[str, str]:
        return {k: getattr(self, k).value for k in KEYS}

    def reasons(self) -> dict[str, str]:
        return {k: getattr(self, k).reason for k in KEYS}

    @property
    def padding_free(self) -> bool:
        return self.packing.value == "padding_free"

    def with_choice(self, key: str, value: str, reason: str) -> TrainPlan:
        return replace(self, **{key: Choice(value, reason)})

    def lines(self) -> list[str]:
        """One line per decision, for the console."""
        return [f"{k}: {getattr(self, k).value} ({getattr(self, k).reason})" for k in KEYS]

    def comment_block(self) -> str:
        """Appended to a run's config.yaml: comments, so the file still loads as the user's config."""
        head = (f"# plan: what sftkit chose on {self.device} for the values left open above (auto / unset);\n"
                "# a record, not settings: `sft train --resume` plans again on the machine it runs on.\n")
        return head + "".join(f"#   {k}: {getattr(self, k).value}  # {getattr(self, k).reason}\n" for k in KEYS)


def _device_name(caps: Capabilities) -> str:
    if not caps.cuda:
        return "cpu"
    cc = f", compute capability {caps.capability[0]}.{caps.capability[1]}" if caps.capability else ""
    return f"cuda ({caps.name or 'GPU'}{cc})"


def _half(cfg: RunConfig, caps: Capabilities) -> str:
    return "bfloat16" if caps.bf16 and not cfg.train.fp16 else "float16"


def choose_dtype(cfg: RunConfig, caps: Capabilities) -> Choice:
    """``model.dtype``: the user's value, else per method and device."""
    if cfg.model.dtype != "auto":
        return Choice(cfg.model.dtype, "model.dtype in the config")
    m = cfg.method.type
    if m is Method.qlora:
        half = _half(cfg, caps) if caps.cuda else "bfloat16"
        return Choice(half, "qlora computes in 16 bits (bnb_4bit_compute_dtype); keeping the non-4-bit weights "
                            "(embeddings, norms, head) in it too keeps the residual stream, MLP activations and "
                            "logits 16-bit instead of fp32")
    if not caps.cuda:
        return Choice("float32", "CPU: fp32 weights (exact); train.bf16 runs the matmuls in bf16 under autocast")
    half = _half(cfg, caps)
    if m is Method.lora:
        return Choice(half, f"lora on a GPU: the base weights are frozen, so {half} halves their memory and skips "
                            "autocast's per-step weight casts; the adapters and their optimizer state stay fp32")
    if m is Method.freeze and half == "bfloat16":
        return Choice(half, "freeze on a GPU with bf16: the frozen layers (most of the model) in bf16; the trained "
                            "layers are bf16 too (use model.dtype: float32 with train.bf16 for fp32 updates)")
    why = ("full fine-tuning updates every weight: AdamW steps at a fine-tuning learning rate are below bf16's "
           "resolution, so weights and optimizer states stay fp32 (train.bf16 gives bf16 matmuls)")
    if m is Method.freeze:
        why = f"freeze on a GPU without bf16 ({caps.device()}): fp16 weights cannot be trained safely with AdamW"
    return Choice("float32", why)


def _attention(cfg: RunConfig, caps: Capabilities, plain: bool, dtype: str) -> Choice:
    if cfg.train.backend == "unsloth":
        return Choice("unsloth", "train.backend=unsloth picks its own kernels")
    if cfg.model.attn_implementation:
        return Choice(cfg.model.attn_implementation, "model.attn_implementation in the config")
    if not plain:
        return Choice("sdpa", "this model's attention is not plain causal attention (sliding window, soft-capping "
                              "or another family): transformers' sdpa")
    if not caps.cuda:
        return Choice(attention.NAME, "CPU: each packed example is its own causal attention (sftkit's block "
                                      "attention), exact and cheaper than sdpa's block-diagonal mask")
    return _gpu_attention(cfg, caps, dtype)


def _gpu_attention(cfg: RunConfig, caps: Capabilities, dtype: str) -> Choice:
    """The fastest exact kernel present: never the per-example loop (5.8x slower than sdpa on an H200)."""
    if caps.capability and caps.capability < FLASH_MIN_CAPABILITY:
        return Choice("sdpa", f"{caps.device()}: no flash kernels before Ampere (8.0); sdpa with the "
                              "block-diagonal mask from position ids")
    if dtype == "float32" and not (cfg.train.bf16 or cfg.train.fp16):
        return Choice("sdpa", "fp32 weights without train.bf16/fp16: flash kernels compute in 16 bits only; sdpa "
                              "with the block-diagonal mask from position ids (set train.bf16: true for them)")
    if caps.has("flash_attn"):
        return Choice("flash_attention_2", "flash-attn is installed: its variable-length kernel, padding-free")
    if caps.torch_varlen:
        return Choice(VARLEN, "flash-attn is not installed; this torch ships torch.nn.attention.varlen "
                              "(flash kernels, padding-free), checked against sdpa on the device at start")
    return Choice("sdpa", "neither flash-attn nor torch's varlen attention is here: sdpa with the "
                          "block-diagonal mask from position ids")


def sharded_weights(cfg: RunConfig) -> str | None:
    """Why the weights (lm_head's among them) are sharded across ranks (ZeRO-3 / FSDP), or None."""
    if cfg.train.fsdp:
        return "train.fsdp shards lm_head's weight"
    name = cfg.train.deepspeed
    if not name:
        return None
    if name.startswith("zero3"):
        return f"train.deepspeed={name} (ZeRO-3) shards lm_head's weight"
    try:
        stage = json.loads(Path(name).read_text()).get("zero_optimization", {}).get("stage")
    except (OSError, ValueError, AttributeError):
        return None
    return f"train.deepspeed={name} (ZeRO-3) shards lm_head's weight" if stage == 3 else None


def _loss_head(cfg: RunConfig, caps: Capabilities) -> Choice:
    want = cfg.train.loss_head
    if cfg.train.backend == "unsloth":
        return Choice("unsloth", "train.backend=unsloth computes its own loss")
    if cfg.train.use_liger_kernel:
        return Choice("liger", "train.use_liger_kernel: Liger patches the model with its fused linear "
                               "cross-entropy")
    if want == "plain":
        return Choice("plain", "train.loss_head=plain in the config")
    sharded = sharded_weights(cfg)
    if sharded:
        return Choice("plain", f"{sharded}; the chunked head reads the whole weight")
    if want == "liger" or (want == "auto" and caps.cuda and caps.has("liger_kernel")):
        return Choice("liger", "Liger's fused linear cross-entropy (CUDA, liger-kernel): the [tokens x vocab] "
                               "logits are never held" + (" (train.loss_head=liger)" if want == "liger" else ""))
    why = "train.loss_head=chunked in the config; " if want == "chunked" else ""
    return Choice("chunked", why + "sftkit's chunked head: prompt tokens skip the head, the rest go through in "
                                   "chunks of ~256 MB of logits, never [tokens x vocab] (same loss and gradients)")


def _lora_kernel(cfg: RunConfig) -> Choice:
    """``train.lora_kernel``: sftkit's fused LoRA layer wherever it computes what peft's does."""
    m, want = cfg.method, cfg.train.lora_kernel
    if m.type not in (Method.lora, Method.qlora):
        return Choice("none", f"method.type={m.type.value} trains no LoRA adapters")
    if want == "peft":
        return Choice("peft", "train.lora_kernel=peft in the config")
    why = _not_fusable(cfg)
    if why:
        stated = "train.lora_kernel=fused does not apply: " if want == "fused" else ""
        return Choice("peft", f"{stated}{why}; peft's LoRA forward")
    stated = "train.lora_kernel=fused in the config; " if want == "fused" else ""
    return Choice("fused", stated + "sftkit's fused LoRA layer: base projection, dropout and adapter in one "
                                    "autograd function, fewer passes over the activations (same values as peft's)")


def _not_fusable(cfg: RunConfig) -> str | None:
    if cfg.train.backend == "unsloth":
        return "train.backend=unsloth brings its own LoRA kernels"
    if cfg.method.type is Method.qlora:
        return "method.type=qlora: the base layers are 4-bit (bitsandbytes), which the fused layer does not read"
    if cfg.method.use_dora:
        return "method.use_dora: DoRA rescales the weight, which the fused layer does not compute"
    if not sharded_weights(cfg):
        return None
    how = "train.fsdp (FSDP)" if cfg.train.fsdp else f"train.deepspeed={cfg.train.deepspeed} (ZeRO-3)"
    return f"{how} shards the weights and gathers each sub-module's only when that sub-module runs"


def _packing(cfg: RunConfig, attn: str) -> Choice:
    what = f"packed rows of <= {cfg.data.cutoff_len} tokens" if cfg.train.packing else "the batch's examples"
    if attn in PADDING_FREE_KERNELS:
        return Choice("padding_free", f"{what} concatenated into one row, position ids restarting per example: "
                                      f"no padding, and {attn} attends within each example only")
    if cfg.train.packing:
        return Choice("packed", f"{what}, position ids restarting per example (block-diagonal attention)")
    return Choice("padded", "train.packing is off: each batch is padded to its longest row (grouped by length); "
                            "train.packing: true removes the padding")


def plain_attention(model_config: Any | None, cutoff_len: int) -> bool:
    """True when the model's attention is plain causal attention (or nothing says otherwise)."""
    return True if model_config is None else attention.supports(model_config, cutoff_len)


def plan(cfg: RunConfig, caps: Capabilities, model_config: Any | None = None) -> TrainPlan:
    """The decisions for ``cfg`` on a machine with ``caps``. ``model_config``: the model's transformers
    config (its family decides whether the fast kernels apply); None assumes a plain (Llama-like) model."""
    dtype = choose_dtype(cfg, caps)
    attn = _attention(cfg, caps, plain_attention(model_config, cfg.data.cutoff_len), dtype.value)
    p = TrainPlan(attn, dtype, _loss_head(cfg, caps), _packing(cfg, attn.value), _device_name(caps),
                  _lora_kernel(cfg))
    return p if cfg.stage in (Stage.sft, Stage.pt) else _for_trl_stage(cfg, p)


def _for_trl_stage(cfg: RunConfig, p: TrainPlan) -> TrainPlan:
    """dpo/kto/orpo/simpo/distill train through TRL's trainers: they compute log-probabilities (or the
    teacher's divergence) from the full logits and batch their rows padded, so neither the chunked head
    nor a padding-free kernel applies. A value the config states is still kept."""
    stage = cfg.stage.value
    if p.loss_head.value in ("chunked", "liger") and "use_liger_kernel" not in p.loss_head.reason:
        p = p.with_choice("loss_head", "plain", f"stage {stage}: TRL's trainer computes its loss from the full logits")
    if p.attn_implementation.value in PADDING_FREE_KERNELS and not cfg.model.attn_implementation:
        p = p.with_choice("attn_implementation", "sdpa", f"stage {stage}: TRL's trainer pads its batches, so the "
                                                        "padding-free kernels do not apply; sdpa with the padding mask")
    if p.packing.value != "padded":
        p = p.with_choice("packing", "padded", f"stage {stage}: each batch is padded to its longest row")
    return p


def model_config_of(cfg: RunConfig) -> Any | None:
    """The model's transformers config (config.json only, no weights); None when it cannot be read here."""
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(resolve(cfg.model.name_or_path).path,
                                          trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError, ImportError):
        return None


def confirm_attention(p: TrainPlan, device: Any) -> TrainPlan:
    """Run torch's varlen kernel once on ``device`` against sdpa (forward and backward); on any failure or
    mismatch fall back to sdpa, saying why. Other kernels are taken as planned."""
    if p.attn_implementation.value != VARLEN:
        return p
    from sftkit.train import varlen

    dtype = p.dtype.value if p.dtype.value != "float32" else "bfloat16"
    problem = varlen.probe(device, dtype)
    if problem is None:
        return p
    why = f"torch's varlen attention failed its check on this device ({problem}); sdpa with the block-diagonal mask"
    attn = Choice("sdpa", why)
    return replace(p, attn_implementation=attn, packing=_packing_after_fallback(p))


def _packing_after_fallback(p: TrainPlan) -> Choice:
    if "packed rows" in p.packing.reason:
        return Choice("packed", "packed rows, position ids restarting per example (block-diagonal attention)")
    return Choice("padded", "each batch is padded to its longest row (grouped by length)")


def confirm_loss_head(p: TrainPlan, model: Any) -> TrainPlan:
    """The chunked / Liger head stands in for the model's own loss only where it reproduces it."""
    if p.loss_head.value not in ("chunked", "liger") or "use_liger_kernel" in p.loss_head.reason:
        return p
    from sftkit.train.losshead import unsupported_reason

    reason = unsupported_reason(model)
    if reason is None:
        return p
    return p.with_choice("loss_head", "plain", f"{reason}: the model's own loss (full logits)")


def for_run(cfg: RunConfig, model_path: Path, caps: Capabilities) -> TrainPlan:
    """The plan ``sft train`` uses: the model's family from its config.json, torch's varlen kernel checked
    on this process's GPU (each rank of a multi-GPU run plans for its own device)."""
    import torch
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(model_path, trust_remote_code=cfg.model.trust_remote_code)
    p = plan(cfg, caps, model_config)
    if caps.cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        p = confirm_liger_head(confirm_attention(p, device), device)
    return p


def confirm_liger_head(p: TrainPlan, device: Any) -> TrainPlan:
    """Liger's fused head once on ``device`` against sftkit's chunked head (loss and gradients); on any
    failure or mismatch the chunked head, saying why. Liger's API has changed between releases."""
    if p.loss_head.value != "liger" or "use_liger_kernel" in p.loss_head.reason:
        return p
    problem = liger_head_problem(device)
    if problem is None:
        return p
    return p.with_choice("loss_head", "chunked", f"Liger's fused head failed its check on this device ({problem}); "
                                                 "sftkit's chunked head (same loss, no full logits)")


def liger_head_problem(device: Any) -> str | None:
    import torch

    from sftkit.train.losshead import linear_cross_entropy

    gen = torch.Generator().manual_seed(0)
    h, w = torch.randn(40, 64, generator=gen), torch.randn(300, 64, generator=gen) * 0.1
    labels = torch.randint(0, 300, (40,), generator=gen)
    labels[:7] = -100
    outs = []
    try:
        for backend in ("liger", "chunked"):
            hh = h.to(device).requires_grad_()
            loss = linear_cross_entropy(hh, w.to(device), labels.to(device), backend=backend, reduction="sum")
            loss.backward()
            outs.append((loss.detach().float().cpu(), hh.grad.float().cpu()))
    except Exception as e:  # noqa: BLE001 - any failure means: do not use this kernel here
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}".rstrip(": ")
    worst = max((outs[0][0] - outs[1][0]).abs().item() / max(1.0, outs[1][0].abs().item()),
                (outs[0][1] - outs[1][1]).abs().max().item())
    return None if worst <= 1e-3 else f"differs from the chunked head by {worst:.3g}"


def install_lora_kernel(model: Any, p: TrainPlan) -> TrainPlan:
    """Route the model's LoRA layers through the fused layer when the plan says so; a model with no plain
    LoRA layer (a custom adapter type) keeps peft's forward, and the plan says why."""
    if p.lora_kernel.value != "fused":
        return p
    from sftkit.train import fastlora

    if fastlora.install(model):
        return p
    return p.with_choice("lora_kernel", "peft", "the model has no peft LoRA Linear layer to fuse; peft's forward")


def install_loss_head(model: Any, p: TrainPlan) -> TrainPlan:
    """The chunked (or Liger) head replaces the model's own loss in training calls (``losshead.install``);
    with train.use_liger_kernel the Trainer patches the model itself."""
    head = p.loss_head
    if head.value in ("chunked", "liger") and "use_liger_kernel" not in head.reason:
        from sftkit.train import losshead

        losshead.install(model, backend=head.value)
    return p

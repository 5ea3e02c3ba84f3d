"""GPU accelerators: one config switch each, checked before any work.

``check_train(cfg)`` runs at the top of ``sft train`` (before the data is read
or a model is loaded) and refuses a switch this machine cannot honour with one
sentence saying what it needs, instead of a crash deep inside a library:

  * ``train.backend: unsloth`` — a CUDA GPU, the unsloth package, lora/qlora;
  * ``train.use_liger_kernel`` — a CUDA GPU (Triton) and liger-kernel;
  * ``model.attn_implementation: flash_attention_2`` — a CUDA GPU of compute
    capability 8.0+, flash-attn, fp16/bf16;
  * ``train.optim`` 8-bit / paged — bitsandbytes (paged falls back on CPU);
  * ``train.bf16`` on a CUDA GPU without bf16 (V100, T4) — use fp16; ``train.fp16`` on a CPU — use bf16
    (a warning where the CPU has no native bf16).

``Capabilities`` (``hub/device.py``) is what the checks read; tests pass their own to exercise
the GPU-side decisions on this CPU machine.
"""

from __future__ import annotations

import os
from typing import Any

from sftkit.core.config import Method, RunConfig
from sftkit.core.errors import AcceleratorUnavailable
from sftkit.hub.device import Capabilities, detect
from sftkit.train.collate import Collator, FlatCollator
from sftkit.train.plan import VARLEN, TrainPlan, choose_dtype, sharded_weights

# bitsandbytes-backed optimizer names of TrainingArguments.optim
_BNB_OPTIMS = ("adamw_bnb_8bit", "adamw_8bit", "ademamix", "ademamix_8bit", "lion_8bit", "lion_32bit",
               "rmsprop_bnb", "rmsprop_bnb_8bit", "rmsprop_bnb_32bit")
_FLASH_MIN_CAPABILITY = (8, 0)  # flash kernels (flash-attn 2, torch varlen): Ampere (A100, RTX 30xx) and newer




# -- the checks ------------------------------------------------------------------------------


def _unsloth(cfg: RunConfig, caps: Capabilities) -> list[str]:
    if cfg.train.backend != "unsloth":
        return []
    out = []
    if not caps.cuda:
        out.append(f"train.backend=unsloth needs a CUDA GPU ({caps.device()}); use train.backend=transformers")
    elif not caps.has("unsloth"):
        out.append("train.backend=unsloth needs the unsloth package: `pip install unsloth` "
                   "(or use train.backend=transformers)")
    if cfg.method.type not in (Method.lora, Method.qlora):
        out.append(f"train.backend=unsloth trains method.type lora or qlora in sftkit, not "
                   f"{cfg.method.type.value}; use train.backend=transformers for it")
    if cfg.method.use_dora:
        out.append("method.use_dora is not available with train.backend=unsloth in sftkit; "
                   "use train.backend=transformers for DoRA")
    if cfg.train.deepspeed or cfg.train.fsdp or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        out.append("train.backend=unsloth trains on one GPU here: drop train.deepspeed / train.fsdp / --nproc, "
                   "or use train.backend=transformers for multi-GPU")
    return out


def _liger(cfg: RunConfig, caps: Capabilities) -> list[str]:
    if cfg.train.loss_head == "liger" and not cfg.train.use_liger_kernel:
        if not caps.cuda:
            return [f"train.loss_head=liger needs a CUDA GPU: Liger's Triton kernels fail on CPU ({caps.device()}); "
                    "use train.loss_head=chunked (same loss, any device)"]
        if not caps.has("liger_kernel"):
            return ["train.loss_head=liger needs the liger-kernel package: `pip install liger-kernel` "
                    "(or train.loss_head=chunked)"]
    if not cfg.train.use_liger_kernel:
        return []
    if not caps.cuda:
        return [f"train.use_liger_kernel needs a CUDA GPU: Liger's Triton kernels fail on CPU ({caps.device()}); "
                "set train.use_liger_kernel=false"]
    if not caps.has("liger_kernel"):
        return ["train.use_liger_kernel needs the liger-kernel package: `pip install liger-kernel`"]
    return []


def _attention(cfg: RunConfig, caps: Capabilities) -> list[str]:
    name = cfg.model.attn_implementation
    if name not in ("flash_attention_2", VARLEN):
        return []
    if not caps.cuda or (caps.capability and caps.capability < _FLASH_MIN_CAPABILITY):
        return [f"model.attn_implementation={name} needs a CUDA GPU of compute capability 8.0+ "
                f"(Ampere or newer; a V100 is 7.0) and {caps.device()}; use model.attn_implementation=sdpa"]
    if name == "flash_attention_2" and not caps.has("flash_attn"):
        return ["model.attn_implementation=flash_attention_2 needs the flash-attn package: "
                "`pip install flash-attn --no-build-isolation`, or use model.attn_implementation=sdpa"]
    if name == VARLEN and not caps.torch_varlen:
        return [f"model.attn_implementation={VARLEN} needs torch.nn.attention.varlen (torch 2.9 or newer); "
                "use model.attn_implementation=sdpa"]
    half = choose_dtype(cfg, caps).value in ("bfloat16", "float16") or cfg.train.bf16 or cfg.train.fp16
    if not half:
        return [f"model.attn_implementation={name} computes in fp16/bf16 only: set model.dtype=bfloat16 "
                "(or train.bf16=true)"]
    return []


def _precision(cfg: RunConfig, caps: Capabilities) -> tuple[list[str], list[str]]:
    """(errors, warnings) for train.bf16 / train.fp16."""
    if cfg.train.bf16 and caps.cuda and not caps.bf16:
        return [f"train.bf16 needs a GPU with native bf16 (Ampere or newer) and {caps.device()}; "
                "use train.fp16=true instead"], []
    if cfg.train.fp16 and not caps.cuda:
        return [f"train.fp16 is GPU mixed precision ({caps.device()}); on a CPU use train.bf16=true "
                "(fast where the CPU has AVX512-BF16 or AMX) or neither (fp32)"], []
    if cfg.train.bf16 and not caps.cuda and not caps.cpu_bf16:
        return [], ["train.bf16 on a CPU without native bf16 instructions runs emulated and is usually slower "
                    "than fp32; consider train.bf16=false"]
    return [], []


def _optimizer(cfg: RunConfig, caps: Capabilities) -> tuple[list[str], list[str]]:
    """(errors, warnings) for train.optim."""
    from transformers.training_args import OptimizerNames

    name = cfg.train.optim
    valid = [o.value for o in OptimizerNames]
    if name not in valid:
        import difflib

        close = difflib.get_close_matches(name, valid, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "e.g. adamw_torch_fused, adamw_8bit, paged_adamw_8bit"
        return [f"train.optim={name}: not an optimizer TrainingArguments knows; {hint}"], []
    if not (name.startswith("paged_") or name in _BNB_OPTIMS):
        return [], []
    if not caps.has("bitsandbytes"):
        return [f"train.optim={name} needs bitsandbytes: `pip install bitsandbytes` (it also runs on CPU), "
                "or use train.optim=adamw_torch_fused"], []
    if name.startswith("paged_") and not caps.cuda:
        return [], [f"train.optim={name}: paging optimizer state needs CUDA unified memory; on CPU bitsandbytes "
                    f"runs it as the plain {name.removeprefix('paged_')} optimizer (same maths, no paging)"]
    return [], []


def _generation_in_training(cfg: RunConfig) -> list[str]:
    """eval.generate_every generates on rank 0 alone: with sharded weights its forward waits for the other
    ranks' shards, which never come (the run hangs at the first scoring step)."""
    sharded = sharded_weights(cfg)
    if not (cfg.eval.generate_every and sharded):
        return []
    return [f"eval.generate_every cannot run with {sharded}: generation on rank 0 alone would wait forever for "
            "the other ranks' weight shards; remove eval.generate_every and score the checkpoints with `sft eval "
            "RUN` afterwards, or shard with ZeRO-2 (train.deepspeed=zero2) / DDP instead"]


def check_train(cfg: RunConfig, caps: Capabilities | None = None) -> list[str]:
    """Raise ``AcceleratorUnavailable`` (one sentence per problem) or return warnings."""
    real = caps is None  # tests pass their own capabilities: then nothing is imported
    caps = caps or detect()
    errors = _unsloth(cfg, caps)
    if real and not errors and cfg.train.backend == "unsloth":
        import unsloth  # noqa: F401  (it patches transformers on import: as early as sftkit can)
    errors += [*_liger(cfg, caps), *_attention(cfg, caps), *_generation_in_training(cfg)]
    prec_errors, prec_warnings = _precision(cfg, caps)
    opt_errors, warnings = _optimizer(cfg, caps)
    errors += prec_errors + opt_errors
    warnings += prec_warnings
    if errors:
        raise AcceleratorUnavailable("\n".join(errors))
    if cfg.train.backend == "unsloth" and cfg.model.attn_implementation:
        warnings.append("model.attn_implementation is ignored with train.backend=unsloth (Unsloth picks its own "
                        "attention kernels)")
    return warnings


# -- the switches' code paths ------------------------------------------------------------------


def train_collator(cfg: RunConfig, pad_id: int, plan: TrainPlan | None = None) -> Any:
    """Padding-free batches for the varlen kernels (flash-attn, torch's): the batch becomes one row and
    its example boundaries travel with it (transformers' flash path separates packed examples by position
    ids only in a single row); otherwise the padding collator. Without a plan: flash_attention_2 + packing."""
    if plan is not None:
        return FlatCollator(pad_id, seq_lens=True) if plan.padding_free else Collator(pad_id)
    if cfg.train.packing and cfg.model.attn_implementation == "flash_attention_2":
        return FlatCollator(pad_id)
    return Collator(pad_id)


ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def unsloth_model(cfg: RunConfig, path: Any, dtype_name: str = "float32") -> Any:
    """LoRA / QLoRA through Unsloth's FastLanguageModel (its documented API). Untested without a GPU."""
    import torch
    from unsloth import FastLanguageModel

    m = cfg.method
    dtype = None if dtype_name == "float32" else getattr(torch, dtype_name)  # None: Unsloth picks
    model, _tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(path),
        max_seq_length=cfg.data.cutoff_len,
        dtype=dtype,
        load_in_4bit=m.type is Method.qlora,
        trust_remote_code=cfg.model.trust_remote_code,
    )
    return FastLanguageModel.get_peft_model(
        model,
        r=m.r,
        lora_alpha=m.alpha,
        lora_dropout=m.dropout,
        target_modules=ALL_LINEAR if m.target_modules == "all-linear" else list(m.target_modules),
        bias="none",
        use_gradient_checkpointing="unsloth" if cfg.train.gradient_checkpointing else False,
        random_state=cfg.train.seed,
        use_rslora=m.use_rslora,
        max_seq_length=cfg.data.cutoff_len,
    )

"""Attach the training method to a loaded model: LoRA, QLoRA, full, or freeze."""

from __future__ import annotations

import importlib.util
import math
from typing import Any

from sftkit.core.config import Method, MethodConfig
from sftkit.core.errors import MethodUnavailable


def quantization_config(method: MethodConfig, compute_dtype: str = "bfloat16") -> Any | None:
    """bitsandbytes 4-bit NF4 settings for QLoRA; checked before any weights are loaded. ``compute_dtype``:
    the dtype the de-quantised weights multiply in (the plan's 16-bit dtype; fp32 only when asked)."""
    if method.type is not Method.qlora:
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MethodUnavailable(
            "method.type=qlora needs bitsandbytes for the 4-bit base model: `pip install 'sftkit-llm[gpu]'` "
            "(or `pip install bitsandbytes`), or use method.type=lora"
        )
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=getattr(torch, compute_dtype),
    )


DEEPSPEED_PRESETS = ("zero2", "zero3", "zero3_offload")


def deepspeed_config(name: str | None) -> str | None:
    """Path of the DeepSpeed JSON for ``train.deepspeed`` (a shipped preset or a file)."""
    if not name:
        return None
    if importlib.util.find_spec("deepspeed") is None:
        raise MethodUnavailable(
            f"train.deepspeed={name} needs DeepSpeed: `pip install 'sftkit-llm[gpu]'` (or `pip install deepspeed`); "
            "on a single device leave train.deepspeed unset"
        )
    if name in DEEPSPEED_PRESETS:
        from importlib.resources import files

        return str(files("sftkit") / "assets" / "deepspeed" / f"{name}.json")
    from pathlib import Path

    if not Path(name).is_file():
        raise MethodUnavailable(f"train.deepspeed={name}: not a preset ({', '.join(DEEPSPEED_PRESETS)}) nor a file")
    return name


def prepare_4bit(model: Any, gradient_checkpointing: bool) -> None:
    """What QLoRA needs before the adapters go on, without peft's ``prepare_model_for_kbit_training``.

    That function also upcasts every weight that is not 4-bit (embeddings, tied head, norms) to fp32. The
    residual stream then becomes fp32, and bitsandbytes returns each 4-bit layer's output in its input's
    dtype, so every MLP activation is saved in fp32 too: on the 1.7B shape QLoRA peaked at 81 GB against 65 GB
    for bf16 LoRA (shared/data/gpu). Here the weights keep the dtype they were loaded in (the plan's 16-bit
    dtype; fp32 only when model.dtype says so), as LLaMA-Factory and Unsloth do; the loss is the same
    cross-entropy, computed in fp32 by the loss head either way."""
    for p in model.parameters():
        p.requires_grad_(False)
    if gradient_checkpointing:
        # checkpointed blocks need an input that requires grad for their recomputation to reach the adapters
        model.enable_input_require_grads()


def _decoder_layers(model: Any) -> Any:
    for name, mod in model.named_modules():
        if name.endswith("layers") and hasattr(mod, "__len__") and len(mod) > 0:
            return mod
    raise MethodUnavailable("method.type=freeze: cannot find the decoder layers of this model")


def attach(model: Any, method: MethodConfig, gradient_checkpointing: bool = False) -> Any:
    """Return the model ready to train with only the intended parameters trainable."""
    if method.type in (Method.lora, Method.qlora):
        from peft import LoraConfig, get_peft_model

        if method.type is Method.qlora:
            prepare_4bit(model, gradient_checkpointing)
        cfg = LoraConfig(
            r=method.r,
            lora_alpha=method.alpha,
            lora_dropout=method.dropout,
            target_modules=method.target_modules,
            use_rslora=method.use_rslora,
            use_dora=method.use_dora,
            task_type="CAUSAL_LM",
        )
        return speed_up_adapters(get_peft_model(model, cfg))
    if method.type is Method.freeze:
        return _freeze(model, method)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def speed_up_adapters(model: Any) -> Any:
    """peft's LoRA layers made cheaper where peft's own forward still runs (the fused layer, when the plan
    picks it, is installed later: ``sftkit.train.plan.install_lora_kernel``)."""
    from sftkit.train.dropout import keep_lora_inputs_16bit, speed_up_lora_dropout

    speed_up_lora_dropout(model)  # same p, a third of the cost on CPU (sftkit.train.dropout)
    keep_lora_inputs_16bit(model)  # same values, no fp32 copy of every LoRA input under autocast
    return model


def _freeze(model: Any, method: MethodConfig) -> Any:
    for p in model.parameters():
        p.requires_grad_(False)
    n = method.freeze_trainable_layers
    for layer in list(_decoder_layers(model))[-n:] if n else []:
        for p in layer.parameters():
            p.requires_grad_(True)
    named = method.freeze_trainable_modules
    matched: set[str] = set()
    for name, p in model.named_parameters():
        hits = [m for m in named if m in name]
        if hits:
            p.requires_grad_(True)
            matched.update(hits)
    unknown = [m for m in named if m not in matched]
    if unknown:
        raise MethodUnavailable(f"method.freeze_trainable_modules {unknown}: no parameter name contains it "
                                f"(names look like {next(iter(dict(model.named_parameters())))!r})")
    return model


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts; a 4-bit weight counts its real elements, not its packed bytes."""
    trainable = total = 0
    for p in model.parameters():
        qs = getattr(p, "quant_state", None)
        n = math.prod(qs.shape) if qs is not None else p.numel()
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total

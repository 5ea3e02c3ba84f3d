"""The typed run configuration schema: ``RunConfig`` (frozen), section by section.

Loading (YAML, overrides, error messages) is ``core/configio.py``; the field documentation
listing is ``core/fielddocs.py``. This module imports nothing above ``core``.

Field descriptions are the documentation: ``sft train --help`` and
``configs/finetune_reference.yaml`` are generated from them. Names under
``train:`` follow transformers' ``TrainingArguments`` so habits carry over.
Paths written in a config file are relative to that file; paths given as
command-line overrides are relative to the current directory.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, StrictBool, field_validator, model_validator

from sftkit.core.section import ConfigConflict, _Section
from sftkit.core.stagecfg import PrefConfig, Stage, TeacherConfig, check_stage
from sftkit.core.vocab import (
    BUNDLED_ALIAS,
    DEVICE_SPEC,
    TRACKERS,
    MaskPolicy,
    Overflow,
    canonical_metric,
    check_source_columns,
    check_source_format,
)


class Method(StrEnum):
    lora = "lora"
    qlora = "qlora"
    full = "full"
    freeze = "freeze"


class ModelConfig(_Section):
    name_or_path: str = BUNDLED_ALIAS
    """Model reference: the bundled alias, a local HF folder, a .gguf file, a run folder, or a hub id already
    in the local cache: ORG/NAME[@REV] (Hugging Face / HF_ENDPOINT mirror) or modelscope:ORG/NAME[@REV]
    (fetch it first with `sft download REF`)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """dtype the base weights are loaded in (mixed precision is train.bf16 / train.fp16). auto: chosen per device
    and method (sftkit.train.plan): bfloat16 on GPUs that have it for lora/qlora/freeze (float16 on V100/T4 for
    lora/qlora), float32 for full fine-tuning on a GPU (AdamW steps at lr 1e-5 are below bf16's resolution) and
    for lora/full/freeze on a CPU (exact; train.bf16 gives the speed); qlora computes in 16 bits everywhere.
    The choice and its reason are printed and written to the run folder (config.yaml, train_summary.json)."""
    trust_remote_code: StrictBool = False
    """Run Python code shipped with the model. Off unless you trust its source."""
    allow_pickle: StrictBool = False
    """Load weights stored as pickle (.bin/.pt) when a folder has no safetensors. Unpickling can run code:
    only for files you trust (weights are still read with torch.load(weights_only=True))."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "sftkit_segments", "sftkit_varlen"] | None = None
    """Attention kernel. None: chosen per device (sftkit.train.plan). On a CUDA GPU (Ampere or newer) for
    llama, qwen2, qwen3 and mistral models: flash_attention_2 when flash-attn is installed, else sftkit_varlen
    (PyTorch's own variable-length flash attention, checked against sdpa on the device at start), both
    padding-free (a batch is one row, no padding); otherwise sdpa with the block-diagonal mask from position ids.
    On a CPU: sftkit_segments for those families (each packed example runs as its own causal SDPA call: exact,
    and cheaper than sdpa's block mask), else transformers' choice (sdpa)."""


class DataSource(_Section):
    path: Path
    """JSONL / JSON / CSV / Parquet file (stage pt also reads .txt: one document per line), or a hub dataset id
    fetched once with `sft download --dataset REF`: hf:ORG/NAME[@REV][:SPLIT] (Hugging Face / HF_ENDPOINT mirror)
    or modelscope:ORG/NAME[@REV][:SPLIT], read from the local cache (SPLIT: train, validation, test or a file glob;
    needed when the dataset has several)."""
    format: str | None = None
    """Force a layout (messages, sharegpt, alpaca, input_output, cot, text; for preference stages sharegpt_pairs,
    alpaca_pairs, prompt_pairs, implicit_pairs, messages_feedback, prompt_feedback, alpaca_feedback); None detects
    it."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Rename columns to the canonical keys, e.g. {prompt: question, response: answer}."""
    weight: float | None = Field(default=None, gt=0)
    """Share of this file's rows to take when mixing (1.0 all, 0.2 a fifth, 2.0 every row twice);
    None: every row once. With a weight on any file, the files are mixed and shuffled, and data.val_size
    is held out of each file before mixing."""

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str | None) -> str | None:
        check_source_format(v)  # DataError (a ValueError) names the valid layouts
        return v

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, v: dict[str, str]) -> dict[str, str]:
        check_source_columns(v)  # DataError names the canonical keys
        return v


def _as_sources(v: Any) -> Any:
    if v is None:
        return []
    if isinstance(v, (str, Path)):
        return [{"path": v}]
    if isinstance(v, list):
        return [{"path": x} if isinstance(x, (str, Path)) else x for x in v]
    return v


class DataConfig(_Section):
    train: list[DataSource] = Field(min_length=1)
    """Training file(s): a path or hub dataset id (hf:ORG/NAME:train), a list of them, or a list of
    {path, format, columns, weight}."""
    val: list[DataSource] = Field(default_factory=list)
    """Validation file(s); if empty and val_size > 0, split off from train."""
    test: list[DataSource] = Field(default_factory=list)
    """Held-out test file(s) for `sft eval` and the before/after comparison."""
    val_size: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Share of train held out for validation when no val file is given (seeds: 0.1-0.2 under 1,000 rows)."""
    on_error: Literal["skip", "fail"] = "skip"
    """Bad rows: skip (reported in rejected.jsonl) or fail on the first one."""
    cutoff_len: int = Field(default=1024, gt=0)
    """Maximum tokens per example; pick it from `sft data stats` (covers 95-99% of rows)."""
    overflow: Overflow = Overflow.truncate
    """Longer examples: truncate (keep the start), drop, or error."""
    mask: MaskPolicy = MaskPolicy.assistant
    """Loss on: assistant (every reply), last (final reply only), all (every token)."""

    _coerce = field_validator("train", "val", "test", mode="before")(_as_sources)

    @model_validator(mode="after")
    def _one_validation_source(self) -> DataConfig:
        if self.val and self.val_size > 0:
            raise ConfigConflict("val_size", f"val_size is {self.val_size} but validation files are given (data.val)",
                                 "remove data.val_size (it only splits train when there is no val file) "
                                 "or remove data.val")
        return self

    @property
    def has_validation(self) -> bool:
        return bool(self.val) or self.val_size > 0


class MethodConfig(_Section):
    type: Method = Method.lora
    """lora, qlora (4-bit base), full, or freeze (only the last freeze_trainable_layers)."""
    r: int = Field(default=8, gt=0)
    """LoRA rank (seeds: 8-16; raise it if the model does not learn)."""
    alpha: int = Field(default=16, gt=0)
    """LoRA scaling alpha (usually 2 x r)."""
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    """LoRA dropout."""
    target_modules: list[str] | Literal["all-linear"] = Field(default="all-linear", min_length=1)
    """Modules that get adapters: all linear projections, or names like [q_proj, v_proj]."""
    use_rslora: bool = False
    """Rank-stabilised LoRA scaling (alpha / sqrt(r))."""
    use_dora: bool = False
    """Weight-decomposed LoRA (DoRA)."""
    freeze_trainable_layers: int = Field(default=2, ge=0)
    """For type=freeze: how many of the last decoder layers are trained."""
    freeze_trainable_modules: list[str] = Field(default_factory=list)
    """For type=freeze: also train the parameters whose name contains one of these, e.g. [lm_head, model.norm]
    (with freeze_trainable_layers=0: only these)."""
    merge_base: bool = False
    """When model.name_or_path is a LoRA run (or adapter folder): merge its adapter into the base weights first,
    then train a new adapter (or, with full / freeze, the merged weights). False: train that adapter further
    (method.r, alpha, target_modules, use_dora and use_rslora must then match it)."""

    @model_validator(mode="after")
    def _something_trains(self) -> MethodConfig:
        if self.type is Method.freeze and not self.freeze_trainable_layers and not self.freeze_trainable_modules:
            raise ValueError("method.type=freeze with freeze_trainable_layers=0 and no freeze_trainable_modules "
                             "trains nothing; train some layers or name modules")
        return self

    @model_validator(mode="after")
    def _options_fit_the_type(self) -> MethodConfig:
        # An option that the chosen method ignores is a contradiction, not a no-op: the user
        # who writes `r: 64` with `type: full` believes something that is not happening.
        lora_only = ("r", "alpha", "dropout", "target_modules", "use_rslora", "use_dora")
        if self.type in (Method.full, Method.freeze):
            for key in lora_only:
                if self._changed(key):
                    raise ConfigConflict(key, f"method.{key} is a LoRA option but method.type is {self.type.value}",
                                         f"remove method.{key}, or use method.type: lora / qlora")
        if self.type is Method.qlora and self.merge_base:
            raise ConfigConflict("merge_base", "method.merge_base with type qlora: the 4-bit base is quantised "
                                 "while loading, before an adapter could be merged into it",
                                 "export the parent run first (`sft export RUN --out DIR`) and train qlora on DIR, "
                                 "or use method.type: lora")
        if self.type is not Method.freeze and self._changed("freeze_trainable_layers"):
            raise ConfigConflict("freeze_trainable_layers",
                                 f"method.freeze_trainable_layers only applies to type freeze, not {self.type.value}",
                                 "remove it, or use method.type: freeze")
        return self


class TrainConfig(_Section):
    learning_rate: float = Field(default=2e-4, gt=0)
    """Peak learning rate (seeds: LoRA 1e-4 to 2e-4, full 1e-5)."""
    num_train_epochs: float = Field(default=3.0, gt=0)
    """Passes over the training data (seeds: 3-10, fewer for more data)."""
    max_steps: int = Field(default=-1, ge=-1)
    """Stop after this many optimizer steps (overrides epochs when > 0); -1: train for num_train_epochs."""
    per_device_train_batch_size: int = Field(default=8, gt=0)
    """Sequences per device per micro-step."""
    per_device_eval_batch_size: int = Field(default=8, gt=0)
    """Sequences per device per evaluation step."""
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    """Micro-steps per optimizer step; effective batch = per_device x this x devices."""
    lr_scheduler_type: str = "cosine"
    """Learning-rate schedule (linear, cosine, constant, constant_with_warmup, ...)."""
    warmup_ratio: float = Field(default=0.03, ge=0.0, lt=1.0)
    """Share of steps spent warming the learning rate up."""
    weight_decay: float = Field(default=0.0, ge=0.0)
    """AdamW weight decay."""
    max_grad_norm: float = Field(default=1.0, ge=0.0)
    """Gradient clipping norm (0 disables)."""
    seed: int = Field(default=42, ge=0, lt=2**32)
    """Seed for model init, data order and dropout."""
    logging_steps: int = Field(default=5, gt=0)
    """Log loss and learning rate every N optimizer steps."""
    eval_steps: int | None = Field(default=None, gt=0)
    """Evaluate on the validation set every N steps (None: once per epoch when there is a val set)."""
    save_steps: int | None = Field(default=None, gt=0)
    """Save a checkpoint every N steps (None: once per epoch)."""
    save_total_limit: int | None = Field(default=2, gt=0)
    """Keep at most N checkpoints (the best one by eval loss is always kept)."""
    bf16: bool = False
    """bf16 mixed precision (autocast); fast on CPUs and GPUs with native bf16."""
    fp16: bool = False
    """fp16 mixed precision (GPU only)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, ~30% slower."""
    neftune_noise_alpha: float | None = Field(default=None, gt=0)
    """NEFTune embedding noise (e.g. 5); None disables."""
    report_to: list[str] = Field(default_factory=list)
    """Trackers: tensorboard, swanlab, wandb, mlflow (several at once allowed). wandb and swanlab log online when
    you are logged in their own way (`wandb login` / `swanlab login`, or their API-key variables), else offline into
    the run folder; training says which."""
    group_by_length: bool = True
    """Batch examples of similar length together (less padding); ignored with packing."""
    packing: bool = False
    """Pack several examples into rows of data.cutoff_len tokens, each attending only to itself."""
    early_stopping_patience: int | None = Field(default=None, gt=0)
    """Stop when eval loss has not improved for N evaluations."""
    load_best_model_at_end: bool = False
    """Finish with the weights of the evaluation with the lowest validation loss, not the last step's (needs
    validation data; early stopping does this too). Without it the best checkpoint is still kept on disk."""
    optim: str = "adamw_torch_fused"
    """Optimizer name as in TrainingArguments: adamw_torch_fused (one kernel for all tensors, CPU and GPU),
    adamw_torch, adamw_8bit / paged_adamw_8bit (need bitsandbytes)."""
    dataloader_num_workers: int = Field(default=0, ge=0)
    """Worker processes for data loading."""
    deepspeed: str | None = None
    """DeepSpeed ZeRO: zero2, zero3, zero3_offload (shipped configs) or a path to a DeepSpeed JSON; GPUs only."""
    fsdp: str | None = None
    """FSDP options as in TrainingArguments.fsdp (e.g. "full_shard auto_wrap"); GPUs only."""
    backend: Literal["transformers", "unsloth"] = "transformers"
    """Training backend: transformers, or unsloth (Unsloth's FastLanguageModel for lora/qlora; one CUDA GPU
    and the unsloth package)."""
    use_liger_kernel: bool = False
    """Liger's fused Triton kernels (less activation memory); needs a CUDA GPU and the liger-kernel package."""
    loss_head: Literal["auto", "chunked", "liger", "plain"] = "auto"
    """How the loss is computed from the last hidden states. chunked: sftkit's head, which never holds the
    [tokens x vocab] logits (prompt tokens skip it, the rest go through in chunks; same loss and gradients as
    the plain head); liger: Liger's fused linear cross-entropy (CUDA, liger-kernel); plain: the model's own
    (full logits). auto: liger on a CUDA GPU with liger-kernel installed, else chunked; plain where neither can
    reproduce the model's head (a LoRA-adapted or quantised lm_head, ZeRO-3/FSDP sharding, rescaled logits)."""
    lora_kernel: Literal["auto", "fused", "peft"] = "auto"
    """How LoRA layers compute. fused: sftkit's fused layer (the base projection, the dropout and the adapter in
    one autograd function: the same values as peft's, fewer passes over the activations); peft: peft's own
    forward. auto: fused for lora; peft where it cannot apply (qlora's 4-bit layers, DoRA, ZeRO-3/FSDP,
    train.backend=unsloth)."""

    @field_validator("max_steps")
    @classmethod
    def _not_zero(cls, v: int) -> int:
        if v == 0:
            raise ValueError("max_steps 0 trains nothing; use a positive number, or -1 to train for num_train_epochs")
        return v

    @field_validator("report_to")
    @classmethod
    def _known_trackers(cls, v: list[str]) -> list[str]:
        unknown = [n for n in v if n not in TRACKERS and n != "none"]
        if unknown:
            raise ValueError(f"unknown tracker(s) {unknown}; choose from {', '.join(TRACKERS)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.bf16 and self.fp16:
            raise ConfigConflict("fp16", "bf16 and fp16 are both true", "choose one (train.bf16 on CPUs)")
        if self.deepspeed and self.fsdp:
            raise ConfigConflict("fsdp", "train.deepspeed and train.fsdp are both set",
                                 "choose one sharding backend")
        keeps_best = self.early_stopping_patience or self.load_best_model_at_end
        if keeps_best and self.save_steps and self.eval_steps and self.save_steps % self.eval_steps:
            raise ConfigConflict("save_steps", "early stopping / load_best_model_at_end keep the best checkpoint, so "
                                 f"save_steps "
                                 f"({self.save_steps}) must be a multiple of eval_steps ({self.eval_steps})",
                                 f"set train.save_steps to {self.eval_steps} or a multiple of it")
        return self


class EvalConfig(_Section):
    metrics: list[str] | None = None
    """Generation metrics (exact_match, accuracy, f1, bleu, rouge, json, key_facts); None infers them from the data."""

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str] | None) -> list[str] | None:
        for name in v or []:
            canonical_metric(name)  # ValueError names the choices
        return v

    max_new_tokens: int = Field(default=128, gt=0)
    """Tokens generated per test prompt."""
    batch_size: int = Field(default=16, gt=0)
    """Prompts generated together."""
    limit: int | None = Field(default=None, gt=0)
    """Evaluate only the first N test rows."""
    forgetting_check: bool = True
    """Also score the shipped general-ability set before and after, to show what tuning cost."""
    generate_every: int | None = Field(default=None, gt=0)
    """During training, every N steps generate answers for a few validation prompts and log the task metric
    (not with ZeRO-3 / FSDP: rank 0 would wait for the other ranks' weight shards)."""
    generate_samples: int = Field(default=16, gt=0)
    """How many validation prompts generate_every scores."""
    device: str = "auto"
    """Where the baseline and the tuned model are evaluated (`sft run`, `sft demo`; `sft eval RUN` without
    --device): auto (a CUDA GPU if present, else Apple MPS, else the CPU), cpu, cuda, cuda:N or mps; bf16 on
    GPUs that have it, else fp16, fp32 on the CPU; a model larger than one card's free memory spreads over
    the visible cards. generate_every scores on the training device instead (the model being trained, its
    adapter live). There is no model.device: training runs where its launcher puts it (every visible GPU;
    choose cards with CUDA_VISIBLE_DEVICES)."""

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if re.fullmatch(DEVICE_SPEC, v.strip().lower()) is None or v.strip().lower().startswith(("cpu:", "mps:")):
            raise ValueError(f"device {v!r}: use auto, cpu, cuda, cuda:N or mps")
        return v.strip().lower()


class RunConfig(_Section):
    name: str = "run"
    """Run name (also the default folder under runs/)."""
    output_dir: Path | None = None
    """Run folder; default ./runs/<name>."""
    stage: Stage = Stage.sft
    """What the run trains: sft (conversations, loss on the replies), pt (continued pre-training on plain text,
    loss on every token), dpo / kto / orpo / simpo (preference tuning on chosen/rejected pairs or labelled replies;
    knobs under pref), distill (the student learns the teacher's next-token distributions on SFT data)."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    template: str | None = None
    """Chat template: None uses the tokenizer's own; or a shipped name (qwen2_chatml, ...) or a .json/.jinja file."""
    data: DataConfig
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    pref: PrefConfig = Field(default_factory=PrefConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        check_stage(self)
        if self.method.type is Method.qlora and self.model.dtype == "float16" and self.train.bf16:
            raise ConfigConflict("model.dtype", "method.type=qlora with model.dtype=float16 and train.bf16 mix "
                                 "precisions", "use model.dtype: bfloat16 with train.bf16, or drop train.bf16")
        if not self.data.has_validation:
            for key, value in (("train.early_stopping_patience", self.train.early_stopping_patience),
                               ("train.load_best_model_at_end", self.train.load_best_model_at_end or None),
                               ("train.eval_steps", self.train.eval_steps),
                               ("eval.generate_every", self.eval.generate_every)):
                if value is not None:
                    raise ConfigConflict(key, f"{key} is set but there is no validation data",
                                         "add data.val (a file) or data.val_size (e.g. 0.1), or remove it")
        return self

    def run_dir(self) -> Path:
        return self.output_dir or Path("runs") / self.name

"""The typed run configuration: one YAML file -> ``RunConfig`` (frozen).

Field descriptions are the documentation: ``sft train --help`` and
``configs/finetune_reference.yaml`` are generated from them. Names under
``train:`` follow transformers' ``TrainingArguments`` so habits carry over.
Paths written in a config file are relative to that file; paths given as
command-line overrides are relative to the current directory.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from enum import Enum, StrEnum
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator, model_validator
from yaml.composer import ComposerError

from sftkit.core.textfile import read_text
from sftkit.hub.models import BUNDLED_ALIAS
from sftkit.templates.base import MaskPolicy
from sftkit.templates.render import Overflow


class ConfigError(ValueError):
    """A config that cannot be used; the message names the file, key and fix."""


class ConfigConflict(ValueError):
    """Options that contradict each other (raised inside validators): ``key`` is the
    dotted path reported to the user (relative to the section raising it), ``hint`` the fix."""

    def __init__(self, key: str, message: str, hint: str) -> None:
        super().__init__(f"{message}; {hint}")
        self.key, self.message, self.hint = key, message, hint


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


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
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """dtype the base weights are loaded in (mixed precision is train.bf16 / train.fp16)."""
    trust_remote_code: StrictBool = False
    """Run Python code shipped with the model. Off unless you trust its source."""
    allow_pickle: StrictBool = False
    """Load weights stored as pickle (.bin/.pt) when a folder has no safetensors. Unpickling can run code:
    only for files you trust (weights are still read with torch.load(weights_only=True))."""
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2", "sftkit_segments"] | None = None
    """Attention kernel. None: sftkit_segments for llama, qwen2, qwen3 and mistral models (each packed example
    runs as its own causal SDPA call: exact, and cheaper than sdpa's block mask), else transformers' choice
    (sdpa). flash_attention_2 needs a CUDA GPU (Ampere or newer) and the flash-attn package; with
    train.packing it trains padding-free (one row per batch)."""


class DataSource(_Section):
    path: Path
    """JSONL / JSON / CSV / Parquet file."""
    format: str | None = None
    """Force a layout (messages, sharegpt, alpaca, input_output, cot, text); None detects it."""
    columns: dict[str, str] = Field(default_factory=dict)
    """Rename columns to the canonical keys, e.g. {prompt: question, response: answer}."""
    weight: float | None = Field(default=None, gt=0)
    """Share of this file's rows to take when mixing (1.0 all, 0.2 a fifth, 2.0 every row twice);
    None: every row once. With a weight on any file, the files are mixed and shuffled, and data.val_size
    is held out of each file before mixing."""

    @field_validator("format")
    @classmethod
    def _known_format(cls, v: str | None) -> str | None:
        from sftkit.data.layouts import normalize_format

        normalize_format(v)  # DataError (a ValueError) names the valid layouts
        return v

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, v: dict[str, str]) -> dict[str, str]:
        from sftkit.data.layouts import ColumnMap

        ColumnMap(v)  # DataError names the canonical keys
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
    """Training file(s): a path, a list of paths, or a list of {path, format, columns, weight}."""
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
        if self.type is not Method.freeze and self._changed("freeze_trainable_layers"):
            raise ConfigConflict("freeze_trainable_layers",
                                 f"method.freeze_trainable_layers only applies to type freeze, not {self.type.value}",
                                 "remove it, or use method.type: freeze")
        return self

    def _changed(self, key: str) -> bool:
        """Given in the file with a value other than the default (a full reference file stays valid)."""
        return key in self.model_fields_set and getattr(self, key) != type(self).model_fields[key].default


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
    """Trackers: tensorboard, swanlab, wandb, mlflow (several at once allowed)."""
    group_by_length: bool = True
    """Batch examples of similar length together (less padding); ignored with packing."""
    packing: bool = False
    """Pack several examples into rows of data.cutoff_len tokens, each attending only to itself."""
    early_stopping_patience: int | None = Field(default=None, gt=0)
    """Stop when eval loss has not improved for N evaluations."""
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

    @field_validator("max_steps")
    @classmethod
    def _not_zero(cls, v: int) -> int:
        if v == 0:
            raise ValueError("max_steps 0 trains nothing; use a positive number, or -1 to train for num_train_epochs")
        return v

    @field_validator("report_to")
    @classmethod
    def _known_trackers(cls, v: list[str]) -> list[str]:
        from sftkit.train.tracking import TRACKERS

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
        if self.early_stopping_patience and self.save_steps and self.eval_steps and self.save_steps % self.eval_steps:
            raise ConfigConflict("save_steps", f"early stopping keeps the best checkpoint, so save_steps "
                                 f"({self.save_steps}) must be a multiple of eval_steps ({self.eval_steps})",
                                 f"set train.save_steps to {self.eval_steps} or a multiple of it")
        return self


class EvalConfig(_Section):
    metrics: list[str] | None = None
    """Generation metrics (exact_match, accuracy, f1, bleu, rouge, json); None infers them from the data."""

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str] | None) -> list[str] | None:
        from sftkit.evaluate.metrics import canonical

        for name in v or []:
            canonical(name)  # ValueError names the choices
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
    """During training, every N steps generate answers for a few validation prompts and log the task metric."""
    generate_samples: int = Field(default=16, gt=0)
    """How many validation prompts generate_every scores."""


class RunConfig(_Section):
    name: str = "run"
    """Run name (also the default folder under runs/)."""
    output_dir: Path | None = None
    """Run folder; default ./runs/<name>."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    template: str | None = None
    """Chat template: None uses the tokenizer's own; or a shipped name (qwen2_chatml, ...) or a .json/.jinja file."""
    data: DataConfig
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.method.type is Method.qlora and self.model.dtype == "float16" and self.train.bf16:
            raise ConfigConflict("model.dtype", "method.type=qlora with model.dtype=float16 and train.bf16 mix "
                                 "precisions", "use model.dtype: bfloat16 with train.bf16, or drop train.bf16")
        if not self.data.has_validation:
            for key, value in (("train.early_stopping_patience", self.train.early_stopping_patience),
                               ("train.eval_steps", self.train.eval_steps),
                               ("eval.generate_every", self.eval.generate_every)):
                if value is not None:
                    raise ConfigConflict(key, f"{key} is set but there is no validation data",
                                         "add data.val (a file) or data.val_size (e.g. 0.1), or remove it")
        return self

    def run_dir(self) -> Path:
        return self.output_dir or Path("runs") / self.name


# ---------------------------------------------------------------- loading


def _set_dotted(d: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    cur = d
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.max_steps=2", "output_dir=/tmp/r"]`` -> nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected dotted key=value, e.g. train.max_steps=10")
        _set_dotted(out, key.strip(), load_yaml(raw, f"override {item!r}") if raw else "")
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _key_lines(root: yaml.Node | None) -> dict[tuple[str, ...], int]:
    """Line number (1-based) of every mapping key in a composed YAML document, by key path.
    Each node is visited once: a value reached again through an alias keeps its first lines."""
    lines: dict[tuple[str, ...], int] = {}
    seen: set[int] = set()

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                p = (*path, str(k.value))
                lines[p] = k.start_mark.line + 1
                walk(v, p)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                walk(v, (*path, str(i)))

    if root is not None:
        walk(root, ())
    return lines


def _from_override(loc: tuple[Any, ...], over_keys: set[tuple[str, ...]]) -> str | None:
    parts = tuple(str(x) for x in loc)
    for n in range(len(parts), 0, -1):
        if parts[:n] in over_keys:
            return ".".join(parts[:n])
    return None


def _walk(loc: tuple[Any, ...]) -> tuple[Any, Any]:
    """``(section model, field)`` at a key path; list indices are skipped (data.train.0.path)."""
    model: Any = RunConfig
    field = None
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None, None
        args = get_args(field.annotation) or (field.annotation,)
        inner = [a for arg in args for a in (get_args(arg) or (arg,))]
        model = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return model, field


def _section_fields(loc: tuple[Any, ...]) -> list[str]:
    """Valid keys next to the last part of ``loc`` (for "did you mean")."""
    model, _ = _walk(loc[:-1])
    return list(model.model_fields) if model is not None else []


def _field_doc(loc: tuple[Any, ...]) -> str:
    """The field's description (the schema's own documentation) as the hint for a bad value."""
    _, field = _walk(loc)
    doc = " ".join((field.description or "").split()) if field is not None else ""
    return f"hint: {doc}" if doc else "hint: see `sft train --help` for every key"


def _describe_one(e: Any, where: str, lines: dict[tuple[str, ...], int], over_keys: set[tuple[str, ...]]) -> str:
    loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-")))
    conflict = (e.get("ctx") or {}).get("error")
    if isinstance(conflict, ConfigConflict):
        # the key the conflict names, relative to the section whose validator raised it
        loc = (*loc, *conflict.key.split("."))
    key = ".".join(str(x) for x in loc) or "(top level)"
    line = lines.get(tuple(str(x) for x in loc))
    over = _from_override(loc, over_keys)
    place = f"command-line override {over}=..." if over else f"{where}:{line}" if line else where
    if isinstance(conflict, ConfigConflict):
        return f"{place}: {key}: contradictory options: {conflict.message}; hint: {conflict.hint}"
    if e["type"] == "extra_forbidden":
        valid = _section_fields(loc)
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
        hint = f"did you mean {'.'.join([*map(str, loc[:-1]), close[0]])!r}?" if close else (
            f"valid keys here: {', '.join(valid)}" if valid else "remove it")
        return f"{place}: unknown key {key!r}; {hint}"
    msg = str(e["msg"]).removeprefix("Value error, ")
    return f"{place}: {key}: {msg} (got {e.get('input')!r}); {_field_doc(loc)}"


def _describe(err: ValidationError, where: str, lines: dict[tuple[str, ...], int],
              over_keys: set[tuple[str, ...]] | None = None) -> str:
    return "\n".join(_describe_one(e, where, lines, over_keys or set()) for e in err.errors())


def _dotted_keys(d: dict[str, Any], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for k, v in d.items():
        out.add((*prefix, k))
        if isinstance(v, dict):
            out |= _dotted_keys(v, (*prefix, k))
    return out


def check_data_files(cfg: RunConfig) -> None:
    """A data file that does not exist stops a run before anything else happens (not at load time:
    a config may be written before its data, and `sft train --help`-style checks should not need it)."""
    for split in ("train", "val", "test"):
        for i, src in enumerate(getattr(cfg.data, split)):
            if not src.path.is_file():
                raise ConfigError(f"config data.{split}[{i}]: {src.path} does not exist (paths in a config file are "
                                  "relative to the file; in a command-line override, to the current folder)")


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make data paths and the template file relative to the config file."""
    data = raw.get("data")
    if isinstance(data, dict):
        for split in ("train", "val", "test"):
            if split not in data:
                continue
            srcs = _as_sources(data[split])
            if isinstance(srcs, list):
                fixed = []
                for s in srcs:
                    rel = isinstance(s, dict) and isinstance(s.get("path"), str)
                    fixed.append({**s, "path": str(base / s["path"])} if rel else s)
                data[split] = fixed
    t = raw.get("template")
    if isinstance(t, str) and t.endswith((".json", ".jinja")):
        raw["template"] = str(base / t)
    for key in ("output_dir",):
        if isinstance(raw.get(key), str):
            raw[key] = str(base / raw[key])
    m = raw.get("model")
    if isinstance(m, dict) and isinstance(m.get("name_or_path"), str):
        p = m["name_or_path"]
        if p.startswith(("./", "../")) or (base / p).exists():
            m["name_or_path"] = str((base / p).resolve())
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read, merge overrides, validate. Every problem is a ``ConfigError`` with file:line."""
    path = Path(path)
    if path.is_dir() and (path / "config.yaml").is_file():
        path = path / "config.yaml"
    node, raw = _compose(read_text(path, "config", ConfigError), str(path))
    raw = raw if raw is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys (model:, data:, train:, ...)")
    raw = _resolve_paths(raw, path.resolve().parent)
    over = parse_overrides(overrides or [])
    over = _resolve_paths(over, Path.cwd())
    merged = _merge(raw, over)
    lines = _key_lines(node)
    try:
        cfg = RunConfig.model_validate(merged)
    except ValidationError as e:
        raise ConfigError(_describe(e, str(path), lines, _dotted_keys(over))) from None
    return cfg


# ---------------------------------------------------------------- the one YAML loader
# Every YAML a user can write or edit (config files, overrides, the console's editor, a run folder's
# config.yaml) is read here. A YAML alias is a reference: ``b: [*a, *a]`` costs two nodes to parse but
# expands to two copies of ``a`` for anything that walks the result (validation, key lines, a report),
# so eight levels of ten aliases each (a 500-byte file) expand to 10^8 values. Aliases may add at most
# ALIAS_BUDGET values beyond what is written, counted on the composed graph before anything walks it.

ALIAS_BUDGET = 10_000
"""Values YAML aliases may add to a document beyond those written out (a config needs a handful)."""
MAX_DEPTH = 100
"""Deepest nesting accepted (a config is 3 or 4 levels; the YAML composer recurses per level)."""


class _Loader(yaml.SafeLoader):
    """``SafeLoader`` that records where each alias is used, bounds the nesting depth, and gives a
    value the constructor refuses (a date like 2023-13-45, an integer of 5,000 digits) its line."""

    def __init__(self, text: str, where: str) -> None:
        super().__init__(text)
        self.where = where
        self.aliases: list[tuple[str, yaml.Mark, int]] = []  # (anchor, where used, id of the target node)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            self.aliases.append((event.anchor, event.start_mark, id(node)))
            return node
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ComposerError(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except ValueError as e:
            raise ConfigError(f"{self.where}{_line(node.start_mark)}: cannot read {node.value!r:.40}: {e} "
                              "(quote the value to keep it as text)") from None


def _line(mark: yaml.Mark | None) -> str:
    return f":{mark.line + 1}" if mark is not None else ""


def _expanded_size(root: yaml.Node, loader: _Loader, where: str) -> tuple[int, int]:
    """(values after expanding every alias, distinct values), memoised per node: linear in the
    document, however large the expansion. A recursive alias (a value containing itself) is refused."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            anchor, mark, _ = next((a for a in loader.aliases if a[2] == key), ("?", None, key))
            raise ConfigError(f"{where}{_line(mark)}: the YAML alias *{anchor} is used inside the value it names "
                              "(a recursive alias, an endless value); write the value out instead")
        open_nodes.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [x for pair in node.value for x in pair]
        sizes[key] = 1 + sum(size(c) for c in children)
        open_nodes.discard(key)
        return sizes[key]

    return size(root), len(sizes)


def _check_aliases(root: yaml.Node, loader: _Loader, where: str) -> None:
    if not loader.aliases:
        return
    total, written = _expanded_size(root, loader, where)
    if total - written > ALIAS_BUDGET:
        anchor, mark, _ = loader.aliases[0]
        raise ConfigError(
            f"{where}{_line(mark)}: YAML aliases (*{anchor} here and {len(loader.aliases) - 1} more) expand this "
            f"document from {written:,} to {total:,} values, over the {ALIAS_BUDGET:,} extra values aliases may "
            "add; refused before reading further. Write the repeated values out, or use fewer aliases")


def _compose(text: str, where: str) -> tuple[yaml.Node | None, Any]:
    """The composed node graph (for key lines) and the constructed value, from one parse."""
    loader = _Loader(text, where)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None
        _check_aliases(node, loader, where)
        return node, loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        what = "; ".join(x for x in (e.context, e.problem) if x)
        raise ConfigError(f"{where}{_line(e.problem_mark or e.context_mark)}: not valid YAML: {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from None
    finally:
        loader.dispose()


def load_yaml(text: str, where: str) -> Any:
    """Parse YAML a user wrote (``where`` names it in errors): safe tags only, aliases within
    ``ALIAS_BUDGET``, nesting within ``MAX_DEPTH``. Every problem is a ``ConfigError`` with its line."""
    return _compose(text, where)[1]


def read_yaml_file(path: str | Path, what: str = "YAML file") -> Any:
    """``load_yaml`` on a file (a run folder's config.yaml, a launch.yaml), read as strict UTF-8."""
    return load_yaml(read_text(path, what, ConfigError), str(path))


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def _type_name(ann: Any) -> str:
    if get_origin(ann) is Literal:
        return "|".join(str(a) for a in get_args(ann))
    if isinstance(ann, type) and issubclass(ann, Enum):
        return "|".join(m.value for m in ann)
    if get_origin(ann) in (Union, UnionType):
        return " or ".join("null" if a is type(None) else _type_name(a) for a in get_args(ann))
    if get_origin(ann) is list:
        return f"list of {_type_name(get_args(ann)[0])}"
    if get_origin(ann) is dict:
        return "mapping"
    return getattr(ann, "__name__", str(ann))


@dataclass(frozen=True)
class FieldDoc:
    key: str  # dotted path, e.g. train.learning_rate
    type: str
    default: Any  # the Python default; _REQUIRED when the field must be given
    doc: str

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED

    def default_text(self) -> str:
        if self.required:
            return "(required)"
        v = self.default.value if isinstance(self.default, Enum) else self.default
        return "null" if v is None else str(v)


_REQUIRED = object()


def field_docs(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[FieldDoc]:
    """Every field with its type, default and description; sections expanded."""
    rows: list[FieldDoc] = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, _Section):
            rows.extend(field_docs(ann, f"{prefix}{name}."))
            continue
        if get_origin(ann) is list and get_args(ann)[0] is DataSource:
            typ = "path, list of paths, or list of {path, format, columns, weight}"
        else:
            typ = _type_name(ann)
        default = _REQUIRED if f.is_required() else f.get_default(call_default_factory=True)
        rows.append(FieldDoc(f"{prefix}{name}", typ, default, (f.description or "").replace("\n", " ")))
    return rows

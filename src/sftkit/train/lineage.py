"""Runs that build on runs: training from what ``model.name_or_path`` points at, adapter included.

A run folder (or a LoRA adapter folder, or a run config file: the run it trains) as the model:

* **a LoRA run**, ``method.merge_base: false`` (default): its adapter is loaded *trainable* and
  trained further; the new run's adapter replaces it (same base, same adapter shape, so
  ``method`` must describe that adapter: r, alpha, target_modules, use_dora, use_rslora).
* **a LoRA run**, ``method.merge_base: true``: its adapter is merged into the base weights
  first; the run then trains a new adapter (lora) or the merged weights (full, freeze).
* **a full / freeze run**: its ``model/`` folder is the base; any method applies (qlora too).

What cannot work is refused before any weights load, with the reason: full or freeze on an
adapter that is not merged, merge_base with nothing to merge, an adapter shape the config does
not describe (a DoRA adapter under a plain LoRA config), qlora over merged adapters, or a
template other than the one the parent was trained with.

The parent is recorded: in ``config.yaml`` (a comment above the config), ``train_summary.json``
and the report (``parent``), and in the resume fingerprint (a retrained parent is refused).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftkit.core.config import Method, RunConfig
from sftkit.core.errors import TrainError
from sftkit.core.rundir import RunDir
from sftkit.hub.models import ResolvedModel, merge_adapters
from sftkit.hub.safety import check_adapter
from sftkit.train.methods import attach, speed_up_adapters

# method field -> (adapter_config.json key, what it is called in a message)
_SHAPE = {"r": ("r", "rank"), "alpha": ("lora_alpha", "alpha"), "use_dora": ("use_dora", "DoRA"),
          "use_rslora": ("use_rslora", "rank-stabilised scaling")}


@dataclass(frozen=True)
class Start:
    """Where training starts: ``resolved``'s weights, ``merge`` merged into them, then either the
    adapter ``train_further`` (trainable) or a fresh ``method``. ``parent``: the record, or None."""

    resolved: ResolvedModel
    merge: tuple[Path, ...] = ()
    train_further: Path | None = None
    parent: dict[str, Any] | None = field(default=None)


def _adapter_config(adapter: Path) -> dict[str, Any]:
    try:
        data = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TrainError(f"{adapter}: cannot read adapter_config.json ({e}); is the parent run complete?") from e
    return data if isinstance(data, dict) else {}


def _check_shape(cfg: RunConfig, adapter: Path, ref: str) -> None:
    """Training an adapter further needs a config that describes that adapter."""
    have = _adapter_config(adapter)
    fix = "set method.{key}: {value} to train it further, or method.merge_base: true to merge it into the " \
          "base and train a new adapter"
    for key, (peft_key, what) in _SHAPE.items():
        want, got = getattr(cfg.method, key), have.get(peft_key, type(cfg.method).model_fields[key].default)
        if want != got:
            raise TrainError(f"model {ref} holds a LoRA adapter with {what} {got!r} (adapter_config.json "
                             f"{peft_key}) but method.{key} is {want!r}; " + fix.format(key=key, value=
                             json.dumps(got)))
    targets = cfg.method.target_modules
    if targets != "all-linear" and sorted(targets) != sorted(have.get("target_modules") or []):
        raise TrainError(f"model {ref} holds a LoRA adapter on {sorted(have.get('target_modules') or [])} but "
                         f"method.target_modules is {sorted(targets)}; "
                         + fix.format(key="target_modules", value=json.dumps(sorted(have.get('target_modules') or []))))


def _check_template(cfg: RunConfig, run_dir: Path | None, ref: str) -> None:
    if run_dir is None:
        return
    theirs = RunDir(run_dir).template()
    if (theirs or None) != (cfg.template or None):
        raise TrainError(f"model {ref} was trained with template {theirs or '(the tokenizer own)'} but this run "
                         f"uses {cfg.template or '(the tokenizer own)'}: the continued model would be prompted "
                         f"differently from how it learnt; set template: {theirs or 'null'}")


def _record(cfg: RunConfig, resolved: ResolvedModel, how: str) -> dict[str, Any]:
    rec: dict[str, Any] = {"ref": cfg.model.name_or_path, "how": how}
    if resolved.run_dir is not None:
        rd = RunDir(resolved.run_dir)
        summary = rd.read_summary()
        rec.update(run_dir=str(rd.path), config_digest=rd.recorded_digest(),
                   global_step=summary.get("global_step"), stage=rd.raw_config().get("stage", "sft"))
    if resolved.adapter is not None:
        rec["adapter"] = str(resolved.adapter)
    return rec


def plan_start(cfg: RunConfig, resolved: ResolvedModel) -> Start:
    """How training starts from ``resolved``; ``TrainError`` (with the reason) when it cannot."""
    m, ref = cfg.method, cfg.model.name_or_path
    _check_template(cfg, resolved.run_dir, ref)
    if cfg.train.backend == "unsloth" and (resolved.adapter or resolved.merged):
        raise TrainError(f"model {ref} carries a LoRA adapter, and train.backend unsloth loads only a base model: "
                         f"use train.backend: transformers to build on it, or `sft export {ref} --out DIR` first")
    if resolved.merged and m.type is Method.qlora:
        raise TrainError(f"model {ref} stacks an adapter on merged adapters, and qlora quantises the base while "
                         f"loading, before they could be merged: `sft export {ref} --out DIR` and train qlora on DIR")
    if resolved.adapter is None:
        if m.merge_base:
            raise TrainError(f"method.merge_base is true but model {ref} has no LoRA adapter to merge (it is a "
                             "complete model); remove method.merge_base")
        how = "its full weights" if resolved.run_dir else None
        return Start(resolved, resolved.merged, None, _record(cfg, resolved, how) if how else None)
    check_adapter(resolved.adapter, cfg.model.allow_pickle)
    if m.merge_base:
        how = "merged its adapter; trains a new adapter" if m.type in (Method.lora, Method.qlora) else \
            f"merged its adapter; trains the merged weights ({m.type.value})"
        return Start(resolved, (*resolved.merged, resolved.adapter), None, _record(cfg, resolved, how))
    if m.type in (Method.full, Method.freeze):
        raise TrainError(f"model {ref} is a LoRA adapter, and method.type {m.type.value} trains the model's own "
                         "weights: set method.merge_base: true to merge the adapter into them first")
    _check_shape(cfg, resolved.adapter, ref)
    return Start(resolved, resolved.merged, resolved.adapter, _record(cfg, resolved, "trains its adapter further"))


def build(cfg: RunConfig, start: Start, base: Any) -> Any:
    """``base`` (loaded from ``start.resolved.path``) made ready to train as ``start`` says."""
    base = merge_adapters(base, start.merge, cfg.model.allow_pickle)
    if start.train_further is None:
        return attach(base, cfg.method, cfg.train.gradient_checkpointing)
    from peft import PeftModel, prepare_model_for_kbit_training

    if cfg.method.type is Method.qlora:
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    model = speed_up_adapters(PeftModel.from_pretrained(base, start.train_further, is_trainable=True))
    model.sftkit_trained_further = True  # a dpo/kto reference is then this adapter's starting copy (stages.py)
    return model


def yaml_header(parent: dict[str, Any] | None) -> str:
    """The comment ``config.yaml`` starts with when the run builds on another one."""
    if not parent:
        return ""
    where = parent.get("run_dir") or parent["ref"]
    step = f", trained to step {parent['global_step']}" if parent.get("global_step") is not None else ""
    return f"# parent: {where} ({parent.get('stage', 'model')}{step}); this run {parent['how']}\n"

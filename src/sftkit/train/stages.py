"""Which trainer trains a stage: one training path (``recipe.run``) for every stage.

=========  ===========================================================================================
sft, pt    transformers' ``Trainer`` on sftkit's rows and collator (pt rows are cutoff_len blocks)
dpo        TRL's ``DPOTrainer``, fed sftkit's pre-tokenized pairs (``_prepare_dataset`` returns them)
kto        TRL's ``KTOTrainer``, the same way (plus the KL completions TRL builds in that step)
orpo       TRL's ``ORPOTrainer`` (``trl.experimental``), pre-tokenized through ``tokenize_row``
simpo      TRL's ``CPOTrainer`` with ``loss_type="simpo"`` (``trl.experimental``), likewise
distill    TRL's ``GKDTrainer`` (``trl.experimental``) with ``lmbda=0``: it never generates; the loss is
           the divergence from the teacher's next-token distribution on the SFT rows' reply tokens
=========  ===========================================================================================

The reference model of dpo and kto is never a second copy of the model: a fresh LoRA adapter is
switched off (the base *is* the reference); an adapter trained further keeps a frozen copy of its
starting weights (TRL's ``ref`` adapter: adapter-sized); full and freeze runs compute the
reference log-probabilities once, before the first step (``precompute_ref_log_probs``), and hold
no reference at all. ``pref.reference_free`` uses zeros instead. These stages train without
dropout (TRL's default: the policy's log-probabilities must be as deterministic as the reference's).
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

from sftkit.core.config import Method, RunConfig
from sftkit.core.errors import MethodUnavailable
from sftkit.core.stagecfg import PREF_STAGES, Stage
from sftkit.data.preference import RenderedFeedback, RenderedPair
from sftkit.data.prepare import Prepared
from sftkit.hub import models
from sftkit.templates.render import IGNORE, Rendered
from sftkit.train.dropout import disable_dropout

TRL_STAGES = frozenset({*PREF_STAGES, Stage.distill})


def require(stage: Stage) -> None:
    """The packages a stage trains with, checked before any work."""
    if stage not in TRL_STAGES:
        return
    missing = [p for p in ("trl", "datasets") if importlib.util.find_spec(p) is None]
    if missing:
        raise MethodUnavailable(f"stage {stage.value} trains with TRL: `pip install 'sftkit[stages]'` "
                                f"(missing: {', '.join(missing)})")
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # ORPO/CPO/GKD live in trl.experimental (pinned)


def reference_precomputed(cfg: RunConfig) -> bool:
    """dpo/kto with full or freeze (no adapter to switch off), or reference-free dpo."""
    return cfg.pref.reference_free or cfg.method.type in (Method.full, Method.freeze)


def guard_rows(data: Prepared) -> list[Rendered]:
    """The token rows a micro-batch may hold, with their file:line (the NaN guard reports them)."""
    out: list[Rendered] = []
    for e in data.train.examples:
        if isinstance(e, RenderedPair):
            out += [Rendered(e.prompt_ids + e.chosen_ids, [], "", e.source),
                    Rendered(e.prompt_ids + e.rejected_ids, [], "", e.source)]
        elif isinstance(e, RenderedFeedback):
            out.append(Rendered(e.prompt_ids + e.completion_ids, [], "", e.source))
        else:
            out.append(e)
    return out


def dataset(examples: list[Any], stage: Stage) -> Any:
    """TRL trainers take ``datasets.Dataset`` only: the rendered rows as columns."""
    from datasets import Dataset

    if stage is Stage.distill:
        return Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels} for e in examples])
    return Dataset.from_list([e.to_row() for e in examples])


def arguments(cfg: RunConfig, base: dict[str, Any]) -> Any:
    """The stage's TrainingArguments (TRL's config subclass for TRL stages) from recipe's settings."""
    stage, p = cfg.stage, cfg.pref
    if stage not in TRL_STAGES:
        from transformers import TrainingArguments

        return TrainingArguments(**base)
    kw = dict(base, max_length=cfg.data.cutoff_len, disable_dropout=True)
    kw["train_sampling_strategy"] = "sequential" if stage is Stage.kto else "random"  # KTO: see stagedata.py
    beta = p.beta_for(stage)
    if stage is Stage.dpo:
        from trl import DPOConfig

        losses, weights = [p.loss_for(stage)], [1.0]
        if p.sft_weight:
            losses, weights = [*losses, "sft"], [1.0, p.sft_weight]
        return DPOConfig(**kw, beta=beta, loss_type=losses, loss_weights=weights, label_smoothing=p.label_smoothing,
                         precompute_ref_log_probs=reference_precomputed(cfg))
    if stage is Stage.kto:
        from trl import KTOConfig

        return KTOConfig(**kw, beta=beta, loss_type=p.loss_for(stage), desirable_weight=p.desirable_weight,
                         undesirable_weight=p.undesirable_weight, precompute_ref_log_probs=reference_precomputed(cfg))
    if stage is Stage.orpo:
        from trl.experimental.orpo import ORPOConfig

        return ORPOConfig(**kw, beta=beta)
    if stage is Stage.simpo:
        from trl.experimental.cpo import CPOConfig

        return CPOConfig(**kw, loss_type="simpo", beta=beta, simpo_gamma=p.simpo_gamma, cpo_alpha=p.sft_weight,
                         label_smoothing=p.label_smoothing)
    from trl.experimental.gkd import GKDConfig

    return GKDConfig(**kw, lmbda=0.0, beta=cfg.teacher.beta, seq_kd=False)


def _pretokenized(feature: dict[str, Any], max_length: int) -> dict[str, Any]:
    """ORPO/CPO's columns from sftkit's pair (prompt masked in the labels)."""
    p, out = feature["prompt_ids"], {"prompt_input_ids": feature["prompt_ids"],
                                     "prompt_attention_mask": [1] * len(feature["prompt_ids"])}
    for side in ("chosen", "rejected"):
        reply = feature[f"{side}_ids"]
        ids = (p + reply)[:max_length]
        out[f"{side}_input_ids"], out[f"{side}_attention_mask"] = ids, [1] * len(ids)
        out[f"{side}_labels"] = ([IGNORE] * len(p) + reply)[:max_length]
    return out


@functools.cache
def _classes() -> dict[Stage, type]:
    """TRL's trainers taught to take sftkit's rendered rows as they are (built on first use: TRL is heavy)."""
    from trl import DPOTrainer, KTOTrainer
    from trl.experimental.cpo import CPOTrainer
    from trl.experimental.gkd import GKDTrainer
    from trl.experimental.orpo import ORPOTrainer

    class DPO(DPOTrainer):
        def __init__(self, *args: Any, reference_free: bool = False, **kw: Any) -> None:
            self.sftkit_reference_free = reference_free  # read by _precompute_ref_logps inside __init__
            super().__init__(*args, **kw)

        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            return dataset  # prompt_ids / chosen_ids / rejected_ids, rendered with the run's template

        def _precompute_ref_logps(self, dataset: Any, name: str, batch_size: int) -> Any:
            if not self.sftkit_reference_free:
                return super()._precompute_ref_logps(dataset, name, batch_size)
            zeros = [0.0] * len(dataset)
            return dataset.add_column("ref_chosen_logps", zeros).add_column("ref_rejected_logps", zeros)

    class KTO(KTOTrainer):
        def _prepare_dataset(self, dataset: Any, processing_class: Any, args: Any, dataset_name: str) -> Any:
            if not self.calculate_KL:
                return dataset

            def rotate(batch: dict[str, Any]) -> dict[str, Any]:
                # each row's KL completion is its batch neighbour's reply (TRL's own construction)
                c = batch["completion_ids"]
                return {**batch, "KL_completion_ids": [c[-1], *c[:-1]]}

            return dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)

    class ORPO(ORPOTrainer):
        def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, Any]:
            return _pretokenized(feature, self.max_length)

    class SimPO(CPOTrainer):
        def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, Any]:
            return _pretokenized(feature, self.max_length)

    return {Stage.dpo: DPO, Stage.kto: KTO, Stage.orpo: ORPO, Stage.simpo: SimPO, Stage.distill: GKDTrainer}


def trl_trainer(cfg: RunConfig, model: Any, args: Any, train: Any, val: Any, tokenizer: Any, callbacks: list[Any],
                teacher: Any = None, collator: Any = None) -> Any:
    """The TRL trainer of ``cfg.stage`` on ``model`` (already carrying its method)."""
    from peft import PeftModel

    disable_dropout(model)
    cls = _classes()[cfg.stage]
    kw: dict[str, Any] = {"model": model, "args": args, "train_dataset": train, "eval_dataset": val,
                          "processing_class": tokenizer, "callbacks": callbacks}
    if cfg.stage is Stage.distill:
        return cls(teacher_model=teacher, data_collator=collator, **kw)
    if cfg.stage is Stage.dpo:
        kw["reference_free"] = cfg.pref.reference_free
    fresh = isinstance(model, PeftModel) and not getattr(model, "sftkit_trained_further", False)
    trainer = cls(**kw)
    if fresh and "ref" in trainer.model.peft_config:
        # TRL copies a pre-wrapped adapter as the reference; a fresh one equals the base with the adapter off
        trainer.model.delete_adapter("ref")
    return trainer


def load_teacher(cfg: RunConfig, tokenizer: Any, console: Any, student_dtype: str) -> Any:
    """The distillation teacher, in eval mode, in ``teacher.dtype`` or the student's planned dtype; refused
    when its vocabulary is not the student's."""
    resolved = models.resolve(cfg.teacher.name_or_path or "")
    theirs = models.load_tokenizer(resolved.path, cfg.model.trust_remote_code)
    if theirs.get_vocab() != tokenizer.get_vocab():
        ours, other = tokenizer.get_vocab(), theirs.get_vocab()
        diff = next((t for t in sorted(set(ours) ^ set(other))), None)
        raise MethodUnavailable(
            f"teacher {cfg.teacher.name_or_path} has another vocabulary than the student ({len(other):,} vs "
            f"{len(ours):,} tokens{f'; e.g. {diff!r} is in one only' if diff else '; same tokens, other ids'}): "
            "logit distillation compares the two next-token distributions token by token, so both must share "
            "one tokenizer. Use a teacher of the student's family, or distil through its answers: `sft generate "
            "TEACHER --data PROMPTS --out answers.jsonl --as-training-data`, then train stage sft on them")
    dtype = cfg.teacher.dtype or student_dtype
    teacher = models.load_model(resolved, dtype=dtype,
                                trust_remote_code=cfg.model.trust_remote_code, allow_pickle=cfg.model.allow_pickle)
    console.print(f"teacher: {resolved.path.name} ({sum(p.numel() for p in teacher.parameters()):,} parameters, "
                  f"{dtype}), divergence beta={cfg.teacher.beta}", soft_wrap=True)
    return teacher

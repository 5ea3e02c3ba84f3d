"""What a run trains (``stage``) and the sections only some stages read: ``pref:`` (preference
tuning) and ``teacher:`` (distillation), with the contradictions between them and the rest of
the config. ``RunConfig`` (``config.py``) holds them; ``check_stage`` is its validator's part.

Defaults come from the papers: DPO (Rafailov et al. 2023) and KTO (Ethayarajh et al. 2024)
β = 0.1; ORPO (Hong et al. 2024) λ = 0.1; SimPO (Meng et al. 2024) β = 2.0 with γ/β = 0.5.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from sftkit.core.section import ConfigConflict, _Section


class Stage(StrEnum):
    sft = "sft"
    pt = "pt"
    dpo = "dpo"
    kto = "kto"
    orpo = "orpo"
    simpo = "simpo"
    distill = "distill"


PREF_STAGES = frozenset({Stage.dpo, Stage.kto, Stage.orpo, Stage.simpo})
PAIRED_STAGES = frozenset({Stage.dpo, Stage.orpo, Stage.simpo})  # need chosen/rejected pairs (KTO takes both)

# TRL 1.16's DPO loss names (checked by name here: TRL itself only fails at the first step)
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm")  # fmt: skip
KTO_LOSSES = ("kto", "apo_zero_unpaired")
DEFAULT_BETA = {Stage.dpo: 0.1, Stage.kto: 0.1, Stage.orpo: 0.1, Stage.simpo: 2.0}
DEFAULT_LOSS = {Stage.dpo: "sigmoid", Stage.kto: "kto"}
_SMOOTHED = ("robust", "exo_pair", "aot", "aot_unpaired")  # the DPO losses that read label_smoothing


class PrefConfig(_Section):
    beta: float | None = Field(default=None, gt=0)
    """Strength of the preference term; None: the paper's value for the stage. dpo, kto: 0.1, the weight of the
    implicit reward (lower lets the policy move further from the reference model); orpo: 0.1, λ, the weight of the
    odds-ratio term beside the SFT loss; simpo: 2.0, the reward scale."""
    loss_type: str | None = None
    """dpo: sigmoid (DPO, the default), hinge (SLiC), ipo (IPO), robust (rDPO, reads label_smoothing), exo_pair,
    nca_pair, bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, sigmoid_norm (length-normalised);
    kto: kto (the default) or apo_zero_unpaired; orpo and simpo have one loss each (leave it unset)."""
    reference_free: bool = False
    """dpo only: reference log-probabilities of 0 instead of the starting model's (no reference forward pass; the
    policy may drift further). orpo and simpo need no reference model by construction."""
    label_smoothing: float = Field(default=0.0, ge=0.0, lt=0.5)
    """Share of pairs assumed to be labelled the wrong way round (ε): dpo with loss_type robust, exo_pair, aot or
    aot_unpaired, and simpo; 0 trusts every label. TRL's sigmoid DPO loss ignores it, so it is refused there."""
    simpo_gamma: float = Field(default=1.0, ge=0.0)
    """simpo: target reward margin γ between chosen and rejected (the paper keeps γ/β near 0.5)."""
    sft_weight: float = Field(default=0.0, ge=0.0)
    """Weight of an extra SFT loss (negative log-likelihood) on the chosen replies, which keeps the policy from
    drifting away from text it should write: dpo (RPO; LLaMA-Factory's pref_ftx) and simpo (CPO's alpha). orpo
    always has it (weight 1). 0: none."""
    desirable_weight: float = Field(default=1.0, gt=0)
    """kto: loss weight of the desirable rows. The KTO paper wants desirable_weight x desirable rows /
    (undesirable_weight x undesirable rows) in [1, 4/3]; data_report.json gives the range for your data."""
    undesirable_weight: float = Field(default=1.0, gt=0)
    """kto: loss weight of the undesirable rows."""

    def beta_for(self, stage: Stage) -> float:
        return self.beta if self.beta is not None else DEFAULT_BETA.get(stage, 0.1)

    def loss_for(self, stage: Stage) -> str | None:
        return self.loss_type or DEFAULT_LOSS.get(stage)


class TeacherConfig(_Section):
    name_or_path: str | None = None
    """stage distill: the teacher, any model reference (the bundled alias, a folder, a run folder, a hub id in the
    cache). It must use the student's vocabulary: logit distillation compares the two next-token distributions
    token by token."""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    """dtype the teacher is loaded in; None: the student's weight dtype (model.dtype, or the plan's choice for
    auto)."""
    beta: float = Field(default=0.0, ge=0.0, le=1.0)
    """Which divergence the student minimises: 0 = forward KL(teacher || student), classic distillation (the student
    spreads over every answer the teacher gives); 1 = reverse KL (it concentrates on the teacher's main answer);
    in between, GKD's generalised Jensen-Shannon divergence."""


def _pref_checks(stage: Stage, pref: PrefConfig) -> None:
    given = pref.changed_keys()
    if stage not in PREF_STAGES:
        if given:
            raise ConfigConflict(f"pref.{given[0]}", f"pref.{given[0]} is set but stage is {stage.value}",
                                 "pref: applies to stage dpo, kto, orpo or simpo; set stage, or remove pref:")
        return
    allowed = {Stage.dpo: DPO_LOSSES, Stage.kto: KTO_LOSSES}.get(stage, ())
    if pref.loss_type is not None and pref.loss_type not in allowed:
        choices = f"use one of {', '.join(allowed)}" if allowed else "remove it (this stage has one loss)"
        raise ConfigConflict("pref.loss_type", f"pref.loss_type {pref.loss_type!r} is not a {stage.value} loss",
                             choices)
    only = {"reference_free": {Stage.dpo}, "simpo_gamma": {Stage.simpo}, "sft_weight": {Stage.dpo, Stage.simpo},
            "desirable_weight": {Stage.kto}, "undesirable_weight": {Stage.kto},
            "label_smoothing": {Stage.dpo, Stage.simpo}}
    for key, stages in only.items():
        if key in given and stage not in stages:
            names = " or ".join(sorted(s.value for s in stages))
            raise ConfigConflict(f"pref.{key}", f"pref.{key} applies to stage {names}, not {stage.value}",
                                 f"remove pref.{key}")
    if stage is Stage.dpo and pref.label_smoothing and pref.loss_for(stage) not in _SMOOTHED:
        raise ConfigConflict("pref.label_smoothing", f"pref.label_smoothing with loss_type "
                             f"{pref.loss_for(stage)}: TRL's {pref.loss_for(stage)} DPO loss ignores it",
                             f"use loss_type {' / '.join(_SMOOTHED)} (robust is conservative DPO), or remove it")


def check_stage(cfg: Any) -> None:
    """The stage-specific contradictions of a whole ``RunConfig`` (raised as ``ConfigConflict``)."""
    stage = cfg.stage
    _pref_checks(stage, cfg.pref)
    teacher = cfg.teacher.name_or_path
    if stage is Stage.distill and not teacher:
        raise ConfigConflict("teacher.name_or_path", "stage distill needs a teacher model",
                             "set teacher.name_or_path (a model reference sharing the student's tokenizer)")
    if stage is not Stage.distill and cfg.teacher.changed_keys():
        raise ConfigConflict("teacher", f"teacher: is set but stage is {stage.value}",
                             "set stage: distill, or remove teacher:")
    if stage is not Stage.sft and cfg.train.packing:
        why = ("its rows are cutoff_len blocks already" if stage is Stage.pt else
               "preference pairs and distillation rows are not packed")
        raise ConfigConflict("train.packing", f"train.packing with stage {stage.value}: {why}",
                             "remove train.packing")
    if stage is not Stage.sft and cfg.train.backend != "transformers":
        raise ConfigConflict("train.backend", f"train.backend {cfg.train.backend} trains stage sft only",
                             "use train.backend: transformers for this stage")
    if stage is Stage.pt and cfg.template is not None:
        raise ConfigConflict("template", "stage pt reads plain text and uses no chat template",
                             "remove template (or use stage sft for conversations)")
    if stage is Stage.pt and cfg.eval.generate_every:
        raise ConfigConflict("eval.generate_every", "stage pt has no conversations to answer during training",
                             "remove eval.generate_every")
    if (stage is Stage.kto and cfg.train.per_device_train_batch_size < 2
            and cfg.pref.loss_for(stage) == "kto"):
        raise ConfigConflict("train.per_device_train_batch_size", "stage kto estimates its KL term from the other "
                             "rows of a micro-batch, so it needs at least 2 per device",
                             "set train.per_device_train_batch_size: 2 or more (or pref.loss_type: "
                             "apo_zero_unpaired, which has no KL term)")

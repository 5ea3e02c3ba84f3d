"""What an evaluation wrote (``eval.json``), as a typed object.

``sft eval`` / ``sft run`` write it; the report, the console and ``sft run --json`` read it through
``RunDir.eval_result()``. The fields below are the stable part; everything else an evaluation
records (flips, per-task and per-label tables, latency, skipped rows) is kept as extra fields.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

HEADLINE = ("pref_accuracy", "accuracy", "json_field_match", "key_facts_recall", "exact_match", "rougeL", "bleu")
"""The scores a result is summarised by, in order of preference (held-out preference accuracy for a preference
stage, accuracy for classification)."""


def headline_metric(scores: dict[str, Any]) -> str | None:
    """The one score ``scores`` is summarised by (the first of ``HEADLINE`` it has)."""
    return next((k for k in HEADLINE if isinstance(scores.get(k), int | float)), None)


class EvalResult(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    n: int = 0
    """Test rows scored."""
    model: dict[str, Any] = Field(default_factory=dict)
    """Scores of the model (or run) evaluated: loss, ppl and the generation metrics."""
    baseline: dict[str, Any] = Field(default_factory=dict)
    """The same scores for the baseline (empty when there was none)."""
    delta: dict[str, Any] = Field(default_factory=dict)
    """model - baseline, per score both have."""
    primary: str | None = None
    """The task's primary metric family (classification, json, key_facts, exact_match, rouge, bleu)."""
    flips: list[dict[str, Any]] = Field(default_factory=list)
    """Rows the baseline got wrong and the model right (and the reverse)."""

    @property
    def metric(self) -> str | None:
        """The headline score's name: accuracy, or json_field_match / exact_match / rougeL / bleu."""
        return headline_metric(self.model)

    def headline(self) -> tuple[str | None, float | None, float | None]:
        """(metric, baseline, model) of the headline score."""
        m = self.metric
        return m, (self.baseline.get(m) if m else None), (self.model.get(m) if m else None)

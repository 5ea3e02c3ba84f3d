"""The ``Diagnostics`` Trainer callback: ``sftkit.train.diagnose`` on the run's real logs.

It prints each finding once, as it appears (the console and the console's log show it), and keeps
``diagnostics.json`` in the run folder current; ``train_summary.json``, the report and the web
console's run page read that file.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from transformers import TrainerCallback

from sftkit.train.diagnose import Context, Finding, Point, Thresholds, find


def context_for(cfg: Any, report: dict[str, Any]) -> Context:
    """The Context of a RunConfig and its prepared data's report."""
    tokens = report.get("train_tokens") or 0
    return Context(
        learning_rate=cfg.train.learning_rate, method=cfg.method.type.value, lora_r=cfg.method.r,
        epochs=cfg.train.num_train_epochs, train_rows=report.get("train_examples", 0),
        duplicate_rows=(report.get("quality") or {}).get("exact_duplicate_rows", 0),
        trainable_share=report.get("train_trainable_tokens", 0) / tokens if tokens else None,
        mask=str(getattr(cfg.data.mask, "value", cfg.data.mask)), warmup_ratio=cfg.train.warmup_ratio,
        max_grad_norm=cfg.train.max_grad_norm,
        load_best=bool(cfg.train.load_best_model_at_end or cfg.train.early_stopping_patience))


class Diagnostics(TrainerCallback):
    """Runs ``find`` on every log; prints the first finding of each kind once and keeps ``diagnostics.json``
    current."""

    def __init__(self, path: Path, metrics: Path, ctx: Context, console: Console,
                 thresholds: Thresholds | None = None) -> None:
        self.path, self.metrics, self.ctx, self.console = path, metrics, ctx, console
        self.th = thresholds or Thresholds()
        self.train: list[Point] = []
        self.evals: list[Point] = []
        self.findings: dict[str, Finding] = {}
        self.planned = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        self.planned = state.max_steps
        if self.metrics.is_file():  # resumed: the curve so far (MetricsLogger has cut it back to the checkpoint)
            for line in self.metrics.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    self._add(json.loads(line))
                except (ValueError, AttributeError):
                    continue
        self._write(state, finished=False)

    def _add(self, row: dict[str, Any], step: int | None = None) -> None:
        step = row.get("step") if step is None else step
        epoch = float(row.get("epoch") or 0.0)
        for key, into in (("loss", self.train), ("eval_loss", self.evals)):
            value = row.get(key)
            if isinstance(step, int) and isinstance(value, int | float) and math.isfinite(value):
                into.append((step, float(value), epoch))

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        self._add({**logs, "epoch": logs.get("epoch", state.epoch)}, state.global_step)
        new = [f for f in find(self.train, self.evals, self.ctx, self.planned, self.th) if f.kind not in self.findings]
        for f in new:
            if f.kind in self.findings:  # memorised: the sudden drop and the loss near 0 at the same log
                continue
            self.findings[f.kind] = f
            self._best(f, args, state)
            self._announce(f)
        if new:
            self._write(state, finished=False)

    def _best(self, f: Finding, args: Any, state: Any) -> None:
        """Over-fitting: say where the best weights are (the Trainer keeps that checkpoint)."""
        ckpt = state.best_model_checkpoint
        if f.kind != "overfitting" or not ckpt:
            return
        f.evidence["best_checkpoint"] = ckpt
        f.actions = [a for a in f.actions if not a.startswith(("the best weights", "the final weights"))]
        if args.load_best_model_at_end:
            f.actions.insert(0, f"the final weights are the best evaluation's ({Path(ckpt).name}), since "
                             "load_best_model_at_end is on")
        else:
            f.actions.insert(0, f"the best weights are kept in {ckpt}: `sft eval {ckpt}` scores them, and "
                             "train.load_best_model_at_end: true finishes a run with them")

    def _announce(self, f: Finding) -> None:
        self.console.print(f"[bold yellow]diagnosis at step {f.step}: {escape(f.title)}[/]\n  {escape(f.message)}\n"
                           f"  likely causes: {escape('; '.join(f.causes))}\n"
                           f"  what to do: {escape('; '.join(f.actions))}", soft_wrap=True, highlight=False)

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        for f in self.findings.values():
            self._best(f, args, state)
        self._write(state, finished=True)

    def _write(self, state: Any, finished: bool) -> None:
        body = {"findings": [f.to_json() for f in self.findings.values()], "finished": finished,
                "steps_seen": state.global_step, "evaluations_seen": len(self.evals),
                "thresholds": asdict(self.th), "context": asdict(self.ctx)}
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(body, indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, self.path)

"""Training options that change when a run stops or what it keeps: early stopping on validation loss."""

from __future__ import annotations

import json

from sftkit.core.configio import load_config
from sftkit.train.recipe import run


def test_early_stopping_stops_when_validation_loss_stops_improving(tmp_path, tiny_model_dir):
    rows = [{"messages": [{"role": "user", "content": f"第{i}题"}, {"role": "assistant", "content": f"答{i}"}]}
            for i in range(12)]
    for name, part in (("t.jsonl", rows[:8]), ("v.jsonl", rows[8:])):
        (tmp_path / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part))
    # an absurd learning rate makes the validation loss climb after the first steps
    (tmp_path / "c.yaml").write_text(
        f"model:\n  name_or_path: {tiny_model_dir}\ndata:\n  train: t.jsonl\n  val: v.jsonl\n"
        "train:\n  max_steps: 30\n  per_device_train_batch_size: 4\n  learning_rate: 3.0\n  eval_steps: 1\n"
        "  save_steps: 1\n  logging_steps: 1\n  early_stopping_patience: 2\n  lr_scheduler_type: constant\n"
        "  warmup_ratio: 0\n  max_grad_norm: 0\n")
    res = run(load_config(tmp_path / "c.yaml", [f"output_dir={tmp_path / 'run'}"]))
    evals = [json.loads(x)["eval_loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if "eval_loss" in x]
    assert res.global_step < 30  # stopped early
    best = min(evals)
    assert evals.index(best) == len(evals) - 3  # two evaluations without improvement, then stop
    assert res.best_eval_loss == best

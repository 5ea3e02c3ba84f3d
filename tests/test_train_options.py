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


def test_load_best_model_at_end_finishes_with_the_best_checkpoint(tmp_path, tiny_model_dir):
    """The over-fitting diagnosis points at the best checkpoint; this option finishes the run with it."""
    import pytest
    from safetensors.torch import load_file

    from sftkit.core.errors import ConfigError

    rows = [{"messages": [{"role": "user", "content": f"第{i}题"}, {"role": "assistant", "content": f"答{i}"}]}
            for i in range(12)]
    for name, part in (("t.jsonl", rows[:8]), ("v.jsonl", rows[8:])):
        (tmp_path / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part))
    body = (f"model:\n  name_or_path: {tiny_model_dir}\ndata:\n  train: t.jsonl\n  val: v.jsonl\n"
            "method:\n  type: full\ntrain:\n  max_steps: 6\n  per_device_train_batch_size: 4\n  learning_rate: 3.0\n"
            "  eval_steps: 1\n"
            "  save_steps: 1\n  save_total_limit: 10\n  logging_steps: 1\n  lr_scheduler_type: constant\n"
            "  warmup_ratio: 0\n  max_grad_norm: 0\n  load_best_model_at_end: true\n")
    (tmp_path / "c.yaml").write_text(body)
    res = run(load_config(tmp_path / "c.yaml", [f"output_dir={tmp_path / 'run'}"]))
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    best = summary["best_checkpoint"]
    assert best and not best.endswith("checkpoint-6") and res.best_eval_loss == summary["best_eval_loss"]
    final = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    kept = load_file(str(tmp_path / "run" / "checkpoints" / best.rsplit("/", 1)[-1] / "model.safetensors"))
    assert all((final[k] == kept[k]).all() for k in kept)
    (tmp_path / "c2.yaml").write_text(body.replace("  val: v.jsonl\n", "").replace("  eval_steps: 1\n", ""))
    with pytest.raises(ConfigError, match="load_best_model_at_end"):
        load_config(tmp_path / "c2.yaml")

"""The chunked loss head wired into `sft train` (the CPU default, train.loss_head: auto): a run's loss curve,
evaluation loss and final weights equal the plain head's (transformers' own loss), with gradient
accumulation and evaluation on; the plan says which head ran."""

from __future__ import annotations

import json

import pytest

from sftkit.core.configio import load_config
from sftkit.train.recipe import run
from trainlib import curve, max_weight_diff, write_workdir


@pytest.fixture
def workdir(tmp_path, tiny_model_dir):
    write_workdir(tmp_path, tiny_model_dir, n_rows=20,
                  train="  max_steps: 4\n  per_device_train_batch_size: 2\n  gradient_accumulation_steps: 2\n"
                        "  eval_steps: 2\n  save_steps: 2\n")
    return tmp_path


def _eval_losses(run_dir):
    lines = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [round(r["eval_loss"], 5) for r in lines if "eval_loss" in r]


def test_chunked_head_trains_like_the_plain_head(workdir):
    over = ["data.val_size=0.2", "train.packing=true"]
    chunked = run(load_config(workdir / "cfg.yaml", [*over, "train.loss_head=auto", f"output_dir={workdir / 'c'}"]))
    plain = run(load_config(workdir / "cfg.yaml", [*over, "train.loss_head=plain", f"output_dir={workdir / 'p'}"]))
    assert json.loads((chunked.run_dir / "train_summary.json").read_text())["plan"]["loss_head"] == "chunked"
    assert json.loads((plain.run_dir / "train_summary.json").read_text())["plan"]["loss_head"] == "plain"
    got, want = curve(chunked.run_dir), curve(plain.run_dir)
    assert len(got) == 4 and got == want  # five decimals, step for step
    assert _eval_losses(chunked.run_dir) == _eval_losses(plain.run_dir) and _eval_losses(plain.run_dir)
    assert max_weight_diff(chunked.run_dir, plain.run_dir) < 1e-5


def test_a_head_it_cannot_reproduce_falls_back_to_the_plain_loss_and_says_why(workdir):
    cfg = load_config(workdir / "cfg.yaml", ["method.type=lora", "method.target_modules=[q_proj,lm_head]",
                                              "data.val_size=0.2", "train.max_steps=2",
                                              f"output_dir={workdir / 'l'}"])
    res = run(cfg)
    summary = json.loads((res.run_dir / "train_summary.json").read_text())
    assert summary["plan"]["loss_head"] == "plain"
    assert "not a plain nn.Linear" in summary["plan_reasons"]["loss_head"]
    assert "#   loss_head: plain" in (res.run_dir / "config.yaml").read_text()  # recorded again after the check

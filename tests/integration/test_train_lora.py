"""The foundation's promise, on the real bundled model: 5 LoRA steps on 16
conversations lower the loss, change every LoRA weight and no base weight, and
the saved adapter reloads to identical logits."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import TrainerCallback

from sftkit.core.configio import load_config
from sftkit.hub.models import load_model, resolve
from sftkit.train.recipe import run

pytestmark = pytest.mark.integration


class Snapshot(TrainerCallback):
    def __init__(self) -> None:
        self.before: dict[str, torch.Tensor] = {}
        self.model = None

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.before = {k: v.detach().clone() for k, v in model.named_parameters()}
        self.model = model


def _data(tmp_path):
    rows = []
    for i in range(16):
        rows.append({"messages": [
            {"role": "user", "content": f"Code word number {i}?"},
            {"role": "assistant", "content": f"The code word is ZORBLAX-{i % 4}."},
        ]})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        "data:\n  train: train.jsonl\n"
        "train:\n  max_steps: 5\n  learning_rate: 2.0e-3\n  per_device_train_batch_size: 4\n"
        "  logging_steps: 1\n  warmup_ratio: 0.0\n  lr_scheduler_type: constant\n"
        "method:\n  dropout: 0.0\n"
    )
    return cfg


def test_five_lora_steps_end_to_end(tmp_path):
    snap = Snapshot()
    cfg = load_config(_data(tmp_path), [f"output_dir={tmp_path / 'run'}"])
    result = run(cfg, callbacks=[snap])
    run_dir = result.run_dir

    losses = [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 5
    assert losses[-1] < losses[0] * 0.7, losses

    after = dict(snap.model.named_parameters())
    lora = [k for k in snap.before if "lora_" in k]
    base = [k for k in snap.before if "lora_" not in k]
    assert len(lora) == 30 * 7 * 2  # 30 layers x 7 linear projections x (A, B)
    unchanged = [k for k in lora if torch.equal(snap.before[k], after[k])]
    assert unchanged == [], f"LoRA weights that did not move: {unchanged[:5]}"
    moved = [k for k in base if not torch.equal(snap.before[k], after[k])]
    assert moved == [], f"base weights that moved: {moved[:5]}"

    for name in ("config.yaml", "metrics.jsonl", "data_report.json", "loss.png", "adapter/adapter_config.json"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "checkpoints").glob("checkpoint-*"))
    report = json.loads((run_dir / "data_report.json").read_text())
    assert report["train_examples"] == 16 and report["rejected"] == 0
    assert sum(report["length_histogram"]["counts"]) == 16
    # 16 rows but only 4 distinct answers to distinct prompts: no duplicates, no conflicts
    assert report["quality"]["exact_duplicate_rows"] == 0 and report["quality"]["lint"]["conflicting_answer"] == 0

    reloaded = load_model(resolve(run_dir))
    trained = snap.model.eval()
    ids = torch.tensor([[1, 9707, 28, 1041, 2, 198]])
    with torch.no_grad():
        a = trained(input_ids=ids).logits
        b = reloaded(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()

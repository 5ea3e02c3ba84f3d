"""Each worked example runs end to end (`sft run`) for a couple of steps on the bundled
model with a tiny evaluation. The full runs are benchmarks, not tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sftkit.cli import app

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ["train.max_steps=2", "train.per_device_train_batch_size=2", "train.gradient_accumulation_steps=1",
         "train.logging_steps=1", "eval.limit=2", "eval.max_new_tokens=8", "eval.forgetting_check=false"]
# tcm_consult's dialogues are ~2,600 tokens: 512 keeps the smoke run short and still trains the first reply
CUTOFF = {"tcm_consult": ["data.cutoff_len=512"]}


@pytest.mark.parametrize("name", ["api_assistant", "tcm_consult", "news_cls", "general_assistant"])
def test_example_runs(name, tmp_path):
    res = CliRunner().invoke(app, ["run", name, *SMOKE, *CUTOFF.get(name, []), f"output_dir={tmp_path / name}",
                                   "--json"])
    assert res.exit_code == 0, res.output[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    run = Path(out["run_dir"])
    assert (run / "adapter" / "adapter_config.json").exists()
    assert (run / "eval.json").exists() and Path(out["report"]).exists()
    losses = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for r in losses if "loss" in r) == 2

"""The pref_privacy example runs end to end with `sft run` on the bundled model (both stages, a couple of
steps each): the SFT stage its config names is trained first, the DPO stage continues its adapter, and
`--json` reports held-out preference accuracy before and after. The full run is a benchmark
(`bench/pref_example.py`), not a test."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sftkit.cli import app
from sftkit.pipeline import examples_dir

pytestmark = pytest.mark.integration
SMOKE = ["train.max_steps=2", "train.per_device_train_batch_size=2", "train.logging_steps=1", "eval.limit=4",
         "eval.max_new_tokens=8", "eval.forgetting_check=false"]


def test_pref_example_runs_both_stages(tmp_path, monkeypatch):
    example = tmp_path / "pref_privacy"
    shutil.copytree(examples_dir() / "pref_privacy", example)
    sft = example / "sft.yaml"
    sft.write_text(re.sub(r"num_train_epochs: \d+", "max_steps: 2", sft.read_text()))
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["run", str(example), *SMOKE, "--json"])
    assert res.exit_code == 0, res.output[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    parent = tmp_path / "runs" / "pref_privacy_sft"
    assert json.loads((parent / "train_summary.json").read_text())["global_step"] == 2
    assert out["stage"] == "dpo" and out["score"]["metric"] == "pref_accuracy"
    pref = out["preference"]
    assert pref["n"] == 4 and 0 <= pref["baseline"] <= 1 and 0 <= pref["tuned"] <= 1
    run = Path(out["run_dir"])
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["parent"]["run_dir"] == str(parent.resolve()) and summary["stage"] == "dpo"
    assert json.loads((run / "eval.json").read_text())["refs"]["baseline"].endswith("(parent run)")

"""examples/annual_report (issue 20, item 1): its shipped data is what the real `sft data` chain makes
from its documents, and `sft run` on it headlines the key-facts recall."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import sftkit

EXAMPLE = Path(sftkit.__file__).parent / "examples" / "annual_report"
SRC = Path(sftkit.__file__).parents[1]


def _same_teacher(text: str) -> str:
    return re.sub(r"http://127\.0\.0\.1:\d+/v1", "http://127.0.0.1:PORT/v1", text)  # a busy port falls back


@pytest.mark.slow
def test_shipped_data_is_what_the_chain_makes(tmp_path):
    """build_data.py runs extract, synth (through the scripted teacher's HTTP endpoint), sample, agree,
    review, check, dedup, split and leak as subprocesses; every file it writes equals the shipped one."""
    work = tmp_path / "annual_report"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("data"))
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run([sys.executable, str(work / "build_data.py")], capture_output=True, text=True, env=env,
                          check=False, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert '"leaked": 0' in done.stdout and '"kappa": 0.6' in done.stdout
    shipped = sorted(p.name for p in (EXAMPLE / "data").iterdir())
    assert sorted(p.name for p in (work / "data").iterdir()) == shipped
    for name in shipped:
        got = (work / "data" / name).read_text(encoding="utf-8")
        assert _same_teacher(got) == _same_teacher((EXAMPLE / "data" / name).read_text(encoding="utf-8")), name
    rejects = [json.loads(x) for x in (EXAMPLE / "data" / "drafts.rejects.jsonl").read_text("utf-8").splitlines()]
    assert [r["reason"].split(":")[0] for r in rejects] == ["answer figure(s) not in the chunk"] * 2 + [
        "the answer says the text does not tell"]


@pytest.mark.slow
def test_sft_run_headlines_key_facts(tmp_path, tiny_model_dir):
    """The whole pipeline on the example's config and data (the tiny model, two steps, two test rows)."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-m", "sftkit.cli", "run", "examples/annual_report", "--json",
         f"model.name_or_path={tiny_model_dir}", f"output_dir={tmp_path / 'run'}", "train.max_steps=2",
         "eval.limit=2", "eval.max_new_tokens=4", "eval.forgetting_check=false"],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["metric"] == "key_facts_recall" and out["score"]["metric"] == "key_facts_recall"
    assert out["primary_metric"] == "key_facts"
    ev = json.loads((tmp_path / "run" / "eval.json").read_text(encoding="utf-8"))
    assert {"key_facts_recall", "key_facts_accuracy", "rougeL"} <= set(ev["model"])
    assert ev["details"]["model"]["key_facts"]["answers_with_facts"] == 2
    assert (tmp_path / "run" / "diagnostics.json").is_file()

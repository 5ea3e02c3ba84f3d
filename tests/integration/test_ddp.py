"""Data parallelism for real: `sft train --nproc 2` runs two gloo ranks on this CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_two_process_data_parallel(tmp_path, tiny_model_dir):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(16)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "c.yaml").write_text(
        f"model:\n  name_or_path: {tiny_model_dir}\ndata:\n  train: t.jsonl\n"
        "train:\n  max_steps: 2\n  per_device_train_batch_size: 4\n  logging_steps: 1\n")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sftkit.cli", "train", str(tmp_path / "c.yaml"), f"output_dir={out}", "--nproc", "2"]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert proc.stderr.count("x 2 device(s) = 8 sequences/step") == 1  # rank 0 speaks, rank 1 is quiet
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["global_step"] == 2
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    # one metrics writer (rank 0), two logged steps
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]

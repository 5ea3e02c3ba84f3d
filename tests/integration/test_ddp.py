"""Data parallelism for real: `sft train --nproc 2` runs two gloo ranks on this CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _train(tmp_path, tiny_model_dir, name: str, per_device: int, nproc: int) -> subprocess.CompletedProcess:
    # 8 rows: one optimizer step sees all of them however they are split over ranks, so one process with
    # batch 8 and two with batch 4 must compute the same gradients (dropout off: ranks draw differently)
    rows = [{"messages": [{"role": "user", "content": f"问题 {i}"},
                          {"role": "assistant", "content": f"回答 {i}" * (1 + i)}]} for i in range(8)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (tmp_path / "c.yaml").write_text(
        f"model:\n  name_or_path: {tiny_model_dir}\ndata:\n  train: t.jsonl\nmethod:\n  dropout: 0.0\n"
        f"train:\n  max_steps: 3\n  per_device_train_batch_size: {per_device}\n  logging_steps: 1\n"
        "  learning_rate: 1.0e-2\n  lr_scheduler_type: constant\n  warmup_ratio: 0\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sftkit.cli", "train", str(tmp_path / "c.yaml"), f"output_dir={tmp_path / name}",
           "--nproc", str(nproc)]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=600)


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    proc = _train(tmp_path, tiny_model_dir, "ddp", 4, 2)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert proc.stderr.count("x 2 device(s) = 8 sequences/step") == 1  # rank 0 speaks, rank 1 is quiet
    out = tmp_path / "ddp"
    assert json.loads((out / "train_summary.json").read_text())["global_step"] == 3
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # one metrics writer (rank 0)

    single = _train(tmp_path, tiny_model_dir, "one", 8, 1)
    assert single.returncode == 0, single.stderr[-4000:]
    a = load_file(out / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "one" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    moved = 0
    for k in a:
        assert (a[k] - b[k]).abs().max().item() < 1e-4, k  # gradients were averaged across the ranks
        moved += int(a[k].abs().sum().item() > 0)
    assert moved == len(a)

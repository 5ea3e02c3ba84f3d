"""Data parallelism for real on this CPU: `sft train --nproc 2` runs two gloo ranks, plain DDP and
DeepSpeed ZeRO-3 (DeepSpeed selects its CPU accelerator). Each must end with the weights of one
process that sees the same global batch."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _train(work: Path, tiny_model_dir: Path, name: str, per_device: int, nproc: int, *extra: str
           ) -> subprocess.CompletedProcess:
    # 8 rows: one optimizer step sees all of them however they are split over ranks, so one process with
    # batch 8 and two with batch 4 must compute the same gradients (dropout off: ranks draw differently)
    rows = [{"messages": [{"role": "user", "content": f"问题 {i}"},
                          {"role": "assistant", "content": f"回答 {i}" * (1 + i)}]} for i in range(8)]
    (work / "t.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (work / "c.yaml").write_text(
        f"model:\n  name_or_path: {tiny_model_dir}\ndata:\n  train: t.jsonl\nmethod:\n  dropout: 0.0\n"
        f"train:\n  max_steps: 3\n  per_device_train_batch_size: {per_device}\n  logging_steps: 1\n"
        "  learning_rate: 1.0e-2\n  lr_scheduler_type: constant\n  warmup_ratio: 0\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sftkit.cli", "train", str(work / "c.yaml"), f"output_dir={work / name}",
           "--nproc", str(nproc), *extra]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=900)


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_model_dir) -> dict:
    from safetensors.torch import load_file

    work = tmp_path_factory.mktemp("ddp")
    proc = _train(work, tiny_model_dir, "one", 8, 1)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return load_file(work / "one" / "adapter" / "adapter_model.safetensors")


def _same_weights(run: Path, single: dict) -> None:
    from safetensors.torch import load_file

    got = load_file(run / "adapter" / "adapter_model.safetensors")
    assert got.keys() == single.keys()
    for k in got:
        assert got[k].shape == single[k].shape, k  # a sharded tensor saved without gathering would be empty
        assert (got[k] - single[k]).abs().max().item() < 1e-4, k  # gradients were averaged across the ranks
        assert got[k].abs().sum().item() > 0, k


def test_two_processes_equal_one_with_the_same_global_batch(tmp_path, tiny_model_dir, single):
    proc = _train(tmp_path, tiny_model_dir, "ddp", 4, 2)
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert proc.stderr.count("x 2 device(s) = 8 sequences/step") == 1  # rank 0 speaks, rank 1 is quiet
    out = tmp_path / "ddp"
    assert json.loads((out / "train_summary.json").read_text())["global_step"] == 3
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]  # one metrics writer (rank 0)
    _same_weights(out, single)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed")
def test_deepspeed_zero3_on_cpu_equals_one_process(tmp_path, tiny_model_dir, single):
    proc = _train(tmp_path, tiny_model_dir, "zero3", 4, 2, "train.deepspeed=zero3")
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert not (tmp_path / "zero3" / "adapter" / "training_args.bin").exists()
    _same_weights(tmp_path / "zero3", single)

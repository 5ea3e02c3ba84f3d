"""Trackers work with no network: tensorboard event files, wandb and swanlab offline runs
land in the run folder; a missing tracker package fails before any work."""

from __future__ import annotations

import importlib.util
import json

import pytest

from sftkit.core.configio import load_config
from sftkit.core.errors import MethodUnavailable
from sftkit.train.recipe import run
from sftkit.train.tracking import setup


def _cfg(tmp_path, tiny_model_dir, trackers):
    rows = [{"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(8)]
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "c.yaml").write_text(
        f"model:\n  name_or_path: {tiny_model_dir}\ndata:\n  train: t.jsonl\n"
        f"train:\n  max_steps: 2\n  logging_steps: 1\n  report_to: {json.dumps(trackers)}\n")
    return load_config(tmp_path / "c.yaml", [f"output_dir={tmp_path / 'run'}"])


def test_unknown_tracker_is_refused(tmp_path):
    with pytest.raises(MethodUnavailable, match="unknown tracker"):
        setup(["neptune"], tmp_path, "x")


@pytest.mark.parametrize("name", ["tensorboard", "wandb", "swanlab"])
def test_tracker_offline(tmp_path, tiny_model_dir, monkeypatch, name):
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} not installed (pip install 'sftkit-llm[track]')")
    for var in ("WANDB_API_KEY", "SWANLAB_API_KEY", "WANDB_MODE", "SWANLAB_MODE", "TENSORBOARD_LOGGING_DIR",
                "WANDB_DIR", "NETRC", "WANDB_CONFIG_DIR", "SWANLAB_ROOT", "SWANLAB_SAVE_DIR"):
        monkeypatch.setenv(var, "x")  # recorded, so that the teardown restores what setup() sets
        monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no `wandb login` / `swanlab login` of the developer's
    monkeypatch.chdir(tmp_path)
    result = run(_cfg(tmp_path, tiny_model_dir, [name]))
    folder = {"tensorboard": "tensorboard", "wandb": "wandb", "swanlab": "swanlab"}[name]
    files = [p for p in (result.run_dir / folder).rglob("*") if p.is_file()]
    assert files, f"no {name} files under {result.run_dir / folder}"
    if name == "tensorboard":
        assert any("tfevents" in p.name for p in files)


def test_generate_every_logs_a_task_metric(tmp_path, tiny_model_dir):
    cfg = _cfg(tmp_path, tiny_model_dir, [])
    cfg = cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"val_size": 0.25}),
        "eval": cfg.eval.model_copy(update={"generate_every": 1, "generate_samples": 2, "max_new_tokens": 4,
                                            "metrics": ["exact_match"]}),
    })
    result = run(cfg)
    rows = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    gen = [r for r in rows if "gen_exact_match" in r]
    assert [r["step"] for r in gen] == [1, 2]
    assert all(0.0 <= r["gen_exact_match"] <= 1.0 for r in gen)

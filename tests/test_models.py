"""Model references resolve to local folders, or fail with one actionable sentence."""

from __future__ import annotations

import json
import time

import pytest

from sftkit.core.errors import ModelNotFound
from sftkit.core.vocab import BUNDLED_ALIAS
from sftkit.hub.models import resolve


def test_bundled_alias_resolves_to_cached_safetensors_folder(bundled_path):
    assert (bundled_path / "model.safetensors").is_file()
    assert (bundled_path / "config.json").is_file() and (bundled_path / "tokenizer.json").is_file()
    t = time.perf_counter()
    again = resolve(BUNDLED_ALIAS)
    assert again.path == bundled_path and again.adapter is None
    assert time.perf_counter() - t < 5  # cached: no second de-quantisation (a bound, not a benchmark)


def test_local_folder(tiny_model_dir):
    r = resolve(str(tiny_model_dir))
    assert r.path == tiny_model_dir.resolve() and r.adapter is None and r.run_dir is None


def test_run_folder_gives_base_plus_adapter(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text(f"model:\n  name_or_path: {tiny_model_dir}\n")
    r = resolve(str(run))
    assert r.path == tiny_model_dir.resolve()
    assert r.adapter == (run / "adapter").resolve() and r.run_dir == run.resolve()


def test_full_finetune_run_folder_gives_its_model(tmp_path, tiny_model_dir):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_model_dir, run / "model")
    (run / "config.yaml").write_text("model:\n  name_or_path: whatever\n")
    r = resolve(str(run))
    assert r.path == (run / "model").resolve() and r.adapter is None and r.run_dir == run.resolve()


def test_adapter_folder_points_at_its_base(tmp_path, tiny_model_dir):
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir)}))
    r = resolve(str(tmp_path))
    assert r.adapter == tmp_path.resolve() and r.path == tiny_model_dir.resolve()


def test_hub_id_offline_is_one_clear_sentence(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelNotFound) as e:
        resolve("some-org/some-model-that-is-not-cached")
    msg = str(e.value)
    assert "not available offline" in msg and "local model folder" in msg
    assert "sft download some-org/some-model-that-is-not-cached" in msg and "HF_ENDPOINT" in msg
    assert "\n" not in msg and "Traceback" not in msg


def test_missing_path_and_non_model_folder(tmp_path):
    with pytest.raises(ModelNotFound, match="no such file or folder"):
        resolve(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFound, match="not a model"):
        resolve(str(tmp_path))

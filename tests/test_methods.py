"""Each method on the tiny model trains exactly the parameters it should; unavailable
backends fail before any work with a message that says what to install."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from sftkit.config import MethodConfig, load_config
from sftkit.methods import MethodUnavailable, attach, count_parameters, deepspeed_config, quantization_config
from sftkit.train import TrainError, run


def _model(path):
    return AutoModelForCausalLM.from_pretrained(path)


def test_lora_trains_only_adapters(tiny_model_dir):
    m = attach(_model(tiny_model_dir), MethodConfig(type="lora", r=4))
    names = [n for n, p in m.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert len(names) == 2 * 7 * 2  # 2 layers x 7 linear projections x (A, B)


def test_rslora_and_dora_are_passed_to_peft(tiny_model_dir):
    m = attach(_model(tiny_model_dir), MethodConfig(type="lora", r=4, use_rslora=True, use_dora=True))
    cfg = m.peft_config["default"]
    assert cfg.use_rslora and cfg.use_dora
    assert any("lora_magnitude_vector" in n for n, _ in m.named_parameters())


def test_freeze_trains_last_layers_only(tiny_model_dir):
    m = attach(_model(tiny_model_dir), MethodConfig(type="freeze", freeze_trainable_layers=1))
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.layers.1.") for n in trainable)


def test_full_trains_everything(tiny_model_dir):
    m = attach(_model(tiny_model_dir), MethodConfig(type="full"))
    trainable, total = count_parameters(m)
    assert trainable == total > 0


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_qlora_without_bitsandbytes_says_what_to_install():
    with pytest.raises(MethodUnavailable, match="pip install"):
        quantization_config(MethodConfig(type="qlora"))


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed")
def test_deepspeed_without_package_says_what_to_install():
    with pytest.raises(MethodUnavailable, match="pip install"):
        deepspeed_config("zero2")


def test_shipped_deepspeed_presets_are_valid_json():
    from importlib.resources import files

    for name in ("zero2", "zero3", "zero3_offload"):
        cfg = json.loads((files("sftkit") / "assets" / "deepspeed" / f"{name}.json").read_text())
        assert cfg["zero_optimization"]["stage"] in (2, 3)
        assert cfg["train_micro_batch_size_per_gpu"] == "auto"


def test_fsdp_on_cpu_is_refused_before_training(tmp_path, tiny_model_dir):
    (tmp_path / "t.jsonl").write_text(json.dumps({"messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n")
    (tmp_path / "c.yaml").write_text(f"model:\n  name_or_path: {tiny_model_dir}\ndata:\n  train: t.jsonl\n"
                                     "train:\n  fsdp: full_shard auto_wrap\n")
    if torch.cuda.is_available():
        pytest.skip("GPU present")
    with pytest.raises(TrainError, match=r"train\.fsdp needs GPUs"):
        run(load_config(tmp_path / "c.yaml", [f"output_dir={tmp_path / 'r'}"]))

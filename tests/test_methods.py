"""Each method on the tiny model trains exactly the parameters it should; unavailable
backends fail before any work with a message that says what to install."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from sftkit.core.config import MethodConfig
from sftkit.core.configio import load_config
from sftkit.core.errors import MethodUnavailable, TrainError
from sftkit.train.methods import attach, count_parameters, deepspeed_config, quantization_config
from sftkit.train.recipe import run


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


def test_freeze_named_modules(tiny_model_dir):
    m = attach(_model(tiny_model_dir), MethodConfig(type="freeze", freeze_trainable_layers=0,
                                                    freeze_trainable_modules=["model.norm"]))
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {"model.norm.weight"}
    with pytest.raises(MethodUnavailable, match="no parameter name contains it"):
        attach(_model(tiny_model_dir), MethodConfig(type="freeze", freeze_trainable_modules=["nosuch"]))
    with pytest.raises(ValueError, match="trains nothing"):
        MethodConfig(type="freeze", freeze_trainable_layers=0)


def _rows_file(tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"问题{i}: 2+{i}=?"},
                          {"role": "assistant", "content": f"答案是{2 + i}。"}]} for i in range(8)]
    p = tmp_path / "t.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return p


def _weights(model):
    return {n: p.detach().float().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("method", ["full", "freeze", "qlora"])
def test_each_method_really_trains(method, tmp_path, tiny_model_dir):
    """A few real optimizer steps: the loss falls, the intended weights move and the frozen ones do not."""
    if method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed")
    from transformers import TrainerCallback

    seen = {}

    class Grab(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            seen["before"] = _weights(model)

        def on_train_end(self, args, state, control, model=None, **kw):
            seen["after"] = _weights(model)
            seen["trainable"] = {n for n, p in model.named_parameters() if p.requires_grad}

    _rows_file(tmp_path)
    (tmp_path / "c.yaml").write_text(
        f"model:\n  name_or_path: {tiny_model_dir}\ndata:\n  train: t.jsonl\n"
        f"method:\n  type: {method}\n{'  freeze_trainable_layers: 1' if method == 'freeze' else ''}\n"
        "train:\n  max_steps: 6\n  per_device_train_batch_size: 8\n  learning_rate: 5.0e-3\n  logging_steps: 1\n"
        "  lr_scheduler_type: constant\n  warmup_ratio: 0\n")
    run(load_config(tmp_path / "c.yaml", [f"output_dir={tmp_path / 'run'}"]), callbacks=[Grab()])
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in x]
    assert losses[-1] < losses[0]
    before, after = seen["before"], seen["after"]
    moved = {n for n in before if not torch.equal(before[n], after[n])}
    assert moved and moved <= seen["trainable"]
    if method == "freeze":
        assert all(".layers.1." in n for n in moved)
    if method == "qlora":
        assert all("lora_" in n for n in moved)
    out = tmp_path / "run" / ("model" if method in ("full", "freeze") else "adapter")
    assert any(out.glob("*.safetensors"))
    summary = json.loads((tmp_path / "run" / "train_summary.json").read_text())
    assert summary["global_step"] == 6 and summary["tokens"] > 0 and summary["final"] == str(out)
    assert (tmp_path / "run" / "report.html").is_file()  # written at the end of training


def test_qlora_counts_real_parameters(tiny_model_dir):
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed")
    from sftkit.core.config import MethodConfig as MC
    from sftkit.train.methods import quantization_config as qc

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    _, plain_total = count_parameters(attach(base, MC(type="lora", r=4)))
    q = AutoModelForCausalLM.from_pretrained(tiny_model_dir, quantization_config=qc(MC(type="qlora")),
                                             device_map="cpu")
    _, q_total = count_parameters(attach(q, MC(type="qlora", r=4)))
    assert q_total == plain_total

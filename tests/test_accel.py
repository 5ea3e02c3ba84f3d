"""GPU switches: each is refused on this CPU machine with one sentence before any work;
the GPU-side decisions are checked with stated capabilities; what runs on CPU runs for
real (8-bit / paged AdamW through bitsandbytes, padding-free batches under sdpa)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from typer.testing import CliRunner

from sftkit.cli import app
from sftkit.core.configio import load_config
from sftkit.core.errors import AcceleratorUnavailable
from sftkit.hub.device import Capabilities
from sftkit.train.accel import check_train, train_collator
from sftkit.train.collate import Collator, FlatCollator
from trainlib import weather_config

A100 = Capabilities(cuda=True, capability=(8, 0), bf16=True,
                    packages=frozenset({"unsloth", "liger_kernel", "flash_attn", "bitsandbytes", "vllm"}))
V100 = Capabilities(cuda=True, capability=(7, 0), bf16=False, packages=A100.packages)
CPU_NO_PKGS = Capabilities(cuda=False)
ON_GPU_NO_PKGS = Capabilities(cuda=True, capability=(9, 0), bf16=True)


@pytest.fixture
def cfg_file(tmp_path, tiny_model_dir):
    return weather_config(tmp_path, tiny_model_dir, "method:\n  type: lora\n")


def cfg(path, *over):
    return load_config(path, list(over))


# -- refused on this machine, before any work ---------------------------------------------------

CPU_REFUSALS = [
    ("train.backend=unsloth", "train.backend=unsloth needs a CUDA GPU"),
    ("train.use_liger_kernel=true", "Liger's Triton kernels fail on CPU"),
    ("model.attn_implementation=flash_attention_2", "flash_attention_2 needs a CUDA GPU of compute capability 8.0+"),
    ("train.optim=adamw_8bt", "did you mean 'adamw_8bit'?"),
    ("train.fp16=true", "on a CPU use train.bf16=true"),
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="these are the CPU-machine answers")
@pytest.mark.parametrize(("override", "expected"), CPU_REFUSALS)
def test_cli_refuses_before_reading_data_or_loading_a_model(cfg_file, tmp_path, override, expected):
    out = tmp_path / "run"
    # the data file does not even exist: the check must come first
    r = CliRunner().invoke(app, ["train", str(cfg_file), override, f"output_dir={out}", "data.train=missing.jsonl"])
    assert r.exit_code == 2, r.output
    assert expected in r.output and "Traceback" not in r.output
    assert not out.exists()  # no run folder written


def test_gpu_decisions_with_stated_capabilities(cfg_file):
    assert check_train(cfg(cfg_file, "train.backend=unsloth", "train.use_liger_kernel=true",
                           "model.attn_implementation=flash_attention_2", "model.dtype=bfloat16",
                           "train.optim=paged_adamw_8bit"), A100) == [
        "model.attn_implementation is ignored with train.backend=unsloth (Unsloth picks its own attention kernels)"]
    cases = [
        (["train.backend=unsloth"], ON_GPU_NO_PKGS, "needs the unsloth package: `pip install unsloth`"),
        (["train.backend=unsloth", "method.type=full"], A100, "lora or qlora in sftkit, not full"),
        (["train.backend=unsloth", "train.deepspeed=zero3"], A100, "trains on one GPU here"),
        (["train.backend=unsloth", "method.use_dora=true"], A100, "use_dora is not available"),
        (["train.use_liger_kernel=true"], ON_GPU_NO_PKGS, "`pip install liger-kernel`"),
        (["model.attn_implementation=flash_attention_2", "model.dtype=bfloat16"], V100, "a V100 is 7.0"),
        (["model.attn_implementation=flash_attention_2", "model.dtype=bfloat16"], ON_GPU_NO_PKGS,
         "`pip install flash-attn --no-build-isolation`"),
        (["model.attn_implementation=flash_attention_2", "model.dtype=float32"], A100, "computes in fp16/bf16 only"),
        (["model.attn_implementation=sftkit_varlen"], V100, "a V100 is 7.0"),
        (["model.attn_implementation=sftkit_varlen"], ON_GPU_NO_PKGS, "needs torch.nn.attention.varlen"),
        (["train.loss_head=liger"], CPU_NO_PKGS, "Liger's Triton kernels fail on CPU"),
        (["train.loss_head=liger"], ON_GPU_NO_PKGS, "`pip install liger-kernel`"),
        (["train.bf16=true"], V100, "use train.fp16=true instead"),
        (["train.optim=adamw_8bit"], CPU_NO_PKGS, "needs bitsandbytes: `pip install bitsandbytes`"),
    ]
    for over, caps, expected in cases:
        with pytest.raises(AcceleratorUnavailable) as e:
            check_train(cfg(cfg_file, *over), caps)
        assert expected in str(e.value), (over, str(e.value))
        assert "\n" not in str(e.value)
    # several problems: one sentence each
    with pytest.raises(AcceleratorUnavailable) as e:
        check_train(cfg(cfg_file, "train.backend=unsloth", "train.use_liger_kernel=true"), CPU_NO_PKGS)
    assert len(str(e.value).splitlines()) == 2
    assert check_train(cfg(cfg_file, "train.bf16=true"), Capabilities(cuda=False, cpu_bf16=True)) == []  # native bf16


def test_liger_goes_to_training_arguments(cfg_file, tmp_path):
    from sftkit.train import stages
    from sftkit.train.recipe import _training_args

    c = cfg(cfg_file, "train.use_liger_kernel=true")
    args = stages.arguments(c, _training_args(c, tmp_path, False, []))
    assert args.use_liger_kernel is True


# -- bitsandbytes optimizers, for real on CPU ---------------------------------------------------


class _Seen:
    def __init__(self):
        from transformers import TrainerCallback

        seen = self

        class CB(TrainerCallback):
            def on_step_end(self, args, state, control, optimizer=None, **kw):
                seen.optimizer = optimizer

        self.callback, self.optimizer = CB(), None


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
@pytest.mark.parametrize("optim", ["adamw_8bit", "paged_adamw_8bit"])
def test_bitsandbytes_optimizers_train_the_tiny_model(cfg_file, tmp_path, optim, capsys):
    from rich.console import Console

    from sftkit.train.recipe import run

    seen = _Seen()
    console = Console(stderr=True, width=200)
    res = run(cfg(cfg_file, f"train.optim={optim}", "method.type=full", f"output_dir={tmp_path / optim}"),
              console=console, callbacks=[seen.callback])
    assert res.global_step == 2 and res.final_loss is not None and res.final_loss == res.final_loss
    inner = getattr(seen.optimizer, "optimizer", seen.optimizer)
    assert type(inner).__module__.startswith("bitsandbytes")
    # 8-bit state: bitsandbytes keeps quantized (uint8) moments for the large tensors
    states = [s for s in inner.state.values() if "state1" in s]
    assert any(s["state1"].dtype == torch.uint8 for s in states)
    err = capsys.readouterr().err
    if optim.startswith("paged_") and not torch.cuda.is_available():
        assert "on CPU bitsandbytes runs it as the plain adamw_8bit optimizer" in err


# -- padding-free batches (flash attention's packing), checked under sdpa -----------------------


def test_flat_collator_keeps_examples_apart(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa").eval()
    torch.manual_seed(0)
    rows = [{"input_ids": torch.randint(0, 1000, (n,)).tolist(), "labels": torch.randint(0, 1000, (n,)).tolist()}
            for n in (7, 12, 5)]
    batch = FlatCollator(0)(rows)
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch
    assert batch["position_ids"][0, :7].tolist() == list(range(7)) and batch["position_ids"][0, 7] == 0
    starts = [0, 7, 19]
    assert all(batch["labels"][0, s] == -100 for s in starts)  # no row learns its start from its neighbour
    with torch.no_grad():
        assert batch["use_cache"] is False  # transformers derives the per-example mask only without a KV cache
        flat = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        for s, r in zip(starts, rows, strict=True):
            alone = model(input_ids=torch.tensor([r["input_ids"]])).logits[0]
            assert torch.allclose(flat[s:s + len(r["input_ids"])], alone, atol=1e-5)


def test_flat_collator_only_for_flash_attention_with_packing(cfg_file):
    assert isinstance(train_collator(cfg(cfg_file, "train.packing=true",
                                         "model.attn_implementation=flash_attention_2"), 0), FlatCollator)
    assert isinstance(train_collator(cfg(cfg_file, "train.packing=true"), 0), Collator)
    assert isinstance(train_collator(cfg(cfg_file, "model.attn_implementation=flash_attention_2"), 0), Collator)


def test_gpu_quickstart_config_is_valid_and_passes_the_checks_on_a_gpu():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "configs" / "gpu_qwen2_7b_qlora.yaml"
    c = load_config(path)
    assert c.model.name_or_path == "Qwen/Qwen2-7B-Instruct" and c.method.type.value == "qlora"
    assert all(s.path.is_file() for s in [*c.data.train, *c.data.val, *c.data.test])
    assert check_train(c, A100) == []
    assert check_train(load_config(path, ["train.backend=unsloth"]), A100) == []
    zero3 = load_config(path, ["method.type=lora", "train.deepspeed=zero3", "train.optim=adamw_torch"])
    assert check_train(zero3, A100) == []
    with pytest.raises(AcceleratorUnavailable, match=r"use train\.fp16=true"):
        check_train(c, V100)


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")
def test_qlora_with_paged_8bit_adamw_trains_on_cpu(cfg_file, tmp_path):
    """The GPU quick-start's method and optimizer, on the tiny model: 4-bit NF4 base + LoRA + 8-bit AdamW."""
    from sftkit.train.recipe import run

    seen = _Seen()
    res = run(cfg(cfg_file, "method.type=qlora", "train.optim=paged_adamw_8bit", f"output_dir={tmp_path / 'q'}"),
              callbacks=[seen.callback])
    assert res.global_step == 2 and res.final_loss == res.final_loss  # trained, loss not NaN
    assert (res.run_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert type(getattr(seen.optimizer, "optimizer", seen.optimizer)).__module__.startswith("bitsandbytes")
    summary = json.loads((res.run_dir / "train_summary.json").read_text())
    assert 0 < summary["trainable_parameters"] < summary["total_parameters"] / 2


def test_bf16_on_a_cpu_without_native_bf16_warns(cfg_file):
    c = cfg(cfg_file, "train.bf16=true")
    assert check_train(c, Capabilities(cuda=False, cpu_bf16=True)) == []
    warnings = check_train(c, Capabilities(cuda=False, cpu_bf16=False))
    assert len(warnings) == 1 and "emulated" in warnings[0]


@pytest.mark.parametrize("sharding", ["train.deepspeed=zero3", "train.deepspeed=zero3_offload",
                                      "train.fsdp=full_shard"])
def test_generation_during_training_is_refused_with_sharded_weights(cfg_file, sharding):
    """Rank 0 generating alone under ZeRO-3 / FSDP would wait forever for the other ranks' shards."""
    with pytest.raises(AcceleratorUnavailable, match=r"eval\.generate_every cannot run with"):
        check_train(cfg(cfg_file, sharding, "data.val_size=0.2", "eval.generate_every=5"), CPU_NO_PKGS)
    assert check_train(cfg(cfg_file, sharding), CPU_NO_PKGS) == []
    zero2 = cfg(cfg_file, "train.deepspeed=zero2", "data.val_size=0.2", "eval.generate_every=5")
    assert check_train(zero2, CPU_NO_PKGS) == []

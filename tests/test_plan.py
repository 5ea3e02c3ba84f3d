"""The per-device training plan (sftkit.train.plan): one place chooses attention, weight dtype, loss head and
batch layout, says why, and the run records it. GPUs cannot exist here, so their capabilities are stated
(``Capabilities``: H100/A100/V100/T4 with flash-attn present or not); everything after the choice runs for
real on this CPU (the tiny model trains, the run folder is read back, `sft estimate` runs as a command)."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from sftkit.cli import app
from sftkit.core.configio import load_config
from sftkit.core.rundir import RunDir, config_digest
from sftkit.hub.device import Capabilities
from sftkit.train.plan import KEYS, plan
from trainlib import weather_config

PKGS = frozenset({"liger_kernel", "flash_attn", "bitsandbytes"})
H100 = Capabilities(cuda=True, capability=(9, 0), bf16=True, torch_varlen=True, name="H100")
H100_FLASH = Capabilities(cuda=True, capability=(9, 0), bf16=True, packages=frozenset({"flash_attn"}),
                          torch_varlen=True)
A100_ALL = Capabilities(cuda=True, capability=(8, 0), bf16=True, packages=PKGS, torch_varlen=True)
A100_OLD_TORCH = Capabilities(cuda=True, capability=(8, 0), bf16=True)  # no flash-attn, no torch varlen
V100 = Capabilities(cuda=True, capability=(7, 0), bf16=False, packages=PKGS, torch_varlen=True)
T4 = Capabilities(cuda=True, capability=(7, 5), bf16=False, torch_varlen=True)
CPU = Capabilities(cuda=False, cpu_bf16=True, packages=PKGS, torch_varlen=True)


@pytest.fixture
def cfg_file(tmp_path, tiny_model_dir):
    return weather_config(tmp_path, tiny_model_dir, "  packing: true\n  bf16: true\n")


def values(path, caps, *over):
    return plan(load_config(path, list(over)), caps).values()


def test_gpu_attention_is_the_fastest_exact_kernel_present(cfg_file):
    assert values(cfg_file, H100_FLASH) == {"attn_implementation": "flash_attention_2", "dtype": "bfloat16",
                                            "loss_head": "chunked", "packing": "padding_free",
                                            "lora_kernel": "fused"}
    assert values(cfg_file, H100)["attn_implementation"] == "sftkit_varlen"
    assert values(cfg_file, H100)["packing"] == "padding_free"
    old = values(cfg_file, A100_OLD_TORCH)
    assert old["attn_implementation"] == "sdpa" and old["packing"] == "packed"  # block mask from position ids
    assert values(cfg_file, A100_OLD_TORCH, "train.packing=false")["packing"] == "padded"
    for pre_ampere in (V100, T4):  # no flash kernels before compute capability 8.0
        assert values(cfg_file, pre_ampere)["attn_implementation"] == "sdpa"
    # never the per-example Python loop on a GPU; it stays the CPU default
    gpus = [H100, H100_FLASH, A100_ALL, A100_OLD_TORCH, V100, T4]
    assert all(values(cfg_file, c)["attn_implementation"] != "sftkit_segments" for c in gpus)
    assert values(cfg_file, CPU)["attn_implementation"] == "sftkit_segments"
    assert values(cfg_file, CPU)["packing"] == "packed"
    # fp32 weights without autocast: flash kernels compute in 16 bits only
    fp32 = plan(load_config(cfg_file, ["method.type=full", "train.bf16=false"]), H100)
    assert fp32.attn_implementation.value == "sdpa" and "16 bits" in fp32.attn_implementation.reason


def test_weight_dtype_per_method_and_device(cfg_file):
    expect = {  # (method, caps) -> dtype
        ("lora", H100): "bfloat16", ("qlora", H100): "bfloat16", ("freeze", H100): "bfloat16",
        ("full", H100): "float32",  # AdamW steps at lr 1e-5 are below bf16's resolution
        ("lora", V100): "float16", ("qlora", T4): "float16", ("full", V100): "float32", ("freeze", T4): "float32",
        ("lora", CPU): "float32", ("full", CPU): "float32", ("qlora", CPU): "bfloat16",
    }
    for (method, caps), dtype in expect.items():
        over = [f"method.type={method}", *(["train.bf16=false"] if not caps.bf16 and caps.cuda else [])]
        if method == "freeze":
            over.append("method.freeze_trainable_layers=1")
        p = plan(load_config(cfg_file, over), caps)
        assert p.dtype.value == dtype, (method, caps, p.dtype)
        assert p.dtype.reason
    stated = plan(load_config(cfg_file, ["model.dtype=float16"]), H100).dtype
    assert stated.value == "float16" and stated.reason == "model.dtype in the config"


def test_loss_head_choice(cfg_file):
    assert values(cfg_file, CPU)["loss_head"] == "chunked"  # liger is installed, but Triton needs CUDA
    assert values(cfg_file, A100_ALL)["loss_head"] == "liger"
    assert values(cfg_file, H100)["loss_head"] == "chunked"
    assert values(cfg_file, A100_ALL, "train.loss_head=chunked")["loss_head"] == "chunked"
    assert values(cfg_file, H100, "train.loss_head=plain")["loss_head"] == "plain"
    zero3 = plan(load_config(cfg_file, ["train.deepspeed=zero3"]), A100_ALL).loss_head
    assert zero3.value == "plain" and "ZeRO-3" in zero3.reason
    liger = plan(load_config(cfg_file, ["train.use_liger_kernel=true"]), A100_ALL).loss_head
    assert liger.value == "liger" and "use_liger_kernel" in liger.reason


def test_lora_kernel_choice(cfg_file):
    """The fused LoRA layer wherever it computes what peft's does, on every device; peft's forward where it
    cannot (4-bit base layers, DoRA, sharded weights, Unsloth), also when the config asks for fused."""
    for caps in (CPU, H100, V100):
        assert values(cfg_file, caps)["lora_kernel"] == "fused"
    for over, why in (("method.type=qlora", "4-bit"), ("method.use_dora=true", "DoRA"),
                      ("train.deepspeed=zero3", "ZeRO-3"), ("train.fsdp=full_shard auto_wrap", "FSDP")):
        choice = plan(load_config(cfg_file, [over]), A100_ALL).lora_kernel
        assert choice.value == "peft" and why in choice.reason, (over, choice)
        stated = plan(load_config(cfg_file, [over, "train.lora_kernel=fused"]), A100_ALL).lora_kernel
        assert stated.value == "peft" and "does not apply" in stated.reason
    kept = plan(load_config(cfg_file, ["train.lora_kernel=peft"]), CPU).lora_kernel
    assert kept.value == "peft" and "in the config" in kept.reason
    full = plan(load_config(cfg_file, ["method.type=full"]), CPU).lora_kernel
    assert full.value == "none" and "no LoRA" in full.reason


def test_stated_values_are_kept_and_said_so(cfg_file):
    p = plan(load_config(cfg_file, ["model.attn_implementation=eager", "model.dtype=bfloat16"]), H100)
    assert p.attn_implementation.value == "eager" and "in the config" in p.attn_implementation.reason
    assert p.packing.value == "packed"
    unplain = plan(load_config(cfg_file), H100, model_config=type("C", (), {"model_type": "gemma2"})())
    assert unplain.attn_implementation.value == "sdpa" and "not plain" in unplain.attn_implementation.reason


def test_a_run_records_its_plan_and_stays_loadable_and_resumable(cfg_file, tmp_path):
    from sftkit.train.recipe import run

    out = tmp_path / "run"
    cfg = load_config(cfg_file, [f"output_dir={out}"])
    run(cfg)
    text = (out / "config.yaml").read_text(encoding="utf-8")
    assert "# plan: what sftkit chose on cpu" in text
    assert "#   attn_implementation: sftkit_segments  # CPU:" in text
    assert "#   loss_head: chunked" in text and "#   dtype: float32" in text
    assert "#   lora_kernel: fused  # sftkit's fused LoRA layer" in text
    loaded = yaml.safe_load(text)
    assert loaded["model"]["dtype"] == "auto"  # the user's value, not the resolved one
    assert config_digest(loaded) == config_digest(cfg) == RunDir(out).recorded_digest()
    summary = json.loads((out / "train_summary.json").read_text())
    assert set(summary["plan"]) == set(KEYS) == set(summary["plan_reasons"])
    assert summary["plan"]["packing"] == "packed" and summary["plan_device"] == "cpu"
    # `sft train RUN --resume` loads the recorded config.yaml and finds the run finished
    r = CliRunner().invoke(app, ["train", str(out), "--resume", "auto"])
    assert r.exit_code == 0, r.output
    assert "already finished training with this config" in r.output.replace("\n", "")
    # run-on-run: the finished run is a model reference for the next one
    nxt = load_config(cfg_file, [f"model.name_or_path={out}", f"output_dir={tmp_path / 'next'}"])
    assert run(nxt).global_step == 2


def test_estimate_device_cuda_json_returns_the_plan_without_a_gpu(cfg_file):
    def est(*flags):
        r = CliRunner().invoke(app, ["estimate", str(cfg_file), *flags, "--json"])
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout.strip().splitlines()[-1])

    gpu = est("--device", "cuda")
    assert list(gpu["plan"]) == ["attn_implementation", "dtype", "loss_head", "packing", "lora_kernel"]
    assert gpu["plan"]["dtype"] == "bfloat16" and gpu["plan"]["packing"] in ("padding_free", "packed")
    assert gpu["plan"]["attn_implementation"] in ("flash_attention_2", "sftkit_varlen", "sdpa")
    assert set(gpu["plan_reasons"]) == set(KEYS) and gpu["plan_device"].startswith("cuda")
    assert gpu["lower_gb"] < gpu["total_gb"]
    v100 = est("--device", "cuda", "--gpu", "V100")
    assert v100["plan"]["dtype"] == "float16" and v100["plan"]["attn_implementation"] == "sdpa"
    cpu = est("--device", "cpu")
    assert cpu["plan"] == {"attn_implementation": "sftkit_segments", "dtype": "float32", "loss_head": "chunked",
                           "packing": "packed", "lora_kernel": "fused"}
    r = CliRunner().invoke(app, ["estimate", str(cfg_file), "--device", "tpu", "--json"])
    assert r.exit_code == 2 and "use cuda or cpu" in r.output


def test_the_collator_follows_the_plan(cfg_file):
    from sftkit.train.accel import train_collator
    from sftkit.train.collate import Collator, FlatCollator

    cfg = load_config(cfg_file)
    flat = train_collator(cfg, 0, plan(cfg, H100))
    assert isinstance(flat, FlatCollator)
    batch = flat([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [-100, 9]}])
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5, 8]  # two examples, then the padding to 8
    assert batch["max_length_q"] == 3 and "attention_mask" not in batch
    assert type(train_collator(cfg, 0, plan(cfg, CPU))) is Collator
    assert type(train_collator(cfg, 0, plan(cfg, A100_OLD_TORCH))) is Collator


def test_liger_head_is_checked_on_the_device_and_falls_back(cfg_file):
    """Liger's API changes between releases, so the planned fused head is run once against the chunked one;
    here (no liger-kernel, no CUDA) the check really fails and the plan says why."""
    from sftkit.train.plan import confirm_liger_head

    planned = plan(load_config(cfg_file), A100_ALL)
    assert planned.loss_head.value == "liger"
    confirmed = confirm_liger_head(planned, "cpu")
    assert confirmed.loss_head.value == "chunked" and "failed its check" in confirmed.loss_head.reason
    kept = plan(load_config(cfg_file, ["train.use_liger_kernel=true"]), A100_ALL)
    assert confirm_liger_head(kept, "cpu") == kept  # the Trainer's own Liger patch is not ours to check


def test_trl_stages_keep_the_full_logits_and_padded_batches(cfg_file):
    """dpo/kto/orpo/simpo/distill train through TRL's trainers, which take log-probabilities from the full
    logits and pad their batches: no chunked or Liger head, no padding-free kernel, on any device."""
    for stage in ("dpo", "kto", "orpo", "simpo"):
        for caps in (H100_FLASH, H100, A100_ALL, CPU):
            p = plan(load_config(cfg_file, [f"stage={stage}", "train.packing=false"]), caps)
            assert p.loss_head.value == "plain" and f"stage {stage}" in p.loss_head.reason, (stage, caps)
            assert p.packing.value == "padded", (stage, caps)
            assert p.attn_implementation.value not in ("flash_attention_2", "sftkit_varlen"), (stage, caps)
    sft = plan(load_config(cfg_file, ["train.packing=false"]), H100_FLASH)  # control: sft keeps them
    assert (sft.loss_head.value, sft.packing.value) == ("chunked", "padding_free")
    stated = plan(load_config(cfg_file, ["stage=dpo", "train.packing=false", "model.attn_implementation=eager"]), H100)
    assert stated.attn_implementation.value == "eager"

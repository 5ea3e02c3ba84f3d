"""sftkit.estimate: hand-checked arithmetic, sharding, checkpointing, QLoRA, the CLI's JSON line."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from sftkit.estimate import Device, ModelShape, Setup, estimate, estimate_for, from_hf_config, from_size, memory
from sftkit.estimate.memory import NF4_BYTES, activation_bytes, layer_activation_bytes, param_state_bytes

GB = 1e9
# 2 layers, hidden 64, MLP 128, 4 heads of 16 (2 kv heads), vocab 1000, untied
TINY = ModelShape("tiny", hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, head_dim=16, vocab=1000)
GPU = Device("test-gpu", 80, 100.0)


def test_tiny_parameter_count_by_hand():
    # per layer: q 64*64 + k 64*32 + v 64*32 + o 64*64 + 3 * 64*128 = 4096+2048+2048+4096+24576 = 36864, + 2 norms 128
    assert TINY.linear_params_per_layer == 36864
    assert TINY.n_params == 2 * 1000 * 64 + 2 * (36864 + 128) + 64


def test_full_fp32_states_by_hand():
    s = Setup(method="full", weight_dtype="float32", optim="adamw")
    p = param_state_bytes(TINY, s)
    n = TINY.n_params
    assert p["weights"] == 4 * n and p["gradients"] == 4 * n
    assert p["optimizer_states"] == 8 * n and p["master_weights"] == 0
    # bf16 weights + fp32 master copy: 2 + 2 + 4 + 8 = 16 bytes per parameter
    mp = param_state_bytes(TINY, replace(s, weight_dtype="bfloat16", master_copy=True))
    assert sum(mp[k] for k in ("weights", "gradients", "master_weights", "optimizer_states")) == 16 * n


def test_layer_activations_by_hand_full_fp32():
    s = Setup(method="full", weight_dtype="float32", seq_len=10, micro_batch=1)
    h, q, kv, i = 64, 64, 32, 128
    # norms: 2 x (input 4h + 1/rms 4 + fp32 normalised 4h + matmul input 4h); attention: rotary q,k 4(q+kv) + v 4kv
    # + out 4q + log-sum-exp 4 x 4 heads + o_proj's input 4q (a contiguous copy of the output);
    # MLP: gate, silu, up, product 4 x 4i
    expected = 2 * (12 * h + 4) + 4 * (q + kv) + 4 * kv + 4 * q + 4 * 4 + 4 * q + 16 * i
    assert layer_activation_bytes(TINY, s) == expected
    assert activation_bytes(TINY, s) == expected * 10 * 2


def test_lora_params_and_dropout_activations():
    s = Setup(method="lora", weight_dtype="float32", lora_r=4, lora_targets=("q_proj", "v_proj"), lora_dropout=0.1)
    p = param_state_bytes(TINY, s)
    n = 2 * 4 * ((64 + 64) + (64 + 32))  # layers x r x (in + out) per target
    assert p["lora_adapters"] == 4 * n and p["gradients"] == 4 * n
    no_drop = layer_activation_bytes(TINY, replace(s, lora_dropout=0.0))
    # dropout keeps a 1-byte keep-mask and the dropped fp32 input per adapted module (inputs 64 + 64)
    assert layer_activation_bytes(TINY, s) - no_drop == 128 * (1 + 4)


def test_gradient_checkpointing_reduces_activations():
    s = Setup(method="lora", seq_len=512, micro_batch=2)
    assert activation_bytes(TINY, replace(s, gradient_checkpointing=True)) < activation_bytes(TINY, s) / 1.5


def test_zero_sharding_divides_the_right_terms():
    s = Setup(method="full", weight_dtype="bfloat16", master_copy=True, gpus=4, grad_accum=2)
    base, _ = memory(TINY, s)
    z1, _ = memory(TINY, replace(s, zero=1))
    z2, _ = memory(TINY, replace(s, zero=2))
    z3, _ = memory(TINY, replace(s, zero=3))
    assert z1["optimizer_states"] == base["optimizer_states"] / 4 and z1["master_weights"] == base["master_weights"] / 4
    assert z1["gradients"] == base["gradients"] and z1["weights"] == base["weights"]
    assert z2["gradients"] == base["gradients"] / 4 and z2["weights"] == base["weights"]
    assert z3["weights"] == base["weights"] / 4
    assert z3["activations"] == base["activations"]  # activations are per device whatever the stage
    off, host = memory(TINY, replace(s, zero=2, offload=True))
    assert off["optimizer_states"] == 0
    assert host == pytest.approx((base["optimizer_states"] + base["master_weights"]) / 4)


def test_qlora_weights_half_byte_plus_constants():
    shape = from_size("7B")
    s = Setup(method="qlora")
    quantised = shape.layers * shape.linear_params_per_layer
    w = param_state_bytes(shape, s)["weights"]
    # the weights that are not 4-bit (embeddings, head, norms) stay in the loaded dtype (bf16 by default)
    assert w == pytest.approx(quantised * NF4_BYTES + (shape.n_params - quantised) * 2)
    w32 = param_state_bytes(shape, replace(s, weight_dtype="float32"))["weights"]
    assert w32 == pytest.approx(quantised * NF4_BYTES + (shape.n_params - quantised) * 4)
    assert 0.5 < NF4_BYTES < 0.52
    assert w / shape.n_params < w32 / shape.n_params < 0.7  # ~0.5 byte/param + constants + embeddings


def test_7b_full_gt_lora_gt_qlora():
    shape = from_size("7B")
    s = Setup(seq_len=2048, micro_batch=1, gradient_checkpointing=True)
    full = estimate(shape, replace(s, method="full", master_copy=True), GPU).total_gb
    lora = estimate(shape, replace(s, method="lora"), GPU).total_gb
    qlora = estimate(shape, replace(s, method="qlora"), GPU).total_gb
    assert full > 80 > lora > qlora
    assert 12 < lora < 24 and 5 < qlora < 12  # the public ~16 GB / ~6-10 GB ranges


def test_hf_config_shape_matches_real_count():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    shape = from_hf_config(cfg)
    assert shape == replace(TINY, name=shape.name)
    with __import__("torch").device("meta"):
        model = LlamaForCausalLM(cfg)
    assert shape.n_params == sum(p.numel() for p in model.parameters())


def test_recommendations_have_reasons():
    est = estimate_for(TINY, Setup(method="lora", seq_len=256), GPU, rows=500)
    whats = {r.what for r in est.recommendations}
    assert {"method", "learning_rate", "num_train_epochs", "val_size", "gradient_accumulation_steps"} <= whats
    assert all(r.why for r in est.recommendations)
    val = next(r for r in est.recommendations if r.what == "val_size")
    assert val.value == 0.2 and val.seed  # 100 of 500 rows


def _app() -> typer.Typer:
    from sftkit.cli.estimate import estimate_cmd

    app = typer.Typer()
    app.command()(estimate_cmd)
    return app


def test_cli_json_last_line_and_tiny_memory_does_not_fit():
    runner = CliRunner()
    res = runner.invoke(_app(), ["--model-size", "7B", "--method", "qlora", "--seq-len", "2048", "--batch", "4",
                                 "--gpu-memory", "1", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(out) >= {"total_gb", "breakdown", "fits", "tokens_per_step", "est_hours", "recommendations"}
    assert out["fits"] is False and out["tokens_per_step"] == 2048 * 4
    assert abs(sum(out["breakdown"].values()) - out["total_gb"]) < 0.01
    assert all({"what", "value", "why", "seed"} <= set(r) for r in out["recommendations"])


def test_cli_known_gpu_fits():
    res = CliRunner().invoke(_app(), ["--model-size", "7B", "--method", "lora", "--seq-len", "1024", "--batch", "1",
                                      "--gradient-checkpointing", "--gpu", "A100-80GB", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["fits"] is True


def test_preflight_refuses_with_breakdown(tmp_path, bundled_path):
    from sftkit.core.config import RunConfig
    from sftkit.core.errors import DoesNotFit
    from sftkit.estimate import preflight

    cfg = RunConfig.model_validate({"model": {"name_or_path": str(bundled_path)},
                                    "data": {"train": [str(tmp_path / "x.jsonl")]}, "method": {"type": "full"}})
    with pytest.raises(DoesNotFit) as e:
        preflight(cfg, device_memory_gb=0.5)
    assert "optimizer_states" in str(e.value) and "together do not fit" in str(e.value)
    total = e.value.estimate.total_gb
    with pytest.raises(DoesNotFit) as e:
        preflight(cfg, device_memory_gb=total * 0.8)
    assert "cheapest fix: enable train.gradient_checkpointing" in str(e.value)
    assert preflight(cfg, device_memory_gb=1000).fits
    # above the estimate's lower bound but below its total: not refused (the measured peaks say such runs
    # fit), and the caller is told it does not fit by the estimate
    between = preflight(cfg, device_memory_gb=total * 0.92)
    assert not between.fits and between.lower_gb <= total * 0.92 < between.total_gb


def test_cheapest_fix_combines_changes_when_no_single_one_fits():
    from sftkit.estimate.recommend import cheapest_fix

    setup = Setup(method="lora", seq_len=2048, micro_batch=8)
    dev = Device("small", 1.0, 100.0)
    shape = from_size("1.5B")
    singles = [estimate(shape, replace(setup, gradient_checkpointing=True), dev).total_gb,
               estimate(shape, replace(setup, micro_batch=4, grad_accum=2), dev).total_gb]
    big = Device("mid", min(singles) * 0.6, 100.0)
    fix = cheapest_fix(shape, setup, big)
    assert fix is not None and " + " in fix[0] and fix[1] <= big.memory_gb
    assert cheapest_fix(shape, setup, Device("tiny", 0.01, 100.0)) is None


def test_cli_config_keeps_data_lengths(tmp_path):
    """`sft estimate CONFIG` recommends a cutoff from the data and skips val_size when a val file exists."""
    from pathlib import Path

    cfg = Path(__file__).resolve().parents[1] / "examples" / "api_assistant" / "config.yaml"
    res = CliRunner().invoke(_app(), [str(cfg), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    whats = [r["what"] for r in out["recommendations"]]
    assert "cutoff_len" in whats and "val_size" not in whats


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux only: ru_maxrss survives exec there")
def test_cpu_profile_baseline_is_the_probes_own_memory(tmp_path, monkeypatch):
    """Linux keeps ru_maxrss across exec, so a probe started from a process that had grown (a preflight after
    loading data, a test run) once cached that process's peak as the baseline (5.1 GB for a 0.5 GB probe)."""
    from sftkit.estimate.device import cpu_profile

    monkeypatch.setenv("SFTKIT_HOME", str(tmp_path))
    ballast = b"\x01" * 1_500_000_000  # resident in this process when the probe is forked from it
    prof = cpu_profile(refresh=True)
    assert len(ballast) and 0.1 < prof.baseline_gb < 1.2, prof
    assert (tmp_path / "estimate" / "cpu_profile.json").is_file()

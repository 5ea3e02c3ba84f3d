"""Recommendations follow the guide: method by data size then memory, an effective batch no larger than
the data, each recommendation citing the rule it applies (issue 20, item 6)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sftkit.cli import app
from sftkit.estimate import Device, ModelShape, Setup, estimate_for, from_size
from sftkit.estimate.recommend import all_for, grad_accum, method

TINY = ModelShape("tiny", hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2, head_dim=16, vocab=1000)
ROOMY = Device("roomy", 80, 100.0)  # every method fits the tiny shape
TCM = Path(__file__).resolve().parents[1] / "examples" / "tcm_consult" / "config.yaml"


@pytest.mark.parametrize(("rows", "expected"), [(16, "lora"), (999, "lora"), (5_000, "lora"), (None, "lora"),
                                                (10_000, "full"), (200_000, "full")])
def test_method_follows_the_data_size_when_everything_fits(rows, expected):
    rec = method(TINY, Setup(method="full", seq_len=256), ROOMY, rows)
    assert rec.value == expected
    assert "1,000 rows" in rec.rule and "10,000" in rec.rule
    if rows is not None:
        assert f"{rows:,} training rows" in rec.why


def test_method_falls_back_to_what_fits():
    shape, setup = from_size("7B"), Setup(method="lora", seq_len=1024, micro_batch=1, gradient_checkpointing=True,
                                          weight_dtype="bfloat16")
    lora_only = Device("24G", 24, 100.0)  # 7B in bf16: LoRA ~16 GB fits, full does not
    assert method(shape, setup, lora_only, 50_000).value == "lora"
    assert "full does not fit" in method(shape, setup, lora_only, 50_000).why
    assert method(shape, setup, Device("12G", 12, 100.0), 500).value == "qlora"


def test_effective_batch_never_exceeds_the_rows():
    for rows in range(1, 300):
        for micro in (1, 2, 3, 4, 8):
            for gpus in (1, 2):
                rec = grad_accum(Setup(micro_batch=micro, gpus=gpus), rows)
                effective = micro * gpus * rec.value
                assert effective <= max(rows, micro * gpus), (rows, micro, gpus, rec.value)
                assert effective <= 32
    assert grad_accum(Setup(micro_batch=1), 16).value == 4  # 4 optimizer steps per epoch
    assert grad_accum(Setup(micro_batch=1), 10_000).value == 32  # the guide's 16/32/64/128
    many = grad_accum(Setup(micro_batch=8, gpus=4), 20)
    assert many.value == 1 and "exceeds the 20 rows" in many.why


def test_every_recommendation_cites_its_rule():
    recs = all_for(TINY, Setup(method="lora", seq_len=256), ROOMY, rows=500, lengths=[100, 120, 200])
    assert {r.what for r in recs} >= {"method", "learning_rate", "num_train_epochs", "lora_r", "cutoff_len",
                                      "val_size", "gradient_accumulation_steps"}
    assert all(r.rule.startswith("guide ") and r.why for r in recs)
    lr = next(r for r in recs if r.what == "learning_rate")
    assert lr.value == 2e-4 and "LoRA" in lr.rule
    full = estimate_for(TINY, Setup(method="full", seq_len=256), ROOMY, rows=50_000).recommendations
    assert next(r for r in full if r.what == "learning_rate").value == 2e-5  # follows the recommended method


def test_sft_estimate_on_tcm_consult_recommends_lora_and_a_small_batch():
    """The issue's example: 16 dialogues must not get full fine-tuning nor accumulation 32."""
    res = CliRunner().invoke(app, ["estimate", str(TCM), "--json"])
    assert res.exit_code == 0, res.output
    recs = {r["what"]: r for r in json.loads(res.stdout.strip().splitlines()[-1])["recommendations"]}
    assert recs["method"]["value"] == "lora" and "16 training rows" in recs["method"]["why"]
    assert recs["gradient_accumulation_steps"]["value"] == 4  # micro-batch 1 x 4 = 4 of the 16 rows per step
    assert all(r["rule"] for r in recs.values())
